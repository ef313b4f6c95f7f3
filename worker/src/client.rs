//! The worker's calls about one leased job, made with its fencing token: progress,
//! checkpoints and completion. Calls that fail because the coordinator is away are
//! retried for as long as the lease could last, and all of a job's calls back off
//! together with gRPC's connection backoff (`heirloom_core::backoff::retry_delay`: 1 s,
//! then ×1.6 up to 120 s, ±20 %): a coordinator that comes back is not flooded.
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
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// Speaks for one leased job with its fencing token: progress, checkpoints and
/// completion. Calls that fail because the coordinator is away are retried for as long
/// as the lease could last. Its calls share one backoff: once one fails to reach the
/// coordinator, the agent holds progress reports and checkpoints until [`Reporter::ready`],
/// and a retried call waits as long (a completion's first try goes at once: it is one
/// try a job).
pub(crate) struct Reporter {
    client: WorkerServiceClient<Connection>,
    worker_id: String,
    pub(crate) job_id: String,
    attempt: u32,
    /// How long the lease lasts: a call is not retried past it.
    patience: Duration,
    pace: Mutex<Pace>,
}

/// How the job's calls back off: the failures in a row to reach the coordinator, and
/// when the next call may go.
#[derive(Debug, Default)]
struct Pace {
    failures: u32,
    next_try: Option<Instant>,
}

impl Pace {
    /// Counts a failed call: returns how long the next one waits, or `None` when the
    /// coordinator answered (a refusal is an answer), which ends the backoff.
    fn failed(&mut self, status: &tonic::Status) -> Option<Duration> {
        if !is_transient(status) {
            *self = Pace::default();
            return None;
        }
        self.failures += 1;
        let delay = backoff::retry_delay(self.failures);
        self.next_try = Some(Instant::now() + delay);
        Some(delay)
    }
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
    /// Speaks for attempt `attempt` at job `job_id`, retrying for up to `patience` (the
    /// lease).
    pub(crate) fn new(
        client: WorkerServiceClient<Connection>,
        worker_id: &str,
        job_id: &str,
        attempt: u32,
        patience: Duration,
    ) -> Reporter {
        Reporter {
            client,
            worker_id: worker_id.to_string(),
            job_id: job_id.to_string(),
            attempt,
            patience,
            pace: Mutex::default(),
        }
    }

    /// Waits until the next call may go: at once, unless the job's last call failed to
    /// reach the coordinator; then until its backoff has passed.
    pub(crate) async fn ready(&self) {
        let next_try = self.pace.lock().expect("not poisoned").next_try;
        if let Some(next_try) = next_try {
            tokio::time::sleep_until(next_try).await;
        }
    }

    /// How long the job's calls are still backing off, if they are.
    pub(crate) fn retry_in(&self) -> Option<Duration> {
        let next_try = self.pace.lock().expect("not poisoned").next_try?;
        let left = next_try.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Counts `status` towards the backoff when the coordinator could not be reached;
    /// returns how long the job's next call waits, or `None` when the coordinator
    /// answered (which ends the backoff).
    pub(crate) fn failed(&self, status: &tonic::Status) -> Option<Duration> {
        self.pace.lock().expect("not poisoned").failed(status)
    }

    fn answered<T>(&self, result: &Result<T, tonic::Status>) -> Option<Duration> {
        match result {
            Ok(_) => {
                *self.pace.lock().expect("not poisoned") = Pace::default();
                None
            }
            Err(status) => self.failed(status),
        }
    }

    /// Retries `call` while it fails transiently, backing off, as long as the next try
    /// would still fall within `patience`.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(WorkerServiceClient<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.patience;
        loop {
            let result = call(self.client.clone()).await;
            match (self.answered(&result), &result) {
                (Some(delay), Err(status)) if Instant::now() + delay < deadline => {
                    tracing::warn!(job_id = %self.job_id, %status, retry_in = ?delay, "coordinator unreachable; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return result,
            }
        }
    }

    /// Reports once, without retrying (the next report carries newer figures anyway),
    /// but counting a failure towards the backoff that [`Reporter::ready`] waits out.
    /// Returns whether the job was cancelled.
    pub(crate) async fn progress(&self, progress: Progress) -> Result<bool, tonic::Status> {
        let request = pb::ReportProgressRequest {
            worker_id: self.worker_id.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            progress: Some((&progress).into()),
        };
        let response = self.client.clone().report_progress(request).await;
        self.answered(&response);
        Ok(response?.get_ref().cancelled)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_s_calls_back_off_while_the_coordinator_is_away_and_not_once_it_answers() {
        let mut pace = Pace::default();
        let away = tonic::Status::unavailable("tcp connect error");
        for unjittered in [1.0, 1.6, 2.56, 4.096] {
            let delay = pace.failed(&away).expect("backs off").as_secs_f64();
            assert!(
                (unjittered * 0.8..=unjittered * 1.2).contains(&delay),
                "{delay} s, not {unjittered} s ± 20 %"
            );
        }
        assert!(pace.next_try.is_some());
        // A refusal is an answer: the coordinator is back, and the next outage starts
        // from 1 s again.
        let refused = tonic::Status::failed_precondition("the lease was lost");
        assert_eq!(pace.failed(&refused), None);
        assert_eq!((pace.failures, pace.next_try), (0, None));
        let delay = pace.failed(&away).expect("backs off");
        assert!(delay <= Duration::from_millis(1200), "{delay:?}");
    }
}
