//! The worker's conversation with the coordinator: connect out, register, take
//! assignments from the stream (as many at once as the worker's concurrency), train each
//! on a blocking thread while progress, heartbeats and checkpoints flow back, and
//! complete it. Reconnects by itself, with backoff, when the coordinator goes away, and
//! keeps training meanwhile: its leases outlive a short outage. On a drain (SIGTERM) it
//! takes nothing new, checkpoints what runs and hands it back.

use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::train::{self, Blob, Control, Device, Position, Progress, Resume, TrainingJob, Weights};
use heirloom_proto::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use heirloom_spec::{
    Adjustment, Architecture, HashedTensor, Origin, TensorPlan, TensorStatus, backoff,
    tensor_hashes,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Reconnection delays: from the first to the largest, doubling, with jitter.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

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
}

/// Runs until the process is stopped, or until `drain` fires and every job it held has
/// been checkpointed and handed back.
pub async fn run(config: Config, drain: CancellationToken) -> Result<()> {
    train::set_threads(config.threads);
    let device = train::pick_device(&config.device)?;
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
        slots: Arc::new(tokio::sync::Semaphore::new(
            config.concurrency.max(1) as usize
        )),
    };
    let (id_sender, id) = watch::channel(None::<Registration>);
    let heartbeats = tokio::spawn(heartbeat(context.clone(), id.clone()));
    let mut jobs = JoinSet::new();
    let mut failures = 0;
    while !drain.is_cancelled() {
        match session(&config, &mut context, &id_sender, &mut jobs, &drain).await {
            Ok(()) => {
                tracing::info!("assignment stream closed; reconnecting");
                failures = 0;
            }
            // A token refused will be refused again: stop and say so.
            Err(Error::Rpc(status))
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) =>
            {
                return Err(Error::Rpc(status));
            }
            Err(err) => tracing::warn!(error = %err, "lost the coordinator; reconnecting"),
        }
        failures += 1;
        let delay = backoff::jittered(backoff::backoff(RECONNECT_FIRST, RECONNECT_MAX, failures));
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
/// stream ends or a drain begins.
async fn session(
    config: &Config,
    context: &mut Context,
    id: &watch::Sender<Option<Registration>>,
    jobs: &mut JoinSet<()>,
    drain: &CancellationToken,
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
            concurrency: config.concurrency,
            // A worker coming back keeps its id, and so its leases.
            worker_id: id
                .borrow()
                .as_ref()
                .map(|known| known.worker_id.clone())
                .unwrap_or_default(),
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
    loop {
        let assignment = tokio::select! {
            _ = drain.cancelled() => return Ok(()),
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
            Err(status) => tracing::debug!(%status, "heartbeat failed"),
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
    let report = Reporter {
        client: context.client.clone(),
        worker_id: worker_id.to_string(),
        job_id: job_id.clone(),
        attempt,
        patience: context.lease,
    };
    let job = match training_job(&context.cache, &assignment).await {
        Ok(job) => job,
        // A bad assignment fails for good; a download cut short (the coordinator
        // restarting mid-stream) is worth another attempt.
        Err(err) => {
            return report
                .complete_with(failure(&err), err.is_retryable(), &output)
                .await;
        }
    };
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
    let training = {
        let (job, control, output, device) =
            (job.clone(), control.clone(), output.clone(), context.device);
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

    // Forward the latest progress and every checkpoint until training ends; each
    // report's answer says whether the job was cancelled.
    let mut last_reported = None;
    let result = loop {
        tokio::select! {
            joined = &mut training => break joined.unwrap_or_else(|err| {
                Err(Error::InvalidJob(format!("training panicked: {err}")))
            }),
            Some((mut path, mut position)) = checkpoints.recv() => {
                // Only the newest checkpoint matters: older ones still waiting are dropped.
                while let Ok((newer_path, newer_position)) = checkpoints.try_recv() {
                    let _ = tokio::fs::remove_file(&path).await;
                    (path, position) = (newer_path, newer_position);
                }
                if let Err(err) = save_checkpoint(context, &report, &path, position).await {
                    tracing::warn!(job_id = %job_id, error = %err, "checkpoint not saved");
                }
            }
            changed = progress.changed() => {
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
                    Err(status) => tracing::warn!(job_id = %job_id, %status, "progress report failed"),
                }
            }
        }
    };
    // A checkpoint made on the way out (a drain) is saved before the job is handed back.
    while let Ok((path, position)) = checkpoints.try_recv() {
        if let Err(err) = save_checkpoint(context, &report, &path, position).await {
            tracing::warn!(job_id = %job_id, error = %err, "checkpoint not saved");
        }
    }
    let latest = progress.borrow().clone();
    if result.is_ok() && last_reported.is_some() && last_reported.as_ref() != Some(&latest) {
        // The last epoch's figures, so watchers see the end of training.
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
            match job_output(&context.cache, &output, metrics, &assignment, &job).await {
                Ok(output) => (pb::complete_job_request::Result::Output(output), false),
                Err(err) => (failure(&err), err.is_retryable()),
            }
        }
        Err(err) => {
            tracing::warn!(job_id = %job_id, error = %err, "attempt failed");
            (failure(&err), err.is_retryable())
        }
    };
    report.complete_with(outcome, retryable, &output).await
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
    let bytes = bytes::Bytes::from(tokio::fs::read(path).await?);
    let _ = tokio::fs::remove_file(path).await;
    let hashes =
        tensor_hashes("checkpoint", &bytes).map_err(|err| Error::InvalidJob(err.to_string()))?;
    let blobs: Vec<(String, bytes::Bytes)> = hashes
        .iter()
        .map(|t| (t.sha256.clone(), bytes.slice(t.range.clone())))
        .collect();
    context.cache.upload(&blobs).await?;
    let checkpoint = pb::Checkpoint {
        step: position.step,
        loss_sum: position.loss_sum,
        correct: position.correct,
        tensors: hashes.into_iter().map(pb::ManifestTensor::from).collect(),
    };
    report.checkpoint(checkpoint).await?;
    tracing::info!(job_id = %report.job_id, step = position.step, "checkpoint saved");
    Ok(())
}

/// Speaks for one leased job with its fencing token: progress, checkpoints and
/// completion. Calls that fail because the coordinator is away are retried for as long
/// as the lease could last.
struct Reporter {
    client: WorkerServiceClient<Connection>,
    worker_id: String,
    job_id: String,
    attempt: u32,
    patience: Duration,
}

/// Whether a failed call might succeed once the coordinator (or its database) is back.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

impl Reporter {
    /// Retries `call` while it fails transiently, for up to `patience`.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(WorkerServiceClient<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut failures = 0;
        loop {
            match call(self.client.clone()).await {
                Err(status) if is_transient(&status) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(job_id = %self.job_id, %status, "coordinator unreachable; retrying");
                    failures += 1;
                    let delay = backoff::backoff(RECONNECT_FIRST, RECONNECT_MAX, failures);
                    tokio::time::sleep(backoff::jittered(delay)).await;
                }
                other => return other,
            }
        }
    }

    /// Returns whether the job was cancelled.
    async fn progress(&self, progress: Progress) -> Result<bool, tonic::Status> {
        let request = pb::ReportProgressRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            progress: Some((&progress).into()),
        };
        // Progress is not retried: the next report carries newer figures anyway.
        let response = self.client.clone().report_progress(request).await?;
        Ok(response.get_ref().cancelled)
    }

    async fn checkpoint(&self, checkpoint: pb::Checkpoint) -> Result<(), tonic::Status> {
        let request = pb::SaveCheckpointRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            checkpoint: Some(checkpoint),
        };
        self.retrying(|mut client| {
            let request = request.clone();
            async move { client.save_checkpoint(request).await }
        })
        .await?;
        Ok(())
    }

    async fn complete_with(
        &self,
        result: pb::complete_job_request::Result,
        retryable: bool,
        output: &Path,
    ) -> Result<()> {
        let request = pb::CompleteJobRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            result: Some(result),
            retryable,
        };
        let completed = self
            .retrying(|mut client| {
                let request = request.clone();
                async move { client.complete_job(request).await }
            })
            .await;
        match completed {
            Ok(response) => {
                let state = response
                    .get_ref()
                    .job
                    .as_ref()
                    .map(|job| job.state())
                    .unwrap_or_default();
                tracing::info!(job_id = %self.job_id, state = ?state, "job completed");
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::warn!(job_id = %self.job_id, %status, "result refused: the lease was lost");
            }
            Err(status) => return Err(status.into()),
        }
        // The coordinator has copied what it keeps; a refused result is not kept.
        let _ = tokio::fs::remove_file(output).await;
        Ok(())
    }
}

/// The worker's view of an assignment, with every blob it needs in the local cache;
/// refuses one it cannot run.
async fn training_job(cache: &Cache, assignment: &pb::Assignment) -> Result<TrainingJob> {
    let invalid = |what: &str| Error::InvalidJob(format!("assignment: {what}"));
    let spec = assignment.spec.as_ref().ok_or_else(|| invalid("no spec"))?;
    let architecture = assignment
        .architecture
        .as_ref()
        .ok_or_else(|| invalid("no architecture"))?
        .to_spec("architecture")
        .map_err(|err| invalid(&err.to_string()))?;
    let hyperparameters = spec
        .hyperparameters
        .unwrap_or_default()
        .resolve("hyperparameters")
        .map_err(|err| invalid(&err.to_string()))?;
    let tensors = assignment
        .tensors
        .iter()
        .map(|tensor| {
            let origin = usize::try_from(tensor.parent_index)
                .ok()
                .map(|parent| Origin {
                    parent,
                    tensor: tensor.source_name.clone(),
                });
            TensorPlan {
                name: tensor.name.clone(),
                origin,
                trainable: tensor.trainable,
            }
        })
        .collect();
    let adjustment = assignment
        .adjustment
        .and_then(|a| a.kind)
        .map(|kind| match kind {
            pb::adjustment::Kind::Interpolate(alpha) => Adjustment::Interpolate { alpha },
            pb::adjustment::Kind::Scale(factor) => Adjustment::Scale { factor },
            pb::adjustment::Kind::WiseFt(alpha) => Adjustment::WiseFt { alpha },
        });
    let mut parents = Vec::new();
    for parent in &assignment.parents {
        parents.push(fetch_weights(cache, &parent.tensors).await?);
    }
    let dataset = match assignment.dataset_sha256.as_str() {
        "" => None,
        sha256 => Some(cache.fetch(sha256).await?),
    };
    let program = match &architecture {
        Architecture::Torchscript(script) => Some(cache.fetch(&script.program_sha256).await?),
        _ => None,
    };
    let resume = match &assignment.checkpoint {
        Some(checkpoint) => Some(Resume {
            weights: fetch_weights(cache, &checkpoint.tensors).await?,
            position: Position {
                step: checkpoint.step,
                loss_sum: checkpoint.loss_sum,
                correct: checkpoint.correct,
            },
        }),
        None => None,
    };
    Ok(TrainingJob {
        architecture,
        hyperparameters,
        tensors,
        parents,
        adjustment,
        dataset,
        program,
        resume,
        checkpoint_every: assignment.checkpoint_every,
    })
}

/// Weights tensor by tensor, every blob in the local cache.
async fn fetch_weights(cache: &Cache, tensors: &[pb::ManifestTensor]) -> Result<Weights> {
    let mut blobs = Vec::new();
    for tensor in tensors {
        blobs.push(Blob {
            name: tensor.name.clone(),
            dtype: tensor.dtype.clone(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            sha256: tensor.sha256.clone(),
            path: cache.fetch(&tensor.sha256).await?,
        });
    }
    Ok(Weights::Blobs(blobs))
}

/// Uploads the tensors the coordinator lacks, then describes every tensor: its hash,
/// dtype, shape and provenance claim.
async fn job_output(
    cache: &Cache,
    path: &Path,
    metrics: Option<train::Metrics>,
    assignment: &pb::Assignment,
    job: &TrainingJob,
) -> Result<pb::JobOutput> {
    let bytes = bytes::Bytes::from(tokio::fs::read(path).await?);
    let hashes =
        tensor_hashes("weights", &bytes).map_err(|err| Error::InvalidJob(err.to_string()))?;
    let mut blobs = Vec::new();
    let mut tensors = Vec::new();
    for HashedTensor {
        info,
        sha256,
        range,
    } in hashes
    {
        let plan = job
            .tensors
            .iter()
            .find(|t| t.name == info.name)
            .ok_or_else(|| {
                Error::InvalidJob(format!("wrote {} which the plan lacks", info.name))
            })?;
        let (origin_model_id, origin_tensor) = match &plan.origin {
            Some(origin) => (
                assignment.parents[origin.parent].model_id.clone(),
                origin.tensor.clone(),
            ),
            None => (String::new(), String::new()),
        };
        let status = match plan.status(job.adjustment, &info.dtype) {
            TensorStatus::Inherited => pb::TensorStatus::Inherited,
            TensorStatus::Trained => pb::TensorStatus::Trained,
            TensorStatus::New => pb::TensorStatus::New,
            TensorStatus::Interpolated => pb::TensorStatus::Interpolated,
        };
        blobs.push((sha256.clone(), bytes.slice(range)));
        tensors.push(pb::TensorProvenance {
            name: info.name,
            sha256,
            status: status as i32,
            origin_model_id,
            origin_tensor,
            dtype: info.dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            ..Default::default()
        });
    }
    let moved = cache.upload(&blobs).await?;
    // What this worker made, it has: a fine-tune of it later downloads nothing.
    cache.keep(&blobs).await?;
    tracing::info!(job_id = %assignment.job_id, uploaded_bytes = moved, "weights uploaded");
    Ok(pb::JobOutput {
        metrics: metrics.as_ref().map(pb::Metrics::from),
        tensors,
    })
}
