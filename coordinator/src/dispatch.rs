//! Hands queued jobs to connected workers and takes their results back.
//!
//! Each worker's open assignment stream has one task that claims a job whenever the
//! worker is idle and a job is queued, waking on notifications (and polling in case one
//! is lost). When the stream closes, the worker's unfinished job goes back to the queue.

use crate::Services;
use crate::db::NewModel;
use crate::domain::{Job, JobKind, Metrics};
use crate::error::{Error, Result};
use crate::notifier::Notification;
use heirloom_spec::{HEAD, TrainablePatterns, check_weights, sha256_hex, unchanged_tensors};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

/// How often an idle worker's task looks for work on its own.
const CLAIM_POLL: Duration = Duration::from_secs(2);

/// A job leased to a worker, with the files it needs.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub job: Job,
    pub dataset_path: String,
    pub parent_weights_path: Option<String>,
}

/// What a worker reports it produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub weights_path: String,
    pub weights_sha256: String,
    pub metrics: Metrics,
}

pub fn assignments(services: Services, worker_id: Uuid) -> impl Stream<Item = Result<Assignment>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut wake = services.notifier.subscribe();
        tracing::info!(worker_id = %worker_id, "worker connected");
        loop {
            match claim(&services, worker_id).await {
                Ok(Some(assignment)) => {
                    tracing::info!(job_id = %assignment.job.id, worker_id = %worker_id, "job leased");
                    if sender.send(Ok(assignment)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(worker_id = %worker_id, error = %err, "claim failed"),
            }
            tokio::select! {
                _ = sender.closed() => break,
                _ = wait_for_jobs(&mut wake) => {}
                _ = tokio::time::sleep(CLAIM_POLL) => {}
            }
        }
        match services.db.requeue_worker_jobs(worker_id).await {
            Ok(ids) => {
                tracing::info!(worker_id = %worker_id, requeued = ids.len(), "worker disconnected")
            }
            Err(err) => tracing::error!(worker_id = %worker_id, error = %err, "requeue failed"),
        }
    });
    ReceiverStream::new(receiver)
}

async fn claim(services: &Services, worker_id: Uuid) -> Result<Option<Assignment>> {
    let Some(claimed) = services.db.claim_job(worker_id).await? else {
        return Ok(None);
    };
    let job = claimed.job;
    let dataset = services.db.dataset(job.spec.dataset_id).await?;
    let parent_weights_path = match job.spec.parent_id {
        Some(parent_id) => Some(services.db.model(parent_id).await?.weights_path),
        None => None,
    };
    Ok(Some(Assignment {
        job,
        dataset_path: dataset.path,
        parent_weights_path,
    }))
}

async fn wait_for_jobs(wake: &mut broadcast::Receiver<Notification>) {
    loop {
        match wake.recv().await {
            Ok(Notification::Jobs) | Err(_) => return,
            Ok(Notification::JobEvent(_)) => {}
        }
    }
}

/// Checks a worker's weights against its claims and the job's spec, then records the
/// model, or fails the job with the reason and records nothing.
pub async fn record_output(
    services: &Services,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
    output: Output,
) -> Result<Job> {
    let job = services.db.job(job_id).await?;
    let bytes = services.artifacts.read_staged(&output.weights_path).await?;
    let verdict = verify_weights(services, &job, &bytes, &output.weights_sha256).await;
    let recorded = match verdict {
        Err(Error::InvalidArgument(reason)) => {
            let reason = format!("weights rejected: {reason}");
            tracing::warn!(job_id = %job_id, reason = %reason, "job output refused");
            services
                .db
                .fail_job(worker_id, job_id, attempt, &reason)
                .await
        }
        Err(err) => Err(err),
        Ok(()) => {
            let weights_sha256 = output.weights_sha256;
            let weights_path = services
                .artifacts
                .put_weights(&weights_sha256, &bytes)
                .await?;
            let model = NewModel {
                id: Uuid::new_v4(),
                weights_bytes: bytes.len() as u64,
                weights_sha256,
                weights_path,
                metrics: output.metrics,
            };
            let job = services
                .db
                .succeed_job(worker_id, job_id, attempt, &model)
                .await?;
            tracing::info!(job_id = %job_id, model_id = %model.id, "job succeeded");
            Ok(job)
        }
    };
    services.artifacts.remove_staged(&output.weights_path).await;
    recorded
}

async fn verify_weights(
    services: &Services,
    job: &Job,
    bytes: &[u8],
    claimed_sha256: &str,
) -> Result<()> {
    let sha256 = sha256_hex(bytes);
    if sha256 != claimed_sha256 {
        return Err(Error::InvalidArgument(format!(
            "the file hashes to {sha256}, not the reported {claimed_sha256}"
        )));
    }
    check_weights("weights", bytes, &job.spec.architecture)?;
    let Some(parent_id) = job.spec.parent_id else {
        return Ok(());
    };
    let parent = services.db.model(parent_id).await?;
    let parent_bytes =
        tokio::fs::read(services.artifacts.root().join(&parent.weights_path)).await?;
    let patterns = TrainablePatterns::from_checked(job.spec.trainable.clone());
    let frozen = |name: &str| match job.spec.kind {
        JobKind::Finetune => !patterns.is_trainable(name),
        JobKind::Transfer => !name.starts_with(&format!("{HEAD}.")),
        JobKind::Train => false,
    };
    unchanged_tensors("weights", &parent_bytes, bytes, frozen)?;
    Ok(())
}
