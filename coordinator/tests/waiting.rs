//! GetJob says why a queued job waits: no worker connected, a device kind, memory or label
//! that no connected worker offers, or fitting workers all busy — against a real worker
//! process, whose claims agree (a job said to fit no worker stays queued).

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use std::collections::HashMap;
use std::time::Duration;
use support::{Cluster, blobs, hyperparameters, mlp};

fn training(name: &str, dataset_id: &str, epochs: u32) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![8], 5)),
        hyperparameters: hyperparameters(epochs, None),
        ..Default::default()
    }
}

async fn submit(cluster: &Cluster, spec: pb::JobSpec, requirements: pb::Requirements) -> pb::Job {
    cluster
        .jobs()
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec),
            requirements: Some(requirements),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("a job")
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_says_what_it_waits_for() {
    let mut cluster = Cluster::coordinator_only().await;
    let data = cluster.register_dataset("blobs", blobs(0..5, 40, 1)).await;
    let cuda = submit(
        &cluster,
        training("on-cuda", &data.id, 1),
        pb::Requirements {
            device: "cuda".into(),
            ..Default::default()
        },
    )
    .await;
    let zoned = submit(
        &cluster,
        training("in-zone-a", &data.id, 1),
        pb::Requirements {
            labels: labels(&[("zone", "a")]),
            ..Default::default()
        },
    )
    .await;
    let big = submit(
        &cluster,
        training("big", &data.id, 1),
        pb::Requirements {
            device: "cpu".into(),
            min_device_memory_bytes: 16 << 30,
            ..Default::default()
        },
    )
    .await;
    let waiting = [&cuda, &zoned, &big];
    for job in waiting {
        assert_eq!(
            cluster.job(&job.id).await.waiting_reason,
            "no worker is connected"
        );
        assert_eq!(job.waiting_reason, "", "only GetJob says why");
    }

    cluster.start_worker_with(&["--label", "zone=b", "--name", "cpu-b"]);
    support::wait_until(Duration::from_secs(60), "the worker connects", || async {
        cluster.job(&cuda.id).await.waiting_reason != "no worker is connected"
    })
    .await;
    // A job that fits it, to show that it claims what it can.
    let fits = cluster.submit(training("fits", &data.id, 1)).await;
    let (_, fits) = cluster.wait(&fits.id).await;
    assert_eq!(fits.state(), pb::JobState::Succeeded, "{}", fits.error);
    assert_eq!(fits.waiting_reason, "", "only a queued job waits");
    for (job, reason) in [
        (&cuda, "no connected worker has a cuda device"),
        (&zoned, "no connected worker has label zone=a"),
        (
            &big,
            "no connected worker has a cpu device with at least 16.0 GiB (the largest offers 0 B)",
        ),
    ] {
        let job = cluster.job(&job.id).await;
        assert_eq!(
            job.state(),
            pb::JobState::Queued,
            "{reason}: no worker took it"
        );
        assert_eq!(job.waiting_reason, reason);
        assert!(
            job.requirements.is_some(),
            "the requirements are on the job"
        );
    }

    // A long job keeps the worker busy: the next one that fits waits for it.
    let many = cluster.register_dataset("many", blobs(0..5, 400, 2)).await;
    let long = cluster.submit(training("long", &many.id, 100_000)).await;
    support::wait_until(Duration::from_secs(60), "the long job runs", || async {
        cluster.job(&long.id).await.state() == pb::JobState::Running
    })
    .await;
    let next = cluster.submit(training("next", &data.id, 1)).await;
    assert_eq!(
        cluster.job(&next.id).await.waiting_reason,
        "waiting for a free worker: the one connected worker that fits is busy"
    );
    cluster
        .jobs()
        .cancel_job(pb::CancelJobRequest {
            job_id: long.id.clone(),
        })
        .await
        .expect("cancel the long job");
    let (_, next) = cluster.wait(&next.id).await;
    assert_eq!(next.state(), pb::JobState::Succeeded, "{}", next.error);
}
