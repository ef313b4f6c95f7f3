//! The worker's conversation with the coordinator: connect out, register, take one
//! assignment at a time from the stream, train it on a blocking thread while progress
//! flows back, and complete it. Reconnects by itself when the coordinator goes away.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::train::{self, Device, Outcome, Progress, Start, TrainingJob};
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use heirloom_spec::{TrainablePatterns, sha256_hex};
use std::path::PathBuf;
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
        .connect()
        .await?;
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
        run_assignment(&mut client, config, device, &id, assignment).await?;
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
    config: &Config,
    device: Device,
    worker_id: &str,
    assignment: pb::Assignment,
) -> Result<()> {
    let job_id = assignment.job_id.clone();
    let attempt = assignment.attempt;
    tracing::info!(job_id = %job_id, attempt, "job started");
    let staged = format!("staging/{job_id}-{attempt}.safetensors");
    let output = config.artifacts.join(&staged);
    let cancel = Arc::new(AtomicBool::new(false));
    let (progress_sender, mut progress) = watch::channel(Progress::default());

    let training = match training_job(&config.artifacts, &assignment) {
        Ok(job) => {
            let cancel = cancel.clone();
            let output = output.clone();
            tokio::task::spawn_blocking(move || {
                train::train(&job, device, &output, &cancel, |p| {
                    let _ = progress_sender.send(p.clone());
                })
            })
        }
        Err(err) => tokio::task::spawn(async move { Err(err) }),
    };
    tokio::pin!(training);

    // Forward the latest progress until training ends; each report also asks whether
    // the job was cancelled.
    let report = |client: &mut WorkerServiceClient<Channel>, p: Progress| {
        let request = pb::ReportProgressRequest {
            worker_id: worker_id.to_string(),
            job_id: job_id.clone(),
            attempt,
            progress: Some(progress_to_proto(&p)),
        };
        let mut client = client.clone();
        async move { client.report_progress(request).await }
    };
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
                match report(client, latest).await {
                    Ok(response) if response.get_ref().cancelled => cancel.store(true, Ordering::Relaxed),
                    Ok(_) => {}
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
    if result.is_ok() && last_reported.as_ref() != Some(&latest) {
        // The last epoch's figures, so watchers see the end of training.
        let _ = report(client, latest).await;
    }
    let outcome = match result {
        Err(Error::Cancelled) => {
            tracing::info!(job_id = %job_id, "job cancelled; stopped");
            let _ = tokio::fs::remove_file(&output).await;
            return Ok(());
        }
        Err(Error::Transport(err)) => return Err(Error::Transport(err)),
        other => other,
    };
    let result = match outcome {
        Ok(outcome) => {
            pb::complete_job_request::Result::Output(job_output(&output, &staged, &outcome).await?)
        }
        Err(err) => {
            tracing::warn!(job_id = %job_id, error = %err, "job failed");
            pb::complete_job_request::Result::Error(err.to_string())
        }
    };
    let completed = client
        .complete_job(pb::CompleteJobRequest {
            worker_id: worker_id.to_string(),
            job_id: job_id.clone(),
            attempt,
            result: Some(result),
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
            tracing::info!(job_id = %job_id, state = ?state, "job completed");
        }
        Err(status) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(job_id = %job_id, %status, "result refused: the lease was lost");
            let _ = tokio::fs::remove_file(&output).await;
        }
        Err(status) => return Err(status.into()),
    }
    Ok(())
}

async fn job_output(
    path: &std::path::Path,
    staged: &str,
    outcome: &Outcome,
) -> Result<pb::JobOutput> {
    let bytes = tokio::fs::read(path).await?;
    Ok(pb::JobOutput {
        weights_path: staged.to_string(),
        weights_sha256: sha256_hex(&bytes),
        metrics: Some(pb::Metrics {
            holdout_accuracy: outcome.holdout_accuracy,
            final_loss: outcome.final_loss,
            train_accuracy: outcome.train_accuracy,
            steps: outcome.steps,
            steps_per_second: outcome.steps_per_second,
        }),
    })
}

/// The worker's view of an assignment; refuses one it cannot run.
fn training_job(artifacts: &std::path::Path, assignment: &pb::Assignment) -> Result<TrainingJob> {
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
    let parent = || -> Result<PathBuf> {
        if assignment.parent_weights_path.is_empty() {
            return Err(invalid("no parent weights"));
        }
        Ok(artifacts.join(&assignment.parent_weights_path))
    };
    let start = match spec.kind() {
        pb::JobKind::Train => Start::Scratch,
        pb::JobKind::Finetune => Start::Finetune {
            parent: parent()?,
            trainable: TrainablePatterns::from_checked(spec.trainable.clone()),
        },
        pb::JobKind::Transfer => Start::Transfer { parent: parent()? },
        pb::JobKind::Unspecified => return Err(invalid("no job kind")),
    };
    Ok(TrainingJob {
        architecture,
        hyperparameters,
        start,
        dataset: artifacts.join(&assignment.dataset_path),
    })
}

fn progress_to_proto(progress: &Progress) -> pb::Progress {
    pb::Progress {
        epoch: progress.epoch,
        epochs: progress.epochs,
        step: progress.step,
        total_steps: progress.total_steps,
        loss: progress.loss,
        accuracy: progress.accuracy,
        steps_per_second: progress.steps_per_second,
    }
}
