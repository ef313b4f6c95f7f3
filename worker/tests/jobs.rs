//! Job life cycle through a real worker: cancellation, idempotent submission, priorities.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use std::time::Duration;
use support::{Cluster, blobs, hyperparameters, mlp};

fn train(name: &str, dataset_id: &str, epochs: u32) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![16], 5)),
        hyperparameters: hyperparameters(epochs, None),
        ..Default::default()
    }
}

async fn wait_until_running(cluster: &Cluster, job_id: &str) {
    let what = format!("job {job_id} runs");
    support::wait_until(Duration::from_secs(30), &what, || async {
        cluster.job(job_id).await.state() == pb::JobState::Running
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_frees_the_worker() {
    let cluster = Cluster::start().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 100, 1)).await;
    let long = cluster.submit(train("endless", &dataset.id, 100_000)).await;
    wait_until_running(&cluster, &long.id).await;

    let cancelled = cluster
        .jobs()
        .cancel_job(pb::CancelJobRequest {
            job_id: long.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    let (_, long) = cluster.wait(&long.id).await;
    assert_eq!(long.state(), pb::JobState::Cancelled);
    assert!(long.model_id.is_empty());

    // The worker noticed and takes the next job.
    let next = cluster.submit(train("next", &dataset.id, 2)).await;
    let (_, next) = cluster.wait(&next.id).await;
    assert_eq!(next.state(), pb::JobState::Succeeded, "{}", next.error);
    let (models,): (i64,) = sqlx::query_as("SELECT count(*) FROM models")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(models, 1, "the cancelled job wrote no model");

    let again = cluster
        .jobs()
        .cancel_job(pb::CancelJobRequest {
            job_id: long.id.clone(),
        })
        .await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_with_one_request_id_make_one_job() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let request = |epochs: u32| pb::SubmitJobRequest {
        spec: Some(train("once", &dataset.id, epochs)),
        request_id: "request-1".into(),
        ..Default::default()
    };
    let submissions: Vec<_> = (0..100)
        .map(|_| {
            let (mut jobs, request) = (cluster.jobs(), request(1));
            tokio::spawn(async move { jobs.submit_job(request).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for submission in submissions {
        let job = submission
            .await
            .unwrap()
            .expect("every submission is answered");
        ids.insert(job.into_inner().job.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "all 100 got the same job");
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    // The same request id with different parameters is refused, and writes nothing.
    let refused = cluster.jobs().submit_job(request(2)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    assert!(
        refused.message().contains("different submission"),
        "{}",
        refused.message()
    );
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_jobs_are_leased_first() {
    let mut cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mut ids = Vec::new();
    for (name, priority) in [("low", 0), ("high", 10)] {
        let job = cluster
            .jobs()
            .submit_job(pb::SubmitJobRequest {
                spec: Some(train(name, &dataset.id, 1)),
                priority,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        ids.push(job.id);
    }
    cluster.start_worker();
    for id in &ids {
        let (_, job) = cluster.wait(id).await;
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    }
    let order: Vec<(String,)> = sqlx::query_as(
        "SELECT j.model_name FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE e.state = 'leased' ORDER BY e.sequence",
    )
    .fetch_all(&cluster.pool)
    .await
    .unwrap();
    assert_eq!(order, [("high".to_string(),), ("low".to_string(),)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_returns_its_job_even_after_it_succeeded() {
    let cluster = Cluster::start().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let submit = || {
        let mut jobs = cluster.jobs();
        let request = pb::SubmitJobRequest {
            spec: Some(train("retried", &dataset.id, 1)),
            request_id: "request-7".into(),
            ..Default::default()
        };
        async move { jobs.submit_job(request).await }
    };
    let first = submit().await.unwrap().into_inner().job.unwrap();
    let (_, done) = cluster.wait(&first.id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    let again = submit().await.expect("the retry is answered, not refused");
    assert_eq!(again.into_inner().job.unwrap().id, first.id);
}

/// A worker forgets each job once it ends: idle after three jobs, it drains with none
/// to hand back (it used to count every job it had ever run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_holds_no_finished_jobs() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 40, 1)).await;
    let (cache, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = logs.path().join("worker.log");
    let worker = support::worker_process_logging_to(
        &cluster.address,
        &cluster.worker_token,
        cache.path(),
        &log,
    );
    for name in ["one", "two", "three"] {
        let job = cluster.submit(train(name, &dataset.id, 1)).await;
        let (_, job) = cluster.wait(&job.id).await;
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    }
    support::signal(&worker, "TERM");
    let what = "the worker logs its drain";
    let drained = support::wait_for(Duration::from_secs(30), what, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|line| line.contains("handing back what runs"))
            .map(str::to_string)
    })
    .await;
    assert!(drained.contains(r#""jobs":0"#), "{drained}");
}
