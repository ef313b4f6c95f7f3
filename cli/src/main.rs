//! `heirloom`: the command line for people. One module per command group; each talks to
//! the coordinator over gRPC and prints what came back.

mod datasets;
mod export;
mod jobs;
mod lineage;
mod models;
mod tree;
mod upload;

use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "heirloom",
    version,
    about = "Build models by inheriting the ones you have"
)]
struct Cli {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        global = true,
        env = "HEIRLOOM_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import, inspect and list models and their lineage.
    #[command(subcommand)]
    Model(models::Command),
    /// Register and list datasets.
    #[command(subcommand)]
    Dataset(datasets::Command),
    /// Submit, watch, list and cancel jobs.
    #[command(subcommand)]
    Job(jobs::Command),
    /// Ask lineage questions: ancestors, descendants, path, common, graph, blame, impact.
    #[command(subcommand)]
    Lineage(lineage::Command),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        // A gRPC status says what to fix in its message; print just that.
        match err.downcast_ref::<tonic::Status>() {
            Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
            None => eprintln!("error: {err:#}"),
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = connect(&cli.coordinator).await?;
    match cli.command {
        Command::Model(command) => models::run(channel, command).await,
        Command::Dataset(command) => datasets::run(channel, command).await,
        Command::Job(command) => jobs::run(channel, command).await,
        Command::Lineage(command) => lineage::run(channel, command).await,
    }
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|err| anyhow::anyhow!("--coordinator {address:?}: {err}"))?;
    endpoint
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .max_frame_size(4 << 20)
        .connect()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the coordinator at {address}: {err}"))
}

/// A TorchScript program travels inline with its import; the coordinator accepts up to
/// this much. (Weights and datasets are uploaded in chunks.)
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
