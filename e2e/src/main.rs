//! `cloudify-e2e`: the end-to-end test platform's command line.
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser};

/// Subcommands (`apiserver`, `up`, …) are added by the modules that own them.
#[derive(Parser)]
#[command(version, about = "cloudify's end-to-end test platform")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    // Nothing to run without a subcommand yet.
    let _ = Cli::command().print_help();
}
