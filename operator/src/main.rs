//! `cloudify-operator`: CRD and rendering tools (the controller loop comes later).
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloudify_operator::build::{DEFAULT_IMAGE, Settings};
use cloudify_operator::{crd, render};

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for cloudify datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CloudifyDataset CustomResourceDefinition (YAML).
    Crd,
    /// Print the objects the operator would apply for the CloudifyDatasets in a file.
    Render {
        /// Manifest with one or more CloudifyDatasets; `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// Namespace for CRs that name none.
        #[arg(short, long, default_value = render::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Server image for CRs that name none.
        #[arg(long, env = "CLOUDIFY_OPERATOR_IMAGE", default_value = DEFAULT_IMAGE)]
        image: String,
        /// Public base URL for CRs without spec.publicUrl or an ingress host.
        #[arg(long, env = "CLOUDIFY_OPERATOR_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<String, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Crd => Ok(crd::crd_yaml()?),
        Command::Render {
            file,
            namespace,
            image,
            public_url,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            let settings = Settings { image, public_url };
            Ok(render::render(&text, Some(&namespace), &settings)?)
        }
    }
}
