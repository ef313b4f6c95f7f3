//! `heirloom`: the command line for people. One module per command group; each talks to
//! the coordinator over gRPC and prints what came back.

mod datasets;
mod export;
mod health;
mod jobs;
mod lineage;
mod models;
mod tokens;
mod tree;
mod upload;

use clap::{Parser, Subcommand};
use heirloom_proto::connection::ConnectArgs;

#[derive(Parser)]
#[command(
    name = "heirloom",
    version,
    about = "Build models by inheriting the ones you have"
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
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
    /// Create, list and revoke access tokens (admins), or show your own.
    #[command(subcommand)]
    Token(tokens::Command),
    /// Write a private CA, a coordinator certificate and a worker client certificate.
    Certs(tokens::Certs),
    /// Check that the coordinator serves (exit status 0) or not (1); no token needed.
    Health(health::Health),
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
    if let Command::Certs(certs) = &cli.command {
        return tokens::write_certificates(certs);
    }
    let channel = cli.connect.connect().await?;
    match cli.command {
        Command::Model(command) => models::run(channel, command).await,
        Command::Dataset(command) => datasets::run(channel, command).await,
        Command::Job(command) => jobs::run(channel, command).await,
        Command::Lineage(command) => lineage::run(channel, command).await,
        Command::Token(command) => tokens::run(channel, command).await,
        Command::Health(health) => health::run(channel, health).await,
        Command::Certs(_) => unreachable!("handled above"),
    }
}

/// A TorchScript program travels inline with its import; the coordinator accepts up to
/// this much. (Weights and datasets are uploaded in chunks.)
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
