//! The `heirloom` CLI as a script sees it: the exit statuses of `cli/EXIT_CODES.md`, each
//! with its words on stderr, and a reader that stops early (`| head -1`) as a normal end.
//! A coordinator and imported models only: no worker, so no libtorch.

use heirloom_testing as support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use support::Cluster;

/// `heirloom ARGS` against the coordinator at `address` with `token`.
fn heirloom_at(address: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(support::workspace_binary("heirloom"));
    command
        .args(["--coordinator", address, "--ca-cert"])
        .arg(support::certificates().join(heirloom_client::certificates::CA_CERT))
        .env("HEIRLOOM_TOKEN", token)
        .env_remove("HEIRLOOM_OUTPUT")
        .stdin(Stdio::null())
        .args(args);
    command
}

/// Runs `command` to its end: (exit status, stdout, stderr).
fn finish(mut command: Command) -> (i32, String, String) {
    let output = command.output().expect("run the CLI");
    (
        output.status.code().expect("an exit status, not a signal"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A coordinator holding three small MLPs and `wide`, whose 122 tensors make
/// `model tensors wide` print far more than one read takes.
async fn cluster_with_models() -> Cluster {
    let cluster = Cluster::coordinator_only().await;
    for (name, seed) in [("alpha", 1), ("beta", 2), ("gamma", 3)] {
        support::import_model_at(
            &cluster.channel,
            name,
            support::mlp(8, vec![16], 5),
            support::random_mlp_weights(8, &[16], 5, seed),
        )
        .await;
    }
    support::import_model_at(
        &cluster.channel,
        "wide",
        support::mlp(4, vec![4; 60], 3),
        support::random_mlp_weights(4, &[4; 60], 3, 4),
    )
    .await;
    cluster
}

/// Blocking work (the CLI's processes) off the runtime that serves the coordinator.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("no panic")
}

/// `heirloom model list | head -1`, 20 times each for two commands: the reader takes one
/// line and goes away while the CLI may still be writing. Each run ends 0 and says
/// nothing (a panic on `Broken pipe` used to end most runs 101 with a backtrace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_after_one_line_ends_the_cli_quietly() {
    let cluster = cluster_with_models().await;
    let (address, token) = (cluster.address.clone(), cluster.admin_token.clone());
    blocking(move || {
        for args in [&["model", "list"][..], &["model", "tensors", "wide"]] {
            for run in 0..20 {
                let mut child = heirloom_at(&address, &token, args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start the CLI");
                let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                assert!(!line.is_empty(), "heirloom {args:?} printed nothing");
                drop(stdout);
                let output = child.wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert_eq!(
                    (output.status.code(), stderr.as_ref()),
                    (Some(0), ""),
                    "heirloom {args:?}, run {run}"
                );
            }
        }
    })
    .await;
}

/// Every kind of output (lines, tables, trees, JSON, completions, clap's help) meets a
/// stdout whose reader is gone before the first byte: the first write fails, every time,
/// and the CLI ends 0 without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_a_normal_end_for_every_kind_of_output() {
    let cluster = cluster_with_models().await;
    let (address, token) = (cluster.address.clone(), cluster.admin_token.clone());
    blocking(move || {
        let commands: &[&[&str]] = &[
            &["model", "list"],
            &["model", "list", "--output", "json"],
            &["model", "show", "alpha"],
            &["model", "tensors", "wide"],
            &["model", "tensors", "wide", "--output", "json"],
            &["model", "tree", "alpha"],
            &["lineage", "descendants", "alpha"],
            &["lineage", "graph", "alpha"],
            &["token", "whoami"],
            &["token", "list"],
            &["health"],
            &["completions", "bash"],
            &["--help"],
            &["job", "plan", "direct", "copy", "--parent", "alpha"],
        ];
        for args in commands {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let mut command = heirloom_at(&address, &token, args);
            command.stdout(writer);
            let (code, _, stderr) = finish(command);
            assert_eq!((code, stderr.as_str()), (0, ""), "heirloom {args:?}");
        }
    })
    .await;
}

/// The table of `cli/EXIT_CODES.md`, one case per row, each with what it says on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exit_status_means_what_the_table_says() {
    let cluster = cluster_with_models().await;
    let (address, token) = (cluster.address.clone(), cluster.admin_token.clone());
    blocking(move || {
        // A queued job (no worker takes it) that is then cancelled: watched, it ends cancelled.
        let (code, stdout, stderr) = finish(heirloom_at(
            &address,
            &token,
            &[
                "job", "direct", "copy", "--parent", "alpha", "--output", "json",
            ],
        ));
        assert_eq!(code, 0, "{stderr}");
        let job_id = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (code, _, stderr) = finish(heirloom_at(&address, &token, &["job", "cancel", &job_id]));
        assert_eq!(code, 0, "{stderr}");

        let run = |args: &[&str]| finish(heirloom_at(&address, &token, args));
        let check = |args: &[&str], expected: i32, stdout_has: &[&str], stderr_has: &[&str]| {
            let (code, stdout, stderr) = run(args);
            assert_eq!(
                code, expected,
                "heirloom {args:?}\nstdout: {stdout}\nstderr: {stderr}"
            );
            for words in stdout_has {
                assert!(
                    stdout.contains(words),
                    "heirloom {args:?}: {words:?} in {stdout}"
                );
            }
            for words in stderr_has {
                assert!(
                    stderr.contains(words),
                    "heirloom {args:?}: {words:?} in {stderr}"
                );
            }
            if expected != 0 {
                assert!(!stderr.contains("panicked"), "heirloom {args:?}: {stderr}");
            }
        };

        // 0: done.
        check(&["model", "list"], 0, &["alpha", "wide"], &[]);
        check(&["--help"], 0, &["Usage: heirloom"], &[]);
        check(&["--version"], 0, &["heirloom"], &[]);
        check(
            &["job", "plan", "direct", "copy", "--parent", "alpha"],
            0,
            &["verdict: would be queued"],
            &[],
        );

        // 1: the coordinator refused, with its code, its reason and a next step.
        check(
            &["model", "show", "no-such-model"],
            1,
            &[],
            &["error: NotFound: ", "hint: `heirloom model list`"],
        );
        let (code, _, stderr) = finish(heirloom_at(&address, "not-a-token", &["model", "list"]));
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("error: Unauthenticated"), "{stderr}");
        assert!(stderr.contains("hint: pass a token"), "{stderr}");
        // 1: an answer that is a no: a plan the coordinator would refuse, a watched job
        // that did not succeed.
        check(
            &[
                "job", "plan", "direct", "mix", "--parent", "alpha", "--with", "wide", "--alpha",
                "0.5",
            ],
            1,
            &["verdict: REFUSED"],
            &["error: the coordinator would refuse this job"],
        );
        check(
            &["job", "watch", &job_id],
            1,
            &["cancelled"],
            &[&format!("error: job {job_id} ended cancelled")],
        );

        // 2: the command line is wrong: clap's words and usage, or the CLI's own check of
        // a value.
        check(
            &["model", "lst"],
            2,
            &[],
            &[
                "error: unrecognized subcommand 'lst'",
                "Usage: heirloom model",
            ],
        );
        check(
            &["model", "show"],
            2,
            &[],
            &[
                "error: the following required arguments were not provided",
                "<MODEL>",
            ],
        );
        check(
            &["job", "list", "--state", "bogus"],
            2,
            &[],
            &["error: --state \"bogus\": use queued"],
        );
        check(
            &["job", "plan", "train", "x", "--arch", "{not json"],
            2,
            &[],
            &["error: --arch: expected JSON"],
        );
        let (code, _, stderr) = finish(heirloom_at("127.0.0.1:7070", "any", &["model", "list"]));
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("error: --coordinator \"127.0.0.1:7070\": write https://host:port"),
            "{stderr}"
        );

        // 3: no coordinator answers there; a retry may succeed.
        let nobody = format!("https://127.0.0.1:{}", support::free_port());
        let (code, _, stderr) = finish(heirloom_at(&nobody, "any", &["model", "list"]));
        assert_eq!(code, 3, "{stderr}");
        assert!(
            stderr.contains(&format!("error: cannot reach the coordinator at {nobody}")),
            "{stderr}"
        );
        assert!(
            stderr.contains("hint: is the coordinator running"),
            "{stderr}"
        );
        let (code, _, stderr) = finish(heirloom_at(&nobody, "any", &["health"]));
        assert_eq!(code, 3, "{stderr}");
    })
    .await;
}

/// **Invariant:** the CLI writes to stdout only through `cli/src/output.rs` (`out!`,
/// `outln!`, `write_all`), whose failed writes end the process by the exit table; a
/// `print!` or `println!` elsewhere would panic on a closed pipe again.
#[test]
fn the_cli_writes_stdout_only_through_its_output_module() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|name| name == "output.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let prints = ["print!(", "println!(", "io::stdout()"]
                .iter()
                .any(|needle| {
                    code.match_indices(needle).any(|(at, _)| {
                        // `eprint!`/`eprintln!` write to stderr.
                        !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    })
                });
            if prints {
                found.push(format!("{}:{}: {line}", path.display(), number + 1));
            }
        }
    }
    assert!(found.is_empty(), "use out!/outln!:\n{}", found.join("\n"));
}
