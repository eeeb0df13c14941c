//! `cloudify-operator`: the Kubernetes operator (`run`) and its offline tools (`crd`,
//! `render`), one binary so the CRD, the rendered objects and the controller always come from
//! the same build.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloudify_operator::build::{DEFAULT_IMAGE, Settings};
use cloudify_operator::run::RunArgs;
use cloudify_operator::{crd, render};

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for cloudify datasets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: reconcile CloudifyDatasets into server pods, register them in STAC.
    Run(RunArgs),
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
    let result = match Cli::parse().command {
        Command::Run(args) => return run_operator(args),
        Command::Crd => crd::crd_yaml().map_err(Into::into),
        Command::Render {
            file,
            namespace,
            image,
            public_url,
        } => render_file(&file, &namespace, image, public_url),
    };
    match result {
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

fn run_operator(args: RunArgs) -> ExitCode {
    // Logs to stderr as before; spans over OTLP too when the OTEL_* variables name a
    // collector (the chart's `otel` values).
    let telemetry = match cloudify_telemetry::init(
        "cloudify-operator",
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        cloudify_telemetry::LogTo::Stdout,
        Some(std::io::IsTerminal::is_terminal(&std::io::stdout())),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cloudify_operator::run::run(args));
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    // The runtime ends first (its tasks may still close spans), then the queued spans go out.
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_file(
    file: &std::path::Path,
    namespace: &str,
    image: String,
    public_url: Option<String>,
) -> Result<String, Box<dyn std::error::Error>> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let settings = Settings {
        image,
        public_url,
        otel_env: cloudify_operator::build::otel_env(|k| std::env::var(k).ok()),
    };
    Ok(render::render(&text, Some(namespace), &settings)?)
}
