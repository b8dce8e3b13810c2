use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

mod cli;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    // `--depths -1` is a bad number, not an unknown flag: every subcommand reads `-1` as a value,
    // so clap names the argument and why the value is wrong.
    let command = Cli::command().mut_subcommands(|sub| sub.allow_negative_numbers(true));
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    end_quietly_on_a_closed_pipe();
    let result = match cli.command {
        Command::Run(args) => cli::run(args),
        Command::Score(args) => cli::score(args),
        Command::Inspect(args) => cli::inspect(args),
        Command::Calibrate(args) => cli::calibrate::run(args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Passkey(args) => cli::passkey::passkey(args),
        Command::Report(args) => cli::passkey::report(args),
        Command::Convert(args) => cli::convert(args),
        Command::Devices => cli::devices(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message already
/// ends with (the checkpoint errors name their I/O cause in their own text, and carry it as the
/// source too: `{:#}` printed it twice).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

/// A closed pipe on stdout (`coil inspect | head -1`) ends the process quietly, as it does other
/// Unix tools, instead of panicking in `println!`: Rust starts programs with SIGPIPE ignored.
/// Results files are written by appending whole lines and renaming, so an interrupted write
/// loses nothing already written.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring one signal's default disposition, at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
