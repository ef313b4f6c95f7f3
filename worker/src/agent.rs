//! The worker's conversation with the coordinator: connect out, register, take one
//! assignment at a time from the stream, train it on a blocking thread while progress
//! flows back, and complete it. Reconnects by itself when the coordinator goes away.

use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::train::{self, Blob, Device, Progress, TrainingJob, Weights};
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use heirloom_spec::{
    Adjustment, Architecture, HashedTensor, Origin, TensorPlan, TensorStatus, tensor_hashes,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Runs until the process is stopped.
pub async fn run(config: Config) -> Result<()> {
    train::set_threads(config.threads);
    let device = train::pick_device(&config.device)?;
    let mut worker_id: Option<String> = None;
    loop {
        match serve(&config, device, &mut worker_id).await {
            Ok(()) => tracing::info!("assignment stream closed; reconnecting"),
            Err(err) => tracing::warn!(error = %err, "lost the coordinator; reconnecting"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn serve(config: &Config, device: Device, worker_id: &mut Option<String>) -> Result<()> {
    let channel = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|err| Error::InvalidJob(format!("--coordinator: {err}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        // Large flow-control windows: blobs stream at loopback speed, not 64 KiB at a time.
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .connect()
        .await?;
    let cache = Cache::open(&config.cache, channel.clone())?;
    let mut client = WorkerServiceClient::new(channel);
    let id = match worker_id.clone() {
        Some(id) => id,
        None => register(&mut client, config, device).await?,
    };
    *worker_id = Some(id.clone());
    let request = pb::StreamAssignmentsRequest {
        worker_id: id.clone(),
    };
    let mut assignments = match client.stream_assignments(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == Code::NotFound => {
            *worker_id = None; // the coordinator forgot us: register again
            return Err(status.into());
        }
        Err(status) => return Err(status.into()),
    };
    tracing::info!(worker_id = %id, "waiting for assignments");
    while let Some(assignment) = assignments.message().await? {
        run_assignment(&mut client, &cache, device, &id, assignment).await?;
    }
    Ok(())
}

async fn register(
    client: &mut WorkerServiceClient<Channel>,
    config: &Config,
    device: Device,
) -> Result<String> {
    let devices = train::devices(device)
        .into_iter()
        .map(|(name, memory_bytes)| pb::Device { name, memory_bytes })
        .collect();
    let response = client
        .register_worker(pb::RegisterWorkerRequest {
            name: config.name.clone(),
            devices,
            labels: Default::default(),
        })
        .await?
        .into_inner();
    tracing::info!(worker_id = %response.worker_id, "registered");
    Ok(response.worker_id)
}

async fn run_assignment(
    client: &mut WorkerServiceClient<Channel>,
    cache: &Cache,
    device: Device,
    worker_id: &str,
    assignment: pb::Assignment,
) -> Result<()> {
    let job_id = assignment.job_id.clone();
    let attempt = assignment.attempt;
    tracing::info!(job_id = %job_id, attempt, "job started");
    let output = cache
        .staging()
        .join(format!("{job_id}-{attempt}.safetensors"));
    let report = Reporter {
        client: client.clone(),
        worker_id: worker_id.to_string(),
        job_id: job_id.clone(),
        attempt,
    };
    let job = match training_job(cache, &assignment).await {
        Ok(job) => job,
        Err(err) => {
            return report
                .complete(
                    pb::complete_job_request::Result::Error(err.to_string()),
                    &output,
                )
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
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_sender, mut progress) = watch::channel(Progress::default());
    let training = {
        let (job, cancel, output) = (job.clone(), cancel.clone(), output.clone());
        tokio::task::spawn_blocking(move || {
            train::train(&job, device, &output, &cancel, |p| {
                let _ = progress_sender.send(p.clone());
            })
        })
    };
    tokio::pin!(training);

    // Forward the latest progress until training ends; each report's answer says
    // whether the job was cancelled.
    let mut last_reported = None;
    let result = loop {
        tokio::select! {
            joined = &mut training => break joined.unwrap_or_else(|err| {
                Err(Error::InvalidJob(format!("training panicked: {err}")))
            }),
            changed = progress.changed() => {
                if changed.is_err() {
                    continue;
                }
                let latest = progress.borrow_and_update().clone();
                last_reported = Some(latest.clone());
                match report.progress(latest).await {
                    Ok(true) => cancel.store(true, Ordering::Relaxed),
                    Ok(false) => {}
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        tracing::warn!(job_id = %job_id, %status, "lease lost; stopping");
                        cancel.store(true, Ordering::Relaxed);
                    }
                    Err(status) => tracing::warn!(job_id = %job_id, %status, "progress report failed"),
                }
            }
        }
    };
    let latest = progress.borrow().clone();
    if result.is_ok() && last_reported.is_some() && last_reported.as_ref() != Some(&latest) {
        // The last epoch's figures, so watchers see the end of training.
        let _ = report.progress(latest).await;
    }
    let result = match result {
        Err(Error::Cancelled) => {
            tracing::info!(job_id = %job_id, "job cancelled; stopped");
            let _ = tokio::fs::remove_file(&output).await;
            return Ok(());
        }
        Ok(metrics) => pb::complete_job_request::Result::Output(
            job_output(cache, &output, metrics, &assignment, &job).await?,
        ),
        Err(err) => {
            tracing::warn!(job_id = %job_id, error = %err, "job failed");
            pb::complete_job_request::Result::Error(err.to_string())
        }
    };
    report.complete(result, &output).await
}

/// Speaks for one leased job: progress and completion, with its fencing token.
struct Reporter {
    client: WorkerServiceClient<Channel>,
    worker_id: String,
    job_id: String,
    attempt: u32,
}

impl Reporter {
    /// Returns whether the job was cancelled.
    async fn progress(&self, progress: Progress) -> Result<bool, tonic::Status> {
        let request = pb::ReportProgressRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            progress: Some((&progress).into()),
        };
        let response = self.client.clone().report_progress(request).await?;
        Ok(response.get_ref().cancelled)
    }

    async fn complete(
        &self,
        result: pb::complete_job_request::Result,
        output: &Path,
    ) -> Result<()> {
        let request = pb::CompleteJobRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            result: Some(result),
        };
        match self.client.clone().complete_job(request).await {
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
        let mut blobs = Vec::new();
        for tensor in &parent.tensors {
            blobs.push(Blob {
                name: tensor.name.clone(),
                dtype: tensor.dtype.clone(),
                shape: tensor.shape.iter().map(|&d| d as i64).collect(),
                sha256: tensor.sha256.clone(),
                path: cache.fetch(&tensor.sha256).await?,
            });
        }
        parents.push(Weights::Blobs(blobs));
    }
    let dataset = match assignment.dataset_sha256.as_str() {
        "" => None,
        sha256 => Some(cache.fetch(sha256).await?),
    };
    let program = match &architecture {
        Architecture::Torchscript(script) => Some(cache.fetch(&script.program_sha256).await?),
        _ => None,
    };
    Ok(TrainingJob {
        architecture,
        hyperparameters,
        tensors,
        parents,
        adjustment,
        dataset,
        program,
    })
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
