//! `cloudify-e2e`: the end-to-end test platform's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Subcommands (`apiserver`, `up`, …) are added by the modules that own them.
#[derive(Parser)]
#[command(version, about = "cloudify's end-to-end test platform")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes API emulator in the foreground.
    Apiserver {
        /// Listen address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
        /// Persist the state to this JSON file (loaded at start if it exists).
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Write the server URL to this file once listening.
        #[arg(long)]
        listen_file: Option<PathBuf>,
        /// Write a kubeconfig for kubectl to this file once listening.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Run the whole platform (API emulator, pod runtime, nginx ingress, catalog, operator)
    /// in the foreground; writes DIR/kubeconfig and DIR/ingress-url once ready.
    Up(cloudify_e2e::up::UpArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return std::process::ExitCode::SUCCESS;
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Apiserver {
            addr,
            state_file,
            listen_file,
            kubeconfig,
        } => rt
            .block_on(cloudify_e2e::apiserver::run_cli(
                cloudify_e2e::apiserver::Options { addr, state_file },
                listen_file,
                kubeconfig,
            ))
            .map_err(|e| e.to_string()),
        Command::Up(args) => rt
            .block_on(cloudify_e2e::up::run(args))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
