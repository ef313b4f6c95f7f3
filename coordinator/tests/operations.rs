//! Operating the coordinator: the binary configured by a settings file under environment
//! variables and flags, JSON logs with a span per call, and Prometheus metrics that follow
//! a real job through a real worker.

use heirloom_testing as support;

use heirloom_client::certificates;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use std::process::Stdio;
use std::time::Duration;
use support::free_port;
use support::metrics::{sample, scrape};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_a_settings_file_logs_json_spans_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let certs = support::certificates();
    let (file_port, port, metrics_port) = (free_port(), free_port(), free_port());
    let settings = dir.path().join("coordinator.toml");
    let path = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        &settings,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\n\
             database-url = \"{}\"\n\
             artifacts = \"{}\"\n\
             tls-cert = \"{}\"\ntls-key = \"{}\"\nworker-client-ca = \"{}\"\n\
             admin-token-file = \"{}\"\n\
             metrics-listen = \"127.0.0.1:{metrics_port}\"\n\
             log-format = \"human\"\n",
            support::fresh_database().await,
            dir.path().join("artifacts").display(),
            path(certificates::SERVER_CERT),
            path(certificates::SERVER_KEY),
            path(certificates::CA_CERT),
            dir.path().join("admin.token").display(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("coordinator.log");
    // The flag beats the file's `listen`; the variable beats the file's `log-format`.
    let mut coordinator = Command::new(support::workspace_binary("heirloom-coordinator"))
        .args(["--config".as_ref(), settings.as_os_str()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HEIRLOOM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,heirloom_coordinator=debug")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the coordinator binary");
    let address = format!("https://127.0.0.1:{port}");
    let mut admin_token = None;
    for _ in 0..300 {
        if let Ok(token) = std::fs::read_to_string(dir.path().join("admin.token"))
            && ModelServiceClient::new(support::connect_as(&address, Some(&token)))
                .list_models(pb::ListModelsRequest {})
                .await
                .is_ok()
        {
            admin_token = Some(token);
            break;
        }
        assert!(
            coordinator.try_wait().unwrap().is_none(),
            "the coordinator exited: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin_token = admin_token.expect("the coordinator answers on the flag's port");
    // The probe the deploy manifests use: health over TLS, without a token.
    let health = Command::new(support::workspace_binary("heirloom"))
        .args(["--coordinator", &address, "--ca-cert"])
        .arg(certs.join(certificates::CA_CERT))
        .arg("health")
        .env_remove("HEIRLOOM_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
    let admin = support::connect_as(&address, Some(&admin_token));

    // One real job through one real worker, and one refused call.
    let worker_token = support::create_token(&admin, "ops-worker", pb::Role::Worker).await;
    let cache = tempfile::tempdir().unwrap();
    let _worker = support::worker_process(&address, &worker_token, cache.path(), &[]);
    let parent = support::import_model_at(
        &admin,
        "ops-parent",
        support::mlp(8, vec![16], 5),
        support::random_mlp_weights(8, &[16], 5, 7),
    )
    .await;
    let mut jobs = JobServiceClient::new(admin.clone());
    let job = jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Direct.into(),
                model_name: "ops-copy".into(),
                parent_id: parent.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .unwrap();
    let mut state = pb::JobState::Queued;
    for _ in 0..600 {
        state = jobs
            .get_job(pb::GetJobRequest {
                job_id: job.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .state();
        if state == pb::JobState::Succeeded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, pb::JobState::Succeeded);
    let refused = ModelServiceClient::new(support::connect_as(&address, Some("not-a-token")))
        .list_models(pb::ListModelsRequest {})
        .await
        .expect_err("a bad token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let metrics = scrape(metrics_port).await;
    assert_eq!(sample(&metrics, "heirloom_jobs{state=\"succeeded\"}"), 1.0);
    assert_eq!(sample(&metrics, "heirloom_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(sample(&metrics, "heirloom_workers_connected"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            "heirloom_job_duration_seconds_count{kind=\"direct\",state=\"succeeded\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &metrics,
            "heirloom_rpc_duration_seconds_count{method=\"heirloom.v1.JobService/SubmitJob\",code=\"OK\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "heirloom_rpc_duration_seconds_count{method=\"heirloom.v1.ModelService/ListModels\",code=\"UNAUTHENTICATED\"}"
        ) >= 1.0
    );
    // The worker downloaded the parent's tensors (MLP 8→16→5: 228 floats).
    assert!(
        sample(
            &metrics,
            "heirloom_artifact_bytes_total{direction=\"download\"}"
        ) >= 912.0
    );

    // JSON lines, the submission's inside a span naming the method and the caller.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let submitted = lines
        .iter()
        .find(|line| line["fields"]["message"] == "job submitted")
        .unwrap_or_else(|| panic!("no submission logged:\n{logs}"));
    assert_eq!(
        submitted["span"]["method"],
        "heirloom.v1.JobService/SubmitJob"
    );
    assert!(
        submitted["span"]["caller"]
            .as_str()
            .is_some_and(|caller| caller.starts_with("bootstrap-admin")),
        "{submitted}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line["fields"]["message"] == "served" && line["fields"]["code"] == "OK"),
        "every call is logged with its code at debug level"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_with_an_unknown_key_stops_the_binary_with_the_keys_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("coordinator.toml");
    std::fs::write(&settings, "lease-secnds = 10\n").unwrap();
    let output = Command::new(support::workspace_binary("heirloom-coordinator"))
        .args(["--config".as_ref(), settings.as_os_str()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown key \"lease-secnds\""), "{stderr}");
    assert!(stderr.contains("lease-seconds"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_answers_in_json_and_refusals_say_what_to_do_next() {
    let cluster = support::Cluster::start().await;
    let admin = cluster.admin_token.clone();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let (ok, stdout, stderr) = support::cli(&cluster, &admin, &args);
        assert!(ok, "heirloom {args:?}: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?}: {err}: {stdout}"))
    };
    let weights = tempfile::tempdir().unwrap();
    let file = weights.path().join("base.safetensors");
    std::fs::write(&file, support::random_mlp_weights(8, &[16], 5, 3)).unwrap();
    let imported = json(&[
        "model",
        "import",
        "cli-base",
        "--arch",
        r#"{"mlp": {"input_features": 8, "hidden": [16], "num_classes": 5}}"#,
        "--weights",
        file.to_str().unwrap(),
    ]);
    assert_eq!(imported["name"], "cli-base");
    assert_eq!(imported["source"], "import");

    // A watched job: JSON Lines, the submitted job first, then its events to the end.
    let mut args = vec![
        "job", "direct", "cli-half", "--parent", "cli-base", "--scale", "0.5", "--watch",
    ];
    args.extend(["--output", "json"]);
    let (ok, stdout, stderr) = support::cli(&cluster, &admin, &args);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert_eq!(lines[0]["spec"]["modelName"], "cli-half");
    assert_eq!(lines.last().unwrap()["state"], "JOB_STATE_SUCCEEDED");

    assert!(json(&["model", "list"])["models"].as_array().unwrap().len() == 2);
    assert_eq!(json(&["model", "show", "cli-half"])["source"], "direct");
    let tensors = json(&["model", "tensors", "cli-half"]);
    assert_eq!(tensors["tensors"].as_array().unwrap().len(), 4);
    assert_eq!(
        json(&["model", "tree", "cli-half"])["ancestors"][0]["model"]["name"],
        "cli-base"
    );
    assert_eq!(json(&["job", "list"])["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(
        json(&["lineage", "ancestors", "cli-half"])[0]["name"],
        "cli-base"
    );
    assert_eq!(json(&["token", "whoami"])["role"], "ROLE_ADMIN");
    assert_eq!(json(&["health"])["status"], "SERVING");
    assert_eq!(
        json(&["dataset", "list"])["datasets"],
        serde_json::json!(null)
    );
    let out = weights.path().join("half.safetensors");
    let exported = json(&[
        "model",
        "export",
        "cli-half",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        exported["bytes"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );

    // Refusals name the code, the server's reason, and a next step.
    let (ok, _, stderr) = support::cli(&cluster, "not-a-token", &["model", "list"]);
    assert!(!ok);
    assert!(stderr.contains("error: Unauthenticated"), "{stderr}");
    assert!(
        stderr.contains("hint: pass a token with --token-file"),
        "{stderr}"
    );
    let (ok, _, stderr) = support::cli(&cluster, &admin, &["model", "show", "no-such-model"]);
    assert!(!ok);
    assert!(stderr.contains("hint: `heirloom model list`"), "{stderr}");

    let (ok, completions, _) = support::cli(&cluster, &admin, &["completions", "bash"]);
    assert!(ok && completions.contains("_heirloom()"), "{completions}");
}

/// Kubernetes stops a pod with SIGTERM: the coordinator refuses new connections, ends its
/// open streams (a job being watched, a worker's assignments) with UNAVAILABLE at once so
/// clients reconnect elsewhere, and exits cleanly well inside the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_stops_the_coordinator_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = support::certificates();
    let path = |name: &str| certs.join(name).display().to_string();
    let port = free_port();
    let token_file = dir.path().join("admin.token");
    let log_path = dir.path().join("coordinator.log");
    let database = support::fresh_database().await;
    let artifacts = dir.path().join("artifacts").display().to_string();
    let mut coordinator = Command::new(support::workspace_binary("heirloom-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &database, "--artifacts", &artifacts])
        .args(["--tls-cert", &path(certificates::SERVER_CERT)])
        .args(["--tls-key", &path(certificates::SERVER_KEY)])
        .args(["--worker-client-ca", &path(certificates::CA_CERT)])
        .args(["--admin-token-file".as_ref(), token_file.as_os_str()])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the coordinator binary");
    let address = format!("https://127.0.0.1:{port}");
    let admin_token = support::wait_for_coordinator(&address, &token_file).await;
    let admin = support::connect_as(&address, Some(&admin_token));

    // A job no worker takes (it needs a GPU), watched; and a worker's assignment stream.
    let parent = support::import_model_at(
        &admin,
        "parent",
        support::mlp(8, vec![16], 5),
        support::random_mlp_weights(8, &[16], 5, 7),
    )
    .await;
    let mut jobs = JobServiceClient::new(admin.clone());
    let job = jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Direct.into(),
                model_name: "copy".into(),
                parent_id: parent.id.clone(),
                ..Default::default()
            }),
            requirements: Some(pb::Requirements {
                device: "cuda".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut watch = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("the queued event");
    assert!(first.event.is_some());
    let worker_token = support::create_token(&admin, "idle-worker", pb::Role::Worker).await;
    let worker = support::connect_as(&address, Some(&worker_token));
    let (_, mut assignments) = support::scripted_worker(&worker, "idle-cpu").await;

    let signalled = std::time::Instant::now();
    let pid = coordinator.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let within = Duration::from_secs(5);
    let watched = tokio::time::timeout(within, watch.message())
        .await
        .expect("the watch ends at once");
    ended(watched.map(|message| format!("{message:?}")), "WatchJob");
    let assigned = tokio::time::timeout(within, assignments.message())
        .await
        .expect("the assignment stream ends at once");
    ended(
        assigned.map(|message| format!("{message:?}")),
        "StreamAssignments",
    );
    let status = tokio::time::timeout(Duration::from_secs(10), coordinator.wait())
        .await
        .expect("the coordinator exits")
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        !log.contains("calls still open after the drain"),
        "every stream ended without waiting out the drain:\n{log}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        signalled.elapsed()
    );
}

/// A stream that SIGTERM ended: with UNAVAILABLE, so its client reconnects.
fn ended(result: Result<String, tonic::Status>, stream: &str) {
    match result {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{stream}: {status:?}"
        ),
        Ok(message) => panic!("{stream} went on after SIGTERM: {message}"),
    }
}
