//! Progress on stderr: a bar with tokens/s and ETA while input streams in, drawn only when stderr
//! is a terminal.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    tokens: u64,
}

impl Progress {
    /// A bar over `bytes` of input when the size is known, a spinner otherwise.
    pub fn new(label: &str, bytes: Option<u64>) -> Progress {
        let bar = match bytes {
            Some(len) => ProgressBar::new(len).with_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{prefix} {spinner} {msg}").expect("valid template")),
        };
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, started: Instant::now(), tokens: 0 }
    }

    /// `tokens` more consumed; `bytes_done` of the input read so far.
    pub fn advance(&mut self, tokens: u64, bytes_done: u64) {
        self.tokens += tokens;
        self.bar.set_position(bytes_done);
        self.bar.set_message(format!("{} tokens, {:.0} tok/s", self.tokens, self.rate()));
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn rate(&self) -> f64 {
        self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
