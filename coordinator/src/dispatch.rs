//! Hands queued jobs to connected workers and takes their results back.
//!
//! Each worker's open assignment stream has one task that claims a job whenever the
//! worker has room and a job that fits it is queued, waking on notifications (and polling
//! in case one is lost), that delivers the ranks another worker's claim of a gang placed
//! on it, and that records every few seconds that the worker is still connected (what
//! GetJob's waiting reason and gang placement count as connected), and when its stream
//! closes. A closed stream gives nothing back: leases expire instead, so a worker that
//! reconnects within its lease keeps its jobs.

use crate::Services;
use crate::artifacts::ManifestEntry;
use crate::db::Claimed;
use crate::db::NewModel;
use crate::domain::{Dataset, Gang, Job, Metrics, TensorRecord};
use crate::error::{Error, Result};
use crate::notifier::Notification;
use heirloom_core::{Claim, Origin, TensorInfo, TensorStatus, check_manifest, verify_claims};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

/// How often an idle worker's task looks for work on its own (a retried job's backoff
/// ends without a notification).
const CLAIM_POLL: Duration = Duration::from_millis(500);
/// How often each replica looks for expired leases.
const EXPIRY_SCAN: Duration = Duration::from_millis(500);
/// How often a worker's task records that the worker is still connected.
const SEEN_EVERY: Duration = Duration::from_secs(5);
/// A worker seen this recently counts as connected (to some replica): a few refreshes,
/// so that a slow database round does not make it vanish.
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(15);

/// A job leased to a worker (or the ranks it hosts of one), with the files it needs.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub job: Job,
    /// For a job on several ranks: all of them, and where they meet.
    pub gang: Option<Gang>,
    /// The worker the assignment is for: it runs the gang's ranks placed on it.
    pub worker_id: Uuid,
    pub dataset: Option<Dataset>,
    /// Each parent's id and manifest, in the order of the job's spec.
    pub parents: Vec<(Uuid, Vec<ManifestEntry>)>,
    pub checkpoint_every: u64,
    pub collective_timeout: Duration,
}

/// What a worker reports it produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub metrics: Option<Metrics>,
    pub tensors: Vec<ClaimedTensor>,
}

/// One tensor as the worker describes it; the origin is (model id, tensor name).
#[derive(Debug, Clone)]
pub struct ClaimedTensor {
    pub info: TensorInfo,
    pub sha256: String,
    pub status: TensorStatus,
    pub origin: Option<(Uuid, String)>,
}

pub fn assignments(services: Services, worker_id: Uuid) -> impl Stream<Item = Result<Assignment>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut wake = services.notifier.subscribe();
        let _connected = services.metrics.worker_connected();
        tracing::info!(worker_id = %worker_id, "worker connected");
        let mut last_seen: Option<std::time::Instant> = None;
        // Ranks placed here by another worker's claim: looked for when told so, and on
        // every poll (a notification may be lost).
        let mut look_for_ranks = true;
        'serve: loop {
            if last_seen.is_none_or(|at| at.elapsed() >= SEEN_EVERY) {
                match services.db.mark_worker_seen(worker_id).await {
                    Ok(()) => last_seen = Some(std::time::Instant::now()),
                    Err(err) => {
                        tracing::warn!(worker_id = %worker_id, error = %err, "could not record the worker as seen")
                    }
                }
            }
            if look_for_ranks {
                match deliver_ranks(&services, worker_id).await {
                    Ok(delivered) => {
                        look_for_ranks = false;
                        for assignment in delivered {
                            tracing::info!(job_id = %assignment.job.id, worker_id = %worker_id, "gang ranks delivered");
                            if sender.send(Ok(assignment)).await.is_err() {
                                break 'serve;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(worker_id = %worker_id, error = %err, "rank delivery failed")
                    }
                }
            }
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
                _ = services.stopping.cancelled() => {
                    // `try_send`: a worker that reads nothing holds up no drain.
                    let stopping = Error::Unavailable("the coordinator is stopping; reconnect".into());
                    let _ = sender.try_send(Err(stopping));
                    break;
                }
                mine = wait_for_room_or_jobs(&mut wake, worker_id) => look_for_ranks |= mine,
                _ = tokio::time::sleep(CLAIM_POLL) => look_for_ranks = true,
            }
        }
        // Its leases stay: a worker cut off briefly reconnects and goes on; one that
        // does not come back loses them when they expire. Until it is seen again, gangs
        // are not placed on it, and a gang that loses a rank here names it.
        if let Err(err) = services.db.mark_worker_disconnected(worker_id).await {
            tracing::warn!(worker_id = %worker_id, error = %err, "could not record the worker as disconnected");
        }
        tracing::info!(worker_id = %worker_id, "worker disconnected");
    });
    ReceiverStream::new(receiver)
}

/// Takes back the jobs of workers whose leases expired, every `EXPIRY_SCAN`, until
/// `shutdown`. Every replica runs one; they never take back the same job twice.
pub async fn expire_leases(services: Services, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        match services.db.expire_leases(&services.policy).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(count, "leases expired; jobs taken back"),
            Err(err) => tracing::warn!(error = %err, "could not scan for expired leases"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_SCAN) => {}
        }
    }
}

async fn claim(services: &Services, worker_id: Uuid) -> Result<Option<Assignment>> {
    let claimed = services
        .db
        .claim_job(worker_id, services.policy.lease, CONNECTED_WITHIN)
        .await?;
    match claimed {
        Some(claimed) => Ok(Some(assignment(services, worker_id, claimed).await?)),
        None => Ok(None),
    }
}

/// The assignments for the gang ranks other workers' claims placed on this one.
async fn deliver_ranks(services: &Services, worker_id: Uuid) -> Result<Vec<Assignment>> {
    let mut assignments = Vec::new();
    for claimed in services.db.deliver_ranks(worker_id).await? {
        assignments.push(assignment(services, worker_id, claimed).await?);
    }
    Ok(assignments)
}

async fn assignment(services: &Services, worker_id: Uuid, claimed: Claimed) -> Result<Assignment> {
    let Claimed { job, gang } = claimed;
    let dataset = match job.spec.dataset_id {
        Some(id) => Some(services.db.dataset(id).await?),
        None => None,
    };
    let mut parents = Vec::new();
    for parent_id in &job.spec.parents {
        parents.push((*parent_id, services.db.manifest(*parent_id).await?));
    }
    Ok(Assignment {
        job,
        gang,
        worker_id,
        dataset,
        parents,
        checkpoint_every: services.policy.checkpoint_every,
        collective_timeout: services.policy.collective_timeout,
    })
}

/// Returns when a job may have become claimable or one of this worker's jobs ended
/// (`false`), or a gang placed ranks on this worker (`true`: deliver them; so is a lag,
/// in which that may have been missed). Another worker's ended job is no reason to look:
/// it freed room only there.
async fn wait_for_room_or_jobs(
    wake: &mut broadcast::Receiver<Notification>,
    worker_id: Uuid,
) -> bool {
    loop {
        match wake.recv().await {
            Ok(Notification::Jobs) => return false,
            Ok(Notification::WorkerFreed(id)) if id == worker_id => return false,
            Ok(Notification::RanksPlaced(id)) if id == worker_id => return true,
            Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// Checks a worker's output against its claims and the job's spec, and that its weights
/// are finite, then records the model, or fails the job with the reason and records
/// nothing.
pub async fn record_output(
    services: &Services,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
    output: Output,
) -> Result<Job> {
    let job = services.db.job(job_id).await?;
    match verify_output(services, &job, &output).await {
        Err(Error::InvalidArgument(reason)) => {
            let reason = format!("weights rejected: {reason}");
            tracing::warn!(job_id = %job_id, reason = %reason, "job output refused");
            services
                .db
                .fail_job(worker_id, job_id, attempt, &reason)
                .await
        }
        Err(err) => Err(err),
        Ok((manifest, tensors)) => {
            // Reads every tensor once: to hash the file, and to refuse NaN and ±inf.
            let digest = services
                .artifacts
                .canonical_digest("output.tensors", &manifest)
                .await;
            let (weights_sha256, weights_bytes) = match digest {
                Ok(digest) => digest,
                // Retrying cannot help: record why, instead of leaving the job to loop.
                Err(err) => {
                    let reason = match err {
                        Error::InvalidArgument(reason) => format!("weights rejected: {reason}"),
                        err => format!("weights could not be assembled: {err}"),
                    };
                    tracing::warn!(job_id = %job_id, reason = %reason, "job output refused");
                    return services
                        .db
                        .fail_job(worker_id, job_id, attempt, &reason)
                        .await;
                }
            };
            let model = NewModel {
                id: Uuid::new_v4(),
                weights_bytes,
                weights_sha256,
                metrics: output.metrics,
                tensors,
            };
            let job = match services
                .db
                .succeed_job(worker_id, job_id, attempt, &model)
                .await
            {
                Ok(job) => job,
                // The model's name was taken meanwhile (by an import): a retry would
                // meet the same refusal.
                Err(Error::AlreadyExists(reason)) => {
                    return services
                        .db
                        .fail_job(worker_id, job_id, attempt, &reason)
                        .await;
                }
                Err(err) => return Err(err),
            };
            tracing::info!(job_id = %job_id, model_id = %model.id, "job succeeded");
            Ok(job)
        }
    }
}

/// Checks the claimed tensors against the architecture and the store (each one's blob
/// was verified against its hash when it was uploaded), and every provenance claim
/// against the job's plan and the parents' stored tensor hashes; returns the manifest
/// and the tensors' records. Any failure is an `InvalidArgument` that fails the job.
async fn verify_output(
    services: &Services,
    job: &Job,
    output: &Output,
) -> Result<(Vec<ManifestEntry>, Vec<TensorRecord>)> {
    let infos: Vec<TensorInfo> = output.tensors.iter().map(|t| t.info.clone()).collect();
    check_manifest("output.tensors", &infos, &job.spec.architecture)?;
    let manifest: Vec<ManifestEntry> = output
        .tensors
        .iter()
        .map(|claimed| ManifestEntry {
            info: claimed.info.clone(),
            sha256: claimed.sha256.clone(),
        })
        .collect();
    services
        .artifacts
        .check_stored("output.tensors", &manifest)
        .await?;
    let actual: HashMap<String, (String, String)> = output
        .tensors
        .iter()
        .map(|t| {
            (
                t.info.name.clone(),
                (t.sha256.clone(), t.info.dtype.clone()),
            )
        })
        .collect();
    let mut parent_hashes = Vec::new();
    for parent_id in &job.spec.parents {
        parent_hashes.push(services.db.tensor_hashes(*parent_id).await?);
    }
    let parents = &job.spec.parents;
    let claims = output
        .tensors
        .iter()
        .map(|claimed| {
            let origin = match &claimed.origin {
                None => None,
                Some((model_id, tensor)) => {
                    let parent = parents.iter().position(|id| id == model_id).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "output.tensors: tensor {}: origin model {model_id} is not a parent of this job",
                            claimed.info.name
                        ))
                    })?;
                    Some(Origin {
                        parent,
                        tensor: tensor.clone(),
                    })
                }
            };
            Ok(Claim {
                name: claimed.info.name.clone(),
                sha256: claimed.sha256.clone(),
                status: claimed.status,
                origin,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    verify_claims(
        &job.spec.tensors,
        job.spec.adjustment,
        &actual,
        &claims,
        &parent_hashes,
    )?;
    let mut manifest = manifest;
    let mut records = Vec::new();
    for claimed in &output.tensors {
        records.push(TensorRecord {
            name: claimed.info.name.clone(),
            sha256: claimed.sha256.clone(),
            dtype: claimed.info.dtype.clone(),
            shape: claimed.info.shape.iter().map(|&d| d as u64).collect(),
            status: claimed.status,
            origin: claimed.origin.clone(),
        });
    }
    manifest.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok((manifest, records))
}
