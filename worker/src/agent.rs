//! The worker's conversation with the coordinator: connect out, register, take
//! assignments from the stream (as many at once as the worker's concurrency), train each
//! on a blocking thread while progress, heartbeats and checkpoints flow back, and
//! complete it. Reconnects by itself when the coordinator goes away, backing off as gRPC
//! connections do (`heirloom_core::backoff::retry_delay`), and keeps training meanwhile:
//! its leases outlive a short outage, and its reports wait out their own backoff without
//! holding training up. On a drain (SIGTERM) it takes nothing new, checkpoints what runs
//! and hands it back.
//!
//! It owns the session and the leases. It never builds a job or a result message from
//! files (`assignment.rs` does), and never retries a job's calls itself (`client.rs`
//! does); only `train/` touches libtorch.

use crate::assignment;
use crate::cache::Cache;
use crate::client::Reporter;
use crate::config::{Collective, Config};
use crate::error::{Error, Result};
use crate::train::collectives::Rendezvous;
use crate::train::{self, Control, Device, Position, Progress, TrainingJob};
use heirloom_client::connection::Connection;
use heirloom_core::backoff;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The jobs this worker holds: their fencing tokens, and how to stop them.
#[derive(Debug, Clone, Default)]
struct Held(Arc<Mutex<HashMap<String, (u32, Control)>>>);

impl Held {
    fn insert(&self, job_id: &str, attempt: u32, control: Control) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(job_id.to_string(), (attempt, control));
    }

    /// Forgets the job, unless a later attempt at it has taken its place.
    fn remove(&self, job_id: &str, attempt: u32) {
        let mut held = self.0.lock().expect("not poisoned");
        if held
            .get(job_id)
            .is_some_and(|(held_attempt, _)| *held_attempt == attempt)
        {
            held.remove(job_id);
        }
    }

    fn leases(&self) -> Vec<pb::JobLease> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(job_id, (attempt, _))| pb::JobLease {
                job_id: job_id.clone(),
                attempt: *attempt,
            })
            .collect()
    }

    fn control(&self, job_id: &str) -> Option<Control> {
        let held = self.0.lock().expect("not poisoned");
        held.get(job_id).map(|(_, control)| control.clone())
    }

    fn drain_all(&self) {
        for (_, control) in self.0.lock().expect("not poisoned").values() {
            control.drain();
        }
    }
}

/// Who this worker is to the coordinator, once registered.
#[derive(Debug, Clone)]
struct Registration {
    worker_id: String,
    lease: Duration,
}

/// What every job task shares.
#[derive(Clone)]
struct Context {
    client: WorkerServiceClient<Connection>,
    cache: Cache,
    device: Device,
    held: Held,
    /// How long a lease lasts: reports are retried this long before giving up.
    lease: Duration,
    /// One permit per job the worker runs at once. The coordinator counts a cancelled
    /// job as gone at once, so the next may arrive while the cancelled one is still
    /// stopping (up to a second): it waits here, its lease renewed, not on the device.
    slots: Arc<tokio::sync::Semaphore>,
    /// Where this worker's ranks of multi-rank jobs meet their peers; `None` when it
    /// takes none.
    collective: Option<Collective>,
}

/// Runs until the process is stopped, or until `drain` fires and every job it held has
/// been checkpointed and handed back.
pub async fn run(config: Config, drain: CancellationToken) -> Result<()> {
    train::set_threads(config.threads);
    let device = train::pick_device(&config.device)?;
    let collective = config.collective().map_err(Error::InvalidJob)?;
    // One channel for the process: it reconnects by itself after the coordinator returns.
    let channel = config
        .connect
        .connect_lazy()
        .map_err(|err| Error::InvalidJob(err.to_string()))?;
    let mut context = Context {
        client: WorkerServiceClient::new(channel.clone()),
        cache: Cache::open(&config.cache_dir(), channel)?,
        device,
        held: Held::default(),
        lease: Duration::from_secs(30),
        slots: Arc::new(tokio::sync::Semaphore::new(config.concurrency as usize)),
        collective,
    };
    let (id_sender, id) = watch::channel(None::<Registration>);
    let heartbeats = tokio::spawn(heartbeat(context.clone(), id.clone()));
    let mut jobs = JoinSet::new();
    // Tries since an assignment stream last opened: the reconnection backs off as gRPC
    // connections do, so that workers coming back together do not flood a coordinator.
    let mut failures = 0;
    while !drain.is_cancelled() {
        let ended = session(
            &config,
            &mut context,
            &id_sender,
            &mut jobs,
            &drain,
            &mut failures,
        )
        .await;
        failures += 1;
        let delay = backoff::retry_delay(failures);
        match ended {
            Ok(()) => tracing::info!(retry_in = ?delay, "assignment stream closed; reconnecting"),
            // A token refused will be refused again: stop and say so.
            Err(Error::Rpc(status))
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) =>
            {
                return Err(Error::Rpc(status));
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "lost the coordinator; reconnecting")
            }
        }
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!(
        jobs = jobs.len(),
        "draining: checkpointing and handing back what runs"
    );
    context.held.drain_all();
    while jobs.join_next().await.is_some() {}
    heartbeats.abort();
    Ok(())
}

/// One connection's worth of work: (re-)register, then take assignments until the
/// stream ends or a drain begins. Sets `failures` to 0 once the stream opens: the
/// coordinator is back, and the next outage backs off from the first delay again.
async fn session(
    config: &Config,
    context: &mut Context,
    id: &watch::Sender<Option<Registration>>,
    jobs: &mut JoinSet<()>,
    drain: &CancellationToken,
    failures: &mut u32,
) -> Result<()> {
    let devices = train::devices(context.device)
        .into_iter()
        .map(|(name, memory_bytes)| pb::Device { name, memory_bytes })
        .collect();
    let registered = context
        .client
        .register_worker(pb::RegisterWorkerRequest {
            name: config.name.clone(),
            devices,
            labels: config.labels.iter().cloned().collect(),
            concurrency: Some(config.concurrency),
            // A worker coming back keeps its id, and so its leases.
            worker_id: id
                .borrow()
                .as_ref()
                .map(|known| known.worker_id.clone())
                .unwrap_or_default(),
            collective_address: context
                .collective
                .as_ref()
                .map(|c| c.address.clone())
                .unwrap_or_default(),
            collective_port: context
                .collective
                .as_ref()
                .map_or(0, |c| u32::from(c.store_port)),
        })
        .await?
        .into_inner();
    context.lease = Duration::from_secs(u64::from(registered.lease_seconds.max(1)));
    let worker_id = registered.worker_id;
    id.send_replace(Some(Registration {
        worker_id: worker_id.clone(),
        lease: context.lease,
    }));
    tracing::info!(worker_id = %worker_id, "registered; waiting for assignments");
    let mut assignments = context
        .client
        .stream_assignments(pb::StreamAssignmentsRequest {
            worker_id: worker_id.clone(),
        })
        .await?
        .into_inner();
    *failures = 0;
    loop {
        let assignment = tokio::select! {
            _ = drain.cancelled() => return Ok(()),
            // Reap each job's task as it ends, so `jobs` holds only what runs.
            Some(ended) = jobs.join_next() => {
                if let Err(err) = ended {
                    tracing::error!(error = %err, "a job's task panicked");
                }
                continue;
            }
            message = assignments.message() => match message? {
                Some(assignment) => assignment,
                None => return Ok(()),
            },
        };
        let control = Control::default();
        context
            .held
            .insert(&assignment.job_id, assignment.attempt, control.clone());
        let (context, worker_id) = (context.clone(), worker_id.clone());
        jobs.spawn(async move {
            let (job_id, attempt) = (assignment.job_id.clone(), assignment.attempt);
            let _slot = context.slots.clone().acquire_owned().await;
            if let Err(err) = run_assignment(&context, &worker_id, assignment, control).await {
                tracing::warn!(job_id = %job_id, error = %err, "job abandoned; its lease will expire");
            }
            context.held.remove(&job_id, attempt);
        });
    }
}

/// Renews the leases of every job this worker holds, three times per lease, and stops
/// the jobs the coordinator says are no longer this worker's (or were cancelled).
async fn heartbeat(context: Context, mut id: watch::Receiver<Option<Registration>>) {
    loop {
        let Some(Registration { worker_id, lease }) = id.borrow_and_update().clone() else {
            let _ = id.changed().await;
            continue;
        };
        tokio::time::sleep(lease / 3).await;
        let leases = context.held.leases();
        if leases.is_empty() {
            continue;
        }
        let request = pb::HeartbeatRequest { worker_id, leases };
        match context.client.clone().heartbeat(request).await {
            Ok(response) => {
                for job_id in response.into_inner().stop {
                    if let Some(control) = context.held.control(&job_id) {
                        tracing::warn!(job_id = %job_id, "lease lost or job cancelled; stopping");
                        control.cancel();
                    }
                }
            }
            // Not sooner, nor later: every lease/3 is what keeps the leases alive, and
            // is already slow enough not to flood a coordinator coming back.
            Err(status) => tracing::warn!(%status, retry_in = ?lease / 3, "heartbeat failed"),
        }
    }
}

async fn run_assignment(
    context: &Context,
    worker_id: &str,
    assignment: pb::Assignment,
    control: Control,
) -> Result<()> {
    let job_id = assignment.job_id.clone();
    let attempt = assignment.attempt;
    tracing::info!(job_id = %job_id, attempt, "job started");
    let output = context
        .cache
        .staging()
        .join(format!("{job_id}-{attempt}.safetensors"));
    let report = Reporter::new(
        context.client.clone(),
        worker_id,
        &job_id,
        attempt,
        context.lease,
    );
    let job = match assignment::training_job(&context.cache, &assignment).await {
        Ok(job) => job,
        // A bad assignment fails for good; a download cut short (the coordinator
        // restarting mid-stream) is worth another attempt.
        Err(err) => {
            return report
                .complete_with(failure(&err), err.is_retryable(), &output)
                .await;
        }
    };
    // One rank for a job on one; this worker's ranks of a gang, lowest first.
    let mut ranks = match rank_jobs(context, &job, assignment.gang.as_ref()) {
        Ok(ranks) => ranks,
        Err(err) => return report.complete_with(failure(&err), false, &output).await,
    };
    if ranks[0].rank != 0 {
        return run_member_ranks(context, &report, ranks, &control, &output).await;
    }
    let leader = ranks.remove(0);
    let (job, device) = (leader.job, leader.device);
    // The first report moves the job to running, and may already say it was cancelled.
    match report.progress(Progress::default()).await {
        Ok(true) => return Ok(()), // cancelled before it started
        Err(status) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(job_id = %job_id, %status, "lease lost before starting");
            return Ok(());
        }
        _ => {}
    }
    let (progress_sender, mut progress) = watch::channel(Progress::default());
    let (checkpoint_sender, mut checkpoints) = mpsc::unbounded_channel::<(PathBuf, Position)>();
    // This worker's other ranks train beside rank 0, and report nothing.
    let followers = spawn_ranks(ranks, &control, &output);
    let training = {
        let (job, control, output) = (job.clone(), control.clone(), output.clone());
        tokio::task::spawn_blocking(move || {
            train::train(
                &job,
                device,
                &output,
                &control,
                |p| {
                    let _ = progress_sender.send(p.clone());
                },
                |path, position| {
                    let _ = checkpoint_sender.send((path.to_path_buf(), position));
                },
            )
        })
    };
    tokio::pin!(training);

    // Forward the latest progress and the newest checkpoint until training ends; each
    // report's answer says whether the job was cancelled. While the job's calls back off
    // (the coordinator is away), training goes on: progress is only ever the latest
    // value and one checkpoint waits, the newest, so nothing here holds training up.
    let mut last_reported = None;
    // Only the newest checkpoint matters: one waiting is dropped when a newer one comes.
    let mut waiting = None;
    let result = loop {
        tokio::select! {
            joined = &mut training => break joined.unwrap_or_else(|err| {
                Err(Error::InvalidJob(format!("training panicked: {err}")))
            }),
            Some(newer) = checkpoints.recv() => supersede(&mut waiting, newer).await,
            () = report.ready(), if waiting.is_some() => {
                let (path, position) = waiting.take().expect("a checkpoint waits");
                if let Err(err) = save_checkpoint(context, &report, &path, position).await {
                    tracing::warn!(job_id = %job_id, error = %err, "checkpoint not saved");
                }
            }
            changed = async {
                report.ready().await;
                progress.changed().await
            } => {
                if changed.is_err() {
                    continue;
                }
                let latest = progress.borrow_and_update().clone();
                last_reported = Some(latest.clone());
                match report.progress(latest).await {
                    Ok(true) => control.cancel(),
                    Ok(false) => {}
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        tracing::warn!(job_id = %job_id, %status, "lease lost; stopping");
                        control.cancel();
                    }
                    Err(status) => tracing::warn!(job_id = %job_id, %status, retry_in = ?report.retry_in(), "progress report failed"),
                }
            }
        }
    };
    // The other ranks end with rank 0 (a collective of theirs fails once its group is
    // gone); had rank 0 succeeded, so had they.
    let (followed, drained) = join_ranks(followers).await;
    if let Some((path, _)) = drained {
        let _ = tokio::fs::remove_file(&path).await; // rank 0 checkpoints for the gang
    }
    let result = match (result, followed) {
        (Ok(_), Some(err)) => Err(err),
        (result, _) => result,
    };
    // A checkpoint made on the way out (a drain) is saved before the job is handed back.
    while let Ok(newer) = checkpoints.try_recv() {
        supersede(&mut waiting, newer).await;
    }
    if let Some((path, position)) = waiting
        && let Err(err) = save_checkpoint(context, &report, &path, position).await
    {
        tracing::warn!(job_id = %job_id, error = %err, "checkpoint not saved");
    }
    let latest = progress.borrow().clone();
    if result.is_ok()
        && last_reported.is_some()
        && last_reported.as_ref() != Some(&latest)
        && report.retry_in().is_none()
    {
        // The last epoch's figures, so watchers see the end of training (unless the
        // coordinator is away: the completion goes first, when it may).
        let _ = report.progress(latest).await;
    }
    let (outcome, retryable) = match result {
        Err(Error::Cancelled) => {
            tracing::info!(job_id = %job_id, "job cancelled or lost; stopped");
            let _ = tokio::fs::remove_file(&output).await;
            return Ok(());
        }
        Err(Error::Drained) => (
            pb::complete_job_request::Result::Release("the worker is draining".into()),
            false,
        ),
        Ok(metrics) => {
            match assignment::job_output(&context.cache, &output, metrics, &assignment, &job).await
            {
                Ok(output) => (pb::complete_job_request::Result::Output(output), false),
                Err(err) => (failure(&err), err.is_retryable()),
            }
        }
        Err(err) => {
            tracing::warn!(job_id = %job_id, error = %err, "attempt failed");
            settle_before_reporting(&err).await;
            (failure(&err), err.is_retryable())
        }
    };
    report.complete_with(outcome, retryable, &output).await
}

/// One rank this worker runs: the job as that rank sees it, and its device.
struct RankJob {
    rank: u32,
    job: TrainingJob,
    device: Device,
}

/// The ranks this worker runs of `job`, lowest first: the one rank of a single-rank job,
/// on the worker's device; or the gang's ranks placed here, each on its own device, all
/// meeting under the attempt's store prefix.
fn rank_jobs(
    context: &Context,
    job: &TrainingJob,
    gang: Option<&pb::Gang>,
) -> Result<Vec<RankJob>> {
    let Some(gang) = gang else {
        return Ok(vec![RankJob {
            rank: 0,
            job: job.clone(),
            device: context.device,
        }]);
    };
    let collective = context.collective.as_ref().ok_or_else(|| {
        Error::InvalidJob(
            "a multi-rank job reached a worker started with --collective-ports none".into(),
        )
    })?;
    if gang.ranks.is_empty() || gang.ranks.len() != gang.devices.len() {
        return Err(Error::InvalidJob(
            "assignment: the gang lists no ranks, or not one device per rank".into(),
        ));
    }
    let store_port = u16::try_from(gang.store_port).map_err(|_| {
        Error::InvalidJob(format!(
            "assignment: store port {} is not a port",
            gang.store_port
        ))
    })?;
    let mut ranks = gang
        .ranks
        .iter()
        .zip(&gang.devices)
        .map(|(&rank, device)| {
            let rendezvous = Rendezvous {
                store_host: gang.store_address.clone(),
                store_port,
                prefix: gang.store_prefix.clone(),
                rank: rank as usize,
                world_size: gang.world_size as usize,
                planned_world_size: gang.planned_world_size as usize,
                bind_host: collective.address.clone(),
                timeout: Duration::from_secs(u64::from(gang.timeout_seconds.max(1))),
            };
            Ok(RankJob {
                rank,
                job: TrainingJob {
                    ranks: Some(rendezvous),
                    ..job.clone()
                },
                device: train::named_device(device)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ranks.sort_by_key(|rank| rank.rank);
    Ok(ranks)
}

/// A rank training beside another that speaks for the gang, and the checkpoint it wrote
/// when it drained.
type RankTask = tokio::task::JoinHandle<(Result<()>, Option<(PathBuf, Position)>)>;

/// Trains `ranks` on blocking threads that report nothing (rank 0 speaks for the gang);
/// their weights files are not kept.
fn spawn_ranks(ranks: Vec<RankJob>, control: &Control, output: &Path) -> Vec<RankTask> {
    ranks
        .into_iter()
        .map(|RankJob { rank, job, device }| {
            let control = control.clone();
            let output = output.with_extension(format!("rank{rank}.safetensors"));
            tokio::task::spawn_blocking(move || {
                // Only a drain makes a rank other than 0 checkpoint.
                let mut drained = None;
                let trained = train::train(
                    &job,
                    device,
                    &output,
                    &control,
                    |_| {},
                    |path, at| {
                        drained = Some((path.to_path_buf(), at));
                    },
                );
                let _ = std::fs::remove_file(&output);
                (trained.map(|_| ()), drained)
            })
        })
        .collect()
}

/// Waits for every rank; the first error, if any, and the first drain checkpoint (the
/// others' files removed).
async fn join_ranks(ranks: Vec<RankTask>) -> (Option<Error>, Option<(PathBuf, Position)>) {
    let (mut first, mut checkpoint) = (None, None);
    for rank in ranks {
        let (ended, drained) = rank.await.unwrap_or_else(|err| {
            (
                Err(Error::InvalidJob(format!("training panicked: {err}"))),
                None,
            )
        });
        if let Err(err) = ended {
            first.get_or_insert(err);
        }
        if let Some((path, at)) = drained {
            match checkpoint {
                None => checkpoint = Some((path, at)),
                Some(_) => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
    }
    (first, checkpoint)
}

/// A worker hosting ranks of a gang but not rank 0: trains them, and reports only how
/// the attempt ended for them if it did not succeed (that ends it for every rank). On
/// a drain it checkpoints for the gang and hands it back.
async fn run_member_ranks(
    context: &Context,
    report: &Reporter,
    ranks: Vec<RankJob>,
    control: &Control,
    output: &Path,
) -> Result<()> {
    let (ended, drained) = join_ranks(spawn_ranks(ranks, control, output)).await;
    if let Some((path, position)) = drained {
        if matches!(ended, Some(Error::Drained)) {
            if let Err(err) = save_checkpoint(context, report, &path, position).await {
                tracing::warn!(job_id = %report.job_id, error = %err, "checkpoint not saved");
            }
        } else {
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
    match ended {
        // Done: its lease is still the gang's until rank 0 has completed the job (a rank
        // lease that lapses ends the attempt), so it is held, and heartbeats renew it,
        // until the coordinator says the job is over.
        None => {
            while !control.stopped() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        }
        Some(Error::Cancelled) => Ok(()),
        Some(Error::Drained) => {
            let release =
                pb::complete_job_request::Result::Release("the worker is draining".into());
            report.complete_with(release, false, output).await
        }
        Some(err) => {
            tracing::warn!(job_id = %report.job_id, error = %err, "rank failed");
            settle_before_reporting(&err).await;
            report
                .complete_with(failure(&err), err.is_retryable(), output)
                .await
        }
    }
}

/// A collective fails on every surviving rank the moment a peer dies. Each waits a
/// moment before reporting, so the coordinator has seen the dead peer's worker go and
/// records that rank as the one lost, not the first survivor to speak.
async fn settle_before_reporting(err: &Error) {
    if matches!(err, Error::Collective(_)) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Makes `newer` the checkpoint waiting to be saved, removing the file of the one it
/// supersedes.
async fn supersede(waiting: &mut Option<(PathBuf, Position)>, newer: (PathBuf, Position)) {
    if let Some((older, _)) = waiting.replace(newer)
        && waiting.as_ref().is_none_or(|(newer, _)| *newer != older)
    {
        let _ = tokio::fs::remove_file(&older).await;
    }
}

fn failure(err: &Error) -> pb::complete_job_request::Result {
    pb::complete_job_request::Result::Error(err.to_string())
}

/// Uploads the checkpoint's tensors the coordinator lacks (a frozen tensor is stored
/// already) and records it; the file is not kept.
async fn save_checkpoint(
    context: &Context,
    report: &Reporter,
    path: &Path,
    position: Position,
) -> Result<()> {
    let checkpoint = match assignment::checkpoint(&context.cache, path, position).await {
        Ok(checkpoint) => checkpoint,
        // Its upload could not reach the coordinator either: the job's calls back off.
        Err(Error::Rpc(status)) => {
            report.failed(&status);
            return Err(Error::Rpc(status));
        }
        Err(err) => return Err(err),
    };
    report.checkpoint(checkpoint).await?;
    tracing::info!(job_id = %report.job_id, step = position.step, "checkpoint saved");
    Ok(())
}
