//! The worker's calls about one leased job, made with its fencing token: progress,
//! checkpoints and completion. Calls that fail because the coordinator is away are
//! retried, with backoff, for as long as the lease could last.
//!
//! It sends messages it is given and never builds them from files (`assignment.rs` does),
//! and it neither registers nor heartbeats (`agent.rs` does).

use crate::error::Result;
use crate::train::Progress;
use heirloom_client::connection::Connection;
use heirloom_core::backoff;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// Delays between tries, for a call and for a reconnection alike: from the first to the
/// largest, doubling, with jitter.
pub(crate) const RECONNECT_FIRST: Duration = Duration::from_millis(200);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Speaks for one leased job with its fencing token: progress, checkpoints and
/// completion. Calls that fail because the coordinator is away are retried for as long
/// as the lease could last.
pub(crate) struct Reporter {
    pub(crate) client: WorkerServiceClient<Connection>,
    pub(crate) worker_id: String,
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) patience: Duration,
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
    pub(crate) async fn progress(&self, progress: Progress) -> Result<bool, tonic::Status> {
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

    pub(crate) async fn checkpoint(&self, checkpoint: pb::Checkpoint) -> Result<(), tonic::Status> {
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

    /// Completes the job with `result`, then removes its output file.
    pub(crate) async fn complete_with(
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
