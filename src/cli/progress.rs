//! Progress on stderr while a long command works: on a terminal a bar with tokens/s and ETA;
//! otherwise (a log file, a pipe, a batch job) a plain line every [`LOG_EVERY`] (or every
//! `COIL_PROGRESS_SECONDS`), so a long run never sits silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a progress line is written when stderr is not a terminal, unless
/// `COIL_PROGRESS_SECONDS` says otherwise.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

fn log_every() -> Duration {
    let Ok(text) = std::env::var("COIL_PROGRESS_SECONDS") else { return LOG_EVERY };
    match text.trim().parse().ok().and_then(|s: f64| Duration::try_from_secs_f64(s).ok()) {
        Some(every) => every,
        None => {
            eprintln!("warning: COIL_PROGRESS_SECONDS={text:?} is not a number of seconds from 0 to 2^64: progress every {} s", LOG_EVERY.as_secs());
            LOG_EVERY
        }
    }
}

pub struct Progress {
    bar: ProgressBar,
    label: String,
    /// What the bar's position counts, for the plain lines: "of the input" (bytes) or "cells".
    unit: Unit,
    started: Instant,
    tokens: u64,
    /// When the last plain line was written; `None` on a terminal (the bar shows instead).
    logged: Option<Instant>,
    log_every: Duration,
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Cells,
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
        Progress::with_bar(bar, label, Unit::Bytes)
    }

    /// A bar over the `cells` of a sweep.
    pub fn cells(label: &str, cells: u64) -> Progress {
        let bar = ProgressBar::new(cells).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} cells {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress::with_bar(bar, label, Unit::Cells)
    }

    fn with_bar(bar: ProgressBar, label: &str, unit: Unit) -> Progress {
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        let now = Instant::now();
        let logged = (!std::io::stderr().is_terminal()).then_some(now);
        Progress { bar, label: label.to_owned(), unit, started: now, tokens: 0, logged, log_every: log_every() }
    }

    /// `tokens` more consumed; the bar at `position` (bytes of the input read so far).
    pub fn advance(&mut self, tokens: u64, position: u64) {
        self.set(self.tokens + tokens, position);
    }

    /// `tokens` consumed in all; the bar at `position`.
    pub fn set(&mut self, tokens: u64, position: u64) {
        self.tokens = tokens;
        self.bar.set_position(position);
        self.bar.set_message(format!("{} tokens, {:.0} tok/s", self.tokens, self.rate()));
        if self.logged.is_some_and(|last| last.elapsed() >= self.log_every) {
            eprintln!("{}", self.line());
            self.logged = Some(Instant::now());
        }
    }

    /// The plain progress line: `prefill: 1200000 tokens, 110000 tok/s, 45% of the input, ETA 70 s`.
    fn line(&self) -> String {
        let mut line = format!("{}: {} tokens, {:.0} tok/s", self.label, self.tokens, self.rate());
        let (position, length) = (self.bar.position(), self.bar.length());
        match (self.unit, length) {
            (Unit::Bytes, Some(length)) if length > 0 => {
                line += &format!(", {:.0}% of the input", 100.0 * position as f64 / length as f64);
            }
            (Unit::Cells, Some(length)) => line += &format!(", {position}/{length} cells"),
            _ => return line,
        }
        if position > 0 {
            line += &format!(", ETA {}", indicatif::HumanDuration(self.bar.eta()));
        }
        line
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
