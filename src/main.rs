use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
