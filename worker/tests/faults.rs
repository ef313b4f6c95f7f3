//! Jobs that survive failure: a killed worker's job resumes from its checkpoint on
//! another worker, a draining worker hands its job back, a stale attempt is refused,
//! retryable errors back off until the attempts run out, and jobs go only to workers
//! that fit them. Real worker processes where a worker is killed; a scripted worker over
//! gRPC where the test must control exactly what a worker says. Leases last 3 s here.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use std::time::Duration;
use support::{Cluster, blobs, mlp};
use tonic::Streaming;

/// Long enough to kill mid-way (a few thousand steps), short enough to finish.
fn long_training(name: &str, dataset_id: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![256, 256], 5)),
        hyperparameters: Some(pb::Hyperparameters {
            epochs: Some(150),
            batch_size: Some(64),
            seed: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn short_training(name: &str, dataset_id: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![8], 5)),
        hyperparameters: support::hyperparameters(1, None),
        ..Default::default()
    }
}

/// Polls until the job's last checkpoint is past step 0; returns that step.
async fn wait_for_checkpoint(cluster: &Cluster, job_id: &str) -> u64 {
    let what = format!("job {job_id} checkpoints");
    support::wait_for(Duration::from_secs(60), &what, || async {
        let job = cluster.job(job_id).await;
        assert!(
            !matches!(job.state(), pb::JobState::Succeeded | pb::JobState::Failed),
            "the job ended before it could be interrupted: make it longer"
        );
        (job.checkpoint_step > 0).then_some(job.checkpoint_step)
    })
    .await
}

/// The total steps a run without faults takes, as the job's progress announced it.
fn announced_steps(events: &[pb::JobEvent]) -> u64 {
    events
        .iter()
        .filter_map(|event| match &event.event {
            Some(pb::job_event::Event::Progress(progress)) => Some(progress.total_steps),
            _ => None,
        })
        .max()
        .expect("progress was reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_resumes_from_its_checkpoint_on_another_worker() {
    let mut cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 200, 1)).await;
    let first = cluster.start_worker();
    let job = cluster.submit(long_training("resumed", &dataset.id)).await;
    let checkpointed = wait_for_checkpoint(&cluster, &job.id).await;
    cluster.kill_worker(first).await;
    cluster.start_worker();

    let (events, done) = cluster.wait(&job.id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    let model = cluster.model(&done.model_id).await;
    let metrics = model.metrics.expect("metrics");
    assert_eq!(
        metrics.steps,
        announced_steps(&events),
        "as many steps as a run without faults"
    );
    // The second attempt began where the first checkpointed (or later), not at zero.
    let resumed = events
        .iter()
        .find(|event| event.message.contains("resuming from step"))
        .expect("the retry resumed from a checkpoint");
    let step: u64 = resumed
        .message
        .rsplit(' ')
        .next()
        .and_then(|step| step.parse().ok())
        .expect("a step");
    assert!(
        step >= checkpointed,
        "resumed at {step}, checkpointed {checkpointed}"
    );
    let job = cluster.job(&job.id).await;
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lease_expired", "succeeded"]);
    assert_ne!(job.attempts[0].worker_id, job.attempts[1].worker_id);
    assert_eq!(job.failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_checkpoints_and_hands_its_job_back() {
    let mut cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 200, 1)).await;
    let first = cluster.start_worker();
    let job = cluster.submit(long_training("drained", &dataset.id)).await;
    wait_for_checkpoint(&cluster, &job.id).await;
    let status = cluster.terminate_worker(first).await;
    assert!(status.success(), "a drained worker exits cleanly: {status}");

    // Handed back at once, not after its lease: queued, with a fresh checkpoint, and
    // not counted as a failure.
    let handed_back = cluster.job(&job.id).await;
    assert_eq!(handed_back.state(), pb::JobState::Queued);
    assert_eq!(handed_back.failures, 0);
    assert_eq!(handed_back.attempts[0].outcome, "released");
    assert!(handed_back.checkpoint_step > 0);

    // Garbage collection keeps what an unfinished job's checkpoint refers to, even
    // once nothing else holds it.
    sqlx::query("DELETE FROM blob_holds")
        .execute(&cluster.pool)
        .await
        .unwrap();
    cluster.wait_until_blobs_are(Duration::from_secs(1)).await;
    ArtifactServiceClient::new(cluster.channel.clone())
        .collect_garbage(pb::CollectGarbageRequest {
            min_age_seconds: Some(1),
            dry_run: false,
        })
        .await
        .unwrap();

    cluster.start_worker();
    let (events, done) = cluster.wait(&job.id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    let metrics = cluster.model(&done.model_id).await.metrics.unwrap();
    assert_eq!(metrics.steps, announced_steps(&events));
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("resuming from step")),
        "the second worker resumed from the drained checkpoint"
    );
    assert_eq!(
        cluster.job(&done.id).await.checkpoint_step,
        0,
        "an ended job keeps no checkpoint"
    );
}

/// A worker the test speaks for, over gRPC.
struct Scripted {
    client: WorkerServiceClient<support::Connection>,
    id: String,
    assignments: Streaming<pb::Assignment>,
}

impl Scripted {
    async fn connect(cluster: &Cluster, register: pb::RegisterWorkerRequest) -> Scripted {
        Scripted::connect_to(cluster.worker_connection(), register).await
    }

    async fn connect_to(
        channel: support::Connection,
        register: pb::RegisterWorkerRequest,
    ) -> Scripted {
        let mut client = WorkerServiceClient::new(channel);
        let id = client
            .register_worker(register)
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let assignments = client
            .stream_assignments(pb::StreamAssignmentsRequest {
                worker_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        Scripted {
            client,
            id,
            assignments,
        }
    }

    /// The next assignment, if one comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<pb::Assignment> {
        tokio::time::timeout(wait, self.assignments.message())
            .await
            .ok()
            .map(|message| message.unwrap().expect("the stream stays open"))
    }

    async fn fail(&mut self, assignment: &pb::Assignment, retryable: bool) -> pb::Job {
        self.client
            .complete_job(pb::CompleteJobRequest {
                worker_id: self.id.clone(),
                job_id: assignment.job_id.clone(),
                attempt: assignment.attempt,
                result: Some(pb::complete_job_request::Result::Error(
                    "the device fell off the bus".into(),
                )),
                retryable,
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    }
}

fn plain_worker(name: &str) -> pb::RegisterWorkerRequest {
    pb::RegisterWorkerRequest {
        name: name.into(),
        devices: vec![pb::Device {
            name: "cpu".into(),
            memory_bytes: 0,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_is_refused_and_writes_nothing() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mut worker = Scripted::connect(&cluster, plain_worker("slow")).await;
    let job = cluster.submit(short_training("fenced", &dataset.id)).await;
    let stale = worker.next(Duration::from_secs(10)).await.expect("leased");
    // Silent past its lease: the job is taken back and leased again, with a new token.
    let fresh = worker
        .next(Duration::from_secs(15))
        .await
        .expect("leased again after the lease expired");
    assert_eq!(fresh.job_id, job.id);
    assert_eq!(fresh.attempt, stale.attempt + 1);
    // A well-formed checkpoint, its one tensor stored: only the token is wrong.
    let bias = 0.5f32.to_le_bytes().to_vec();
    let bias_sha256 = heirloom_core::sha256_hex(&bias);
    heirloom_client::transfer::upload_missing(
        cluster.channel.clone(),
        &[(bias_sha256.clone(), bias.into())],
        |_, _| {},
    )
    .await
    .unwrap();
    let before = cluster.row_counts().await;

    let refused = |result: Result<tonic::Response<_>, tonic::Status>, call: &str| {
        let status = result
            .err()
            .unwrap_or_else(|| panic!("{call} with a stale token was accepted"));
        assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{call}: {status:?}"
        );
        assert!(
            status.message().contains("no longer holds"),
            "{}",
            status.message()
        );
    };
    let mut client = worker.client.clone();
    refused(
        client
            .report_progress(pb::ReportProgressRequest {
                worker_id: worker.id.clone(),
                job_id: job.id.clone(),
                attempt: stale.attempt,
                progress: Some(pb::Progress::default()),
            })
            .await
            .map(|_| tonic::Response::new(())),
        "ReportProgress",
    );
    refused(
        client
            .save_checkpoint(pb::SaveCheckpointRequest {
                worker_id: worker.id.clone(),
                job_id: job.id.clone(),
                attempt: stale.attempt,
                checkpoint: Some(pb::Checkpoint {
                    step: 1,
                    tensors: vec![pb::ManifestTensor {
                        name: "fc.bias".into(),
                        dtype: "f32".into(),
                        shape: vec![1],
                        sha256: bias_sha256.clone(),
                    }],
                    ..Default::default()
                }),
            })
            .await
            .map(|_| tonic::Response::new(())),
        "SaveCheckpoint",
    );
    refused(
        client
            .complete_job(pb::CompleteJobRequest {
                worker_id: worker.id.clone(),
                job_id: job.id.clone(),
                attempt: stale.attempt,
                result: Some(pb::complete_job_request::Result::Error("late".into())),
                retryable: false,
            })
            .await
            .map(|_| tonic::Response::new(())),
        "CompleteJob",
    );
    let stop = client
        .heartbeat(pb::HeartbeatRequest {
            worker_id: worker.id.clone(),
            leases: vec![pb::JobLease {
                job_id: job.id.clone(),
                attempt: stale.attempt,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .stop;
    assert_eq!(
        stop,
        std::slice::from_ref(&job.id),
        "a heartbeat for a stale lease says stop"
    );
    // Nothing the stale attempt sent was written anywhere.
    assert_eq!(cluster.row_counts().await, before);
    assert_eq!(cluster.job(&job.id).await.checkpoint_step, 0);
    let job = cluster.job(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Leased);
    assert_eq!(job.attempt, fresh.attempt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_back_off_until_the_attempts_run_out_and_permanent_ones_fail_at_once() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mut worker = Scripted::connect(&cluster, plain_worker("flaky")).await;
    let job = cluster
        .jobs()
        .submit_job(pb::SubmitJobRequest {
            spec: Some(short_training("flaky", &dataset.id)),
            max_attempts: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut leased_at = Vec::new();
    for attempt in 1..=3 {
        let assignment = worker.next(Duration::from_secs(10)).await.expect("leased");
        leased_at.push(std::time::Instant::now());
        assert_eq!(assignment.attempt, attempt);
        let job = worker.fail(&assignment, true).await;
        let expected = if attempt < 3 {
            pb::JobState::Queued
        } else {
            pb::JobState::Failed
        };
        assert_eq!(
            job.state(),
            expected,
            "after attempt {attempt}: {}",
            job.error
        );
    }
    // Backoff 0.2 s, then 0.4 s, each with ±50% jitter.
    assert!(leased_at[1] - leased_at[0] >= Duration::from_millis(100));
    assert!(leased_at[2] - leased_at[1] >= Duration::from_millis(200));
    let failed = cluster.job(&job.id).await;
    assert!(
        failed.error.contains("gave up after 3 failed attempts"),
        "{}",
        failed.error
    );
    let attempts: Vec<(&str, &str, &str)> = failed
        .attempts
        .iter()
        .map(|a| (a.outcome.as_str(), a.worker_id.as_str(), a.error.as_str()))
        .collect();
    let id = worker.id.as_str();
    let why = "the device fell off the bus";
    assert_eq!(
        attempts,
        [
            ("retried", id, why),
            ("retried", id, why),
            ("retried", id, why)
        ]
    );
    assert!(
        worker.next(Duration::from_millis(1500)).await.is_none(),
        "no fourth attempt"
    );

    // A permanent error (bad data, a bad spec) is not retried.
    let permanent = cluster.submit(short_training("broken", &dataset.id)).await;
    let assignment = worker.next(Duration::from_secs(10)).await.expect("leased");
    assert_eq!(assignment.job_id, permanent.id);
    let job = worker.fail(&assignment, false).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(cluster.job(&permanent.id).await.attempts.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_only_to_workers_that_fit_and_up_to_their_concurrency() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mut cpu = Scripted::connect(
        &cluster,
        pb::RegisterWorkerRequest {
            labels: [("zone".to_string(), "a".to_string())].into(),
            concurrency: Some(2),
            ..plain_worker("cpu-a")
        },
    )
    .await;
    let mut gpu = Scripted::connect(
        &cluster,
        pb::RegisterWorkerRequest {
            devices: vec![pb::Device {
                name: "cuda:0".into(),
                memory_bytes: 80 << 30,
            }],
            ..plain_worker("gpu")
        },
    )
    .await;
    let submit = |name: &str, requirements: pb::Requirements| {
        let mut jobs = cluster.jobs();
        let request = pb::SubmitJobRequest {
            spec: Some(short_training(name, &dataset.id)),
            requirements: Some(requirements),
            ..Default::default()
        };
        async move {
            jobs.submit_job(request)
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
        }
    };
    let big_gpu = submit(
        "big-gpu",
        pb::Requirements {
            device: "cuda".into(),
            min_device_memory_bytes: 100 << 30,
            ..Default::default()
        },
    )
    .await;
    let gpu_job = submit(
        "on-gpu",
        pb::Requirements {
            device: "cuda".into(),
            min_device_memory_bytes: 40 << 30,
            ..Default::default()
        },
    )
    .await;
    let zone_a = |name: &str| {
        submit(
            name,
            pb::Requirements {
                labels: [("zone".to_string(), "a".to_string())].into(),
                ..Default::default()
            },
        )
    };
    let first_a = zone_a("zone-a-1").await;
    let second_a = zone_a("zone-a-2").await;
    let third_a = zone_a("zone-a-3").await;

    let on_gpu = gpu
        .next(Duration::from_secs(10))
        .await
        .expect("the GPU job");
    assert_eq!(on_gpu.job_id, gpu_job.id);
    // Two at once on the CPU worker (its concurrency), the third waits for room.
    let mut on_cpu = vec![
        cpu.next(Duration::from_secs(10)).await.expect("one").job_id,
        cpu.next(Duration::from_secs(10)).await.expect("two").job_id,
    ];
    on_cpu.sort();
    let mut expected = vec![first_a.id.clone(), second_a.id.clone()];
    expected.sort();
    assert_eq!(on_cpu, expected, "oldest first");
    assert!(
        cpu.next(Duration::from_millis(1500)).await.is_none(),
        "no third at once"
    );
    assert!(
        gpu.next(Duration::from_millis(500)).await.is_none(),
        "zone-a jobs need the label"
    );
    assert_eq!(cluster.job(&third_a.id).await.state(), pb::JobState::Queued);
    // No worker has 100 GiB on one device: that job waits.
    assert_eq!(cluster.job(&big_gpu.id).await.state(), pb::JobState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinator_replicas_never_lease_one_job_twice() {
    let cluster = Cluster::coordinator_only().await;
    let replica = cluster.replica().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    // Four workers, two on each replica, with room for every job between them.
    let mut workers = Vec::new();
    for i in 0..4 {
        let channel = if i % 2 == 0 {
            cluster.worker_connection()
        } else {
            support::connect_as(&replica, Some(&cluster.worker_token))
        };
        let register = pb::RegisterWorkerRequest {
            concurrency: Some(6),
            ..plain_worker(&format!("w{i}"))
        };
        workers.push(Scripted::connect_to(channel, register).await);
    }
    let mut submitted = Vec::new();
    for i in 0..12 {
        let job = cluster
            .submit(short_training(&format!("j{i}"), &dataset.id))
            .await;
        submitted.push(job.id);
    }
    // All four listen at once, well within the 3 s lease.
    let listening: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                let mut leased = Vec::new();
                while let Some(assignment) = worker.next(Duration::from_millis(700)).await {
                    leased.push(assignment.job_id);
                }
                leased
            })
        })
        .collect();
    let mut leased = Vec::new();
    for worker in listening {
        leased.extend(worker.await.unwrap());
    }
    leased.sort();
    submitted.sort();
    assert_eq!(
        leased, submitted,
        "every job leased exactly once across both replicas"
    );
    let (attempts,): (i64,) = sqlx::query_as("SELECT count(*) FROM job_attempts")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_worker_takes_only_jobs_its_labels_fit() {
    let mut cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    cluster.start_worker_with(&["--label", "zone=b", "--name", "in-b"]);
    let job = cluster
        .jobs()
        .submit_job(pb::SubmitJobRequest {
            spec: Some(short_training("zoned", &dataset.id)),
            requirements: Some(pb::Requirements {
                labels: [("zone".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    // A job it fits, queued after the zoned one: once the zone-b worker has taken it, it
    // has had its chance at the zoned job.
    let unzoned = cluster.submit(short_training("unzoned", &dataset.id)).await;
    support::wait_until(
        Duration::from_secs(60),
        "the zone-b worker takes the job it fits",
        || async { cluster.job(&unzoned.id).await.state() != pb::JobState::Queued },
    )
    .await;
    assert_eq!(
        cluster.job(&job.id).await.state(),
        pb::JobState::Queued,
        "the zone-b worker leaves it alone"
    );
    cluster.start_worker_with(&["--label", "zone=a", "--name", "in-a"]);
    let (_, done) = cluster.wait(&job.id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    let (name,): (String,) = sqlx::query_as(
        "SELECT w.name FROM job_attempts a JOIN workers w ON w.id = a.worker_id
          WHERE a.job_id = $1::uuid",
    )
    .bind(&job.id)
    .fetch_one(&cluster.pool)
    .await
    .unwrap();
    assert_eq!(name, "in-a");
}
