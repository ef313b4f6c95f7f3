//! `heirloom`: the command line for people. One module per command group; each talks to
//! the coordinator over gRPC and prints what came back.

mod datasets;
mod export;
mod health;
mod jobs;
mod lineage;
mod models;
mod output;
mod plan;
mod recipes;
mod tokens;
mod tree;
mod upload;

use clap::{Parser, Subcommand};
use heirloom_client::connection::ConnectArgs;

#[derive(Parser)]
#[command(
    name = "heirloom",
    version,
    about = "Build models by inheriting the ones you have"
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// `text` for people, `json` for programs (the API's messages; JSON Lines for watched events).
    #[arg(
        long,
        global = true,
        env = "HEIRLOOM_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    output: output::Output,
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
    /// Submit, plan, watch, list and cancel jobs.
    #[command(subcommand)]
    Job(jobs::Command),
    /// Create, derive, show, list and diff recipes; the models made with one.
    #[command(subcommand)]
    Recipe(recipes::Command),
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
    /// Print a shell completion script: `heirloom completions bash > /etc/bash_completion.d/heirloom`.
    Completions { shell: clap_complete::Shell },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        // A gRPC status says what to fix in its message; print that, and what to do next.
        match err.downcast_ref::<tonic::Status>() {
            Some(status) => {
                eprintln!("error: {:?}: {}", status.code(), status.message());
                if let Some(hint) = next_step(status.code()) {
                    eprintln!("hint: {hint}");
                }
            }
            None => eprintln!("error: {err:#}"),
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    match &cli.command {
        Command::Certs(certs) => return tokens::write_certificates(certs, output),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "heirloom", &mut script);
            return write_stdout(&script);
        }
        _ => {}
    }
    let channel = cli.connect.connect().await?;
    match cli.command {
        Command::Model(command) => models::run(channel, command, output).await,
        Command::Dataset(command) => datasets::run(channel, command, output).await,
        Command::Job(command) => jobs::run(channel, command, output).await,
        Command::Recipe(command) => recipes::run(channel, command, output).await,
        Command::Lineage(command) => lineage::run(channel, command, output).await,
        Command::Token(command) => tokens::run(channel, command, output).await,
        Command::Health(health) => health::run(channel, health, output).await,
        Command::Certs(_) | Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Writes to standard output; a reader that went away (`| head`) is no error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// What to try after a refusal whose message alone may not say it.
fn next_step(code: tonic::Code) -> Option<&'static str> {
    match code {
        tonic::Code::Unauthenticated => Some(
            "pass a token with --token-file FILE or the HEIRLOOM_TOKEN variable; an admin makes \
             one with `heirloom token create NAME --role submitter`",
        ),
        tonic::Code::PermissionDenied => Some(
            "`heirloom token whoami` shows your token's role; ask an admin for one that may do this",
        ),
        tonic::Code::Unavailable => Some(
            "is the coordinator running at --coordinator (HEIRLOOM_COORDINATOR)? \
             `heirloom health` checks it; a retry may succeed",
        ),
        tonic::Code::NotFound => Some(
            "`heirloom model list`, `heirloom dataset list` and `heirloom job list` show what exists",
        ),
        _ => None,
    }
}

/// A TorchScript program travels inline with its import; the coordinator accepts up to
/// this much. (Weights and datasets are uploaded in chunks.)
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
