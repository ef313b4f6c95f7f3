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
use heirloom_client::connection::{Bearer, ConnectArgs, ConnectError, Connection};
use output::StdoutFailed;

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
    Job(Box<jobs::Command>),
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
    /// Check that the coordinator serves (exit status 0), does not (1) or cannot be reached
    /// (3); no token needed.
    Health(health::Health),
    /// Print a shell completion script: `heirloom completions bash > /etc/bash_completion.d/heirloom`.
    Completions { shell: clap_complete::Shell },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap's own words: help and version on stdout, errors with usage on stderr. A
            // failure to print them (a closed pipe) changes nothing.
            let _ = err.print();
            std::process::exit(Exit::of_command_line(&err) as i32);
        }
    };
    end(run(cli).await.and_then(|()| output::flush()))
}

/// How `heirloom` ends: its exit status is part of its interface (scripts, CI and
/// probes branch on it), so each status has one meaning, and [`Exit::of`] is the one
/// place an error becomes a status. `cli/EXIT_CODES.md` is this table for people; keep
/// the two the same.
///
/// | status | meaning |
/// |---|---|
/// | 0 | done; also when the reader of stdout went away (`heirloom model list \| head -1`): the command stops at its next write, quietly |
/// | 1 | refused or failed: the coordinator answered with an error (`error: CODE: message`, and a `hint:` for some codes); or the answer is a no: `job plan` would be refused, a watched job (`job watch`, `--watch`) ended other than succeeded, `health` heard NOT_SERVING; or local work failed (writing an export, running `dot`, a dataset name that matches none) |
/// | 2 | usage: the command line is wrong (clap's `error:` and usage), or a value the CLI checks itself: `--state`, `--optimizer`, `--module`, `--require-label`, `--dataset name@version`, JSON arguments, a file an argument names that cannot be read, connection settings that cannot work (`--coordinator` without a scheme, https without `--ca-cert`, an unreadable token file) |
/// | 3 | unreachable: no connection to the coordinator (`error: cannot reach the coordinator at …`), or it answered UNAVAILABLE (it is stopping, or its database is down); a retry may succeed |
///
/// Anything else (101: a panic) is a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    Unreachable = 3,
}

impl Exit {
    /// clap's answer to the command line: help and version are done, the rest is usage.
    fn of_command_line(err: &clap::Error) -> Exit {
        match err.use_stderr() {
            true => Exit::Usage,
            false => Exit::Ok,
        }
    }

    /// What an error, anywhere in its chain, means for the exit status.
    fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if let Some(StdoutFailed(io)) = cause.downcast_ref::<StdoutFailed>() {
                return match io.kind() {
                    std::io::ErrorKind::BrokenPipe => Exit::Ok,
                    _ => Exit::Failed,
                };
            }
            if cause.is::<Usage>() {
                return Exit::Usage;
            }
            if cause.is::<Unreachable>() {
                return Exit::Unreachable;
            }
            if let Some(status) = cause.downcast_ref::<tonic::Status>() {
                return match status.code() {
                    tonic::Code::Unavailable => Exit::Unreachable,
                    _ => Exit::Failed,
                };
            }
        }
        Exit::Failed
    }
}

/// The one way out once the command line is parsed: says what went wrong (and what to
/// do next) on stderr, and exits with the status [`Exit::of`] gives.
fn end(result: anyhow::Result<()>) -> ! {
    let exit = match &result {
        Ok(()) => Exit::Ok,
        Err(err) => Exit::of(err),
    };
    if let Err(err) = &result
        && exit != Exit::Ok
    {
        report(err);
    }
    std::process::exit(exit as i32)
}

fn report(err: &anyhow::Error) {
    // A gRPC status says what to fix in its message; print that, and what to do next.
    let status = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<tonic::Status>());
    let code = match status {
        Some(status) => {
            eprintln!("error: {:?}: {}", status.code(), status.message());
            Some(status.code())
        }
        None => {
            eprintln!("error: {err:#}");
            err.chain()
                .any(|cause| cause.is::<Unreachable>())
                .then_some(tonic::Code::Unavailable)
        }
    };
    if let Some(hint) = code.and_then(next_step) {
        eprintln!("hint: {hint}");
    }
}

/// A command line the CLI cannot use although clap took it (exit status 2): a value in
/// the wrong form, a file an argument names that cannot be read, connection settings
/// that cannot work. The message names the flag and says what to write.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error, for `return Err(usage(…))` and `.map_err(usage)`.
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    Usage(message.to_string()).into()
}

/// No connection to the coordinator could be made (exit status 3).
#[derive(Debug)]
struct Unreachable(ConnectError);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Unreachable {}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    match &cli.command {
        Command::Certs(certs) => return tokens::write_certificates(certs, output),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "heirloom", &mut script);
            output::write_all(&script);
            return Ok(());
        }
        _ => {}
    }
    let channel = connect(&cli.connect).await?;
    match cli.command {
        Command::Model(command) => models::run(channel, command, output).await,
        Command::Dataset(command) => datasets::run(channel, command, output).await,
        Command::Job(command) => jobs::run(channel, *command, output).await,
        Command::Recipe(command) => recipes::run(channel, command, output).await,
        Command::Lineage(command) => lineage::run(channel, command, output).await,
        Command::Token(command) => tokens::run(channel, command, output).await,
        Command::Health(health) => health::run(channel, health, output).await,
        Command::Certs(_) | Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Connects now. Settings that cannot work are checked first, so that a failure to
/// connect after them means the coordinator is unreachable, not misconfigured.
async fn connect(args: &ConnectArgs) -> anyhow::Result<Connection> {
    args.endpoint().map_err(usage)?;
    Bearer::new(args.token().map_err(usage)?.as_deref()).map_err(usage)?;
    args.connect()
        .await
        .map_err(|err| anyhow::Error::new(Unreachable(err)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: anyhow::Error, expected: Exit) {
        assert_eq!(Exit::of(&err), expected, "{err:#}");
    }

    #[test]
    fn each_error_has_its_exit_status() {
        use std::io::{Error, ErrorKind};
        let closed = || StdoutFailed(Error::from(ErrorKind::BrokenPipe));
        check(closed().into(), Exit::Ok);
        check(anyhow::Error::new(closed()).context("listing"), Exit::Ok);
        check(
            StdoutFailed(Error::from(ErrorKind::StorageFull)).into(),
            Exit::Failed,
        );
        check(tonic::Status::not_found("no model").into(), Exit::Failed);
        check(tonic::Status::invalid_argument("no").into(), Exit::Failed);
        check(tonic::Status::unauthenticated("no").into(), Exit::Failed);
        check(
            tonic::Status::unavailable("stopping").into(),
            Exit::Unreachable,
        );
        check(
            anyhow::Error::new(tonic::Status::unavailable("down")).context("export"),
            Exit::Unreachable,
        );
        check(
            Unreachable(ConnectError("cannot reach".into())).into(),
            Exit::Unreachable,
        );
        check(usage("--state \"x\": use queued"), Exit::Usage);
        check(
            anyhow::anyhow!("job j ended failed: diverged"),
            Exit::Failed,
        );
        // Only standard output's closed pipe is a normal end, not another pipe's.
        check(Error::from(ErrorKind::BrokenPipe).into(), Exit::Failed);
    }
}
