//! A worker whose coordinator goes down backs off: every call it retries (the
//! reconnection, progress reports, checkpoints, heartbeats) waits 1 s, then 1.6 times
//! longer each time, so that a thousand workers do not greet a restarting coordinator
//! with a flood of connections. It trains on meanwhile and keeps its lease.
//!
//! Real processes: the coordinator's binary (so that it can be killed and started
//! again on the same port, on the same database) and a worker whose log is counted.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::{blobs, mlp};

/// The messages of the log lines written between byte `from` and byte `to` of `log`,
/// with how many times each was written.
fn messages(log: &Path, from: usize, to: usize) -> BTreeMap<String, usize> {
    let text = std::fs::read(log).expect("read the worker's log");
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&text[from..to]).lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        let message = line["fields"]["message"].as_str().unwrap_or_default();
        *counts.entry(message.to_string()).or_default() += 1;
    }
    counts
}

fn log_length(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |metadata| metadata.len() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_backs_off_while_its_coordinator_is_down_and_keeps_its_job() {
    // Longer than the outage: the worker keeps its job.
    let flags = ["--lease-seconds", "30", "--checkpoint-every", "100"];
    let database = support::fresh_database().await;
    let mut coordinator = support::CoordinatorProcess::start(database, &flags).await;
    let admin = coordinator.admin();
    let token = support::create_token(&admin, "workers", pb::Role::Worker).await;
    let dataset = support::register_dataset_at(&admin, "blobs", blobs(0..5, 200, 1)).await;
    let (cache, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = logs.path().join("worker.log");
    let _worker =
        support::worker_process_logging_to(&coordinator.address(), &token, cache.path(), &log);
    let mut jobs = JobServiceClient::new(admin.clone());
    // Trains for well over the outage: progress and checkpoints want to go out all along.
    let job = jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Train as i32,
                model_name: "outlasts".into(),
                dataset_id: dataset.id.clone(),
                architecture: Some(mlp(64, vec![256, 256], 5)),
                hyperparameters: Some(pb::Hyperparameters {
                    epochs: Some(1000),
                    batch_size: Some(64),
                    seed: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("a job");
    let get = |admin: support::Connection, id: String| async move {
        JobServiceClient::new(admin)
            .get_job(pb::GetJobRequest { job_id: id })
            .await
            .expect("get the job")
            .into_inner()
            .job
            .expect("a job")
    };
    support::wait_until(Duration::from_secs(60), "the job checkpoints", || async {
        get(admin.clone(), job.id.clone()).await.checkpoint_step > 0
    })
    .await;
    let before = get(admin.clone(), job.id.clone()).await.checkpoint_step;

    let from = log_length(&log);
    coordinator.kill().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let to = log_length(&log);
    let during = messages(&log, from, to);
    eprintln!("the worker's log during 6 s without its coordinator: {during:?}");
    // Tries at about 0, 1, 2.6 and 5.2 s (±20 %): at most 4 a loop. The reconnection
    // and the job's calls (progress and checkpoints share one backoff) each log one
    // line a try; a heartbeat goes every 10 s. Without backoff it was hundreds.
    for (message, count) in &during {
        assert!(*count <= 5, "{count} × {message:?} in 6 s: {during:?}");
    }
    let total: usize = during.values().sum();
    assert!(total <= 12, "{total} log lines in 6 s: {during:?}");
    assert!(
        during.contains_key("lost the coordinator; reconnecting"),
        "the worker saw the outage: {during:?}"
    );

    coordinator.spawn().await;
    let admin = coordinator.admin();
    let back = get(admin.clone(), job.id.clone()).await;
    assert_eq!(
        back.state(),
        pb::JobState::Running,
        "training outlasts the outage: make the job longer"
    );
    // The job's calls come back from their backoff: checkpoints reach the coordinator
    // (or, on a fast machine, the result does).
    support::wait_until(
        Duration::from_secs(30),
        "a checkpoint after the outage",
        || async {
            let job = get(admin.clone(), job.id.clone()).await;
            job.checkpoint_step > before || job.state() == pb::JobState::Succeeded
        },
    )
    .await;
    let done = support::wait_for(Duration::from_secs(120), "the job ends", || async {
        let job = get(admin.clone(), job.id.clone()).await;
        matches!(job.state(), pb::JobState::Succeeded | pb::JobState::Failed).then_some(job)
    })
    .await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    let outcomes: Vec<&str> = done.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["succeeded"],
        "one attempt, never taken back: the worker kept its lease"
    );
}
