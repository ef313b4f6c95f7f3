//! WorkerService: registration, heartbeats, checkpoints, the assignment stream, progress
//! and results, each checked against the caller's token owning the worker. Builds only
//! its own `*Response` messages (an assignment comes from `convert.rs`) and never speaks
//! SQL; what a result does is `dispatch`'s.

use super::convert::{self, Completion};
use crate::Services;
use crate::db::WorkerOffer;
use crate::dispatch;
use crate::domain::Caller;
use crate::domain::check_name;
use crate::error::{Error, Result};
use heirloom_core::{Invalid, limits};
use heirloom_proto::v1 as pb;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct WorkerApi(pub Services);

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::Assignment, Status>> + Send>>;

impl WorkerApi {
    /// The worker named in a request, if the caller's token registered it: a worker
    /// token acts for its own workers only.
    async fn own_worker(&self, caller: &Caller, id: &str) -> Result<Uuid> {
        let id = convert::parse_id("worker_id", id)?;
        self.0.db.check_worker_owner(id, caller.token_id).await?;
        Ok(id)
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        check_name("name", &request.name).map_err(Error::from)?;
        let known_id = match request.worker_id.as_str() {
            "" => None,
            id => Some(convert::parse_id("worker_id", id)?),
        };
        let concurrency = match request.concurrency {
            None => 1,
            Some(count @ 1..=limits::MAX_CONCURRENCY) => count as i32,
            Some(count) => {
                return Err(Error::from(Invalid::new(
                    "concurrency",
                    format!(
                        "must be between 1 and {}, got {count}; leave it unset for 1",
                        limits::MAX_CONCURRENCY
                    ),
                ))
                .into());
            }
        };
        limits::check_labels("labels", &request.labels).map_err(Error::from)?;
        let devices = convert::devices_from_proto(request.devices)?;
        let collective =
            convert::collective_from_proto(&request.collective_address, request.collective_port)?;
        let id = self
            .0
            .db
            .upsert_worker(
                caller.token_id,
                known_id,
                &WorkerOffer {
                    name: &request.name,
                    devices: &devices,
                    labels: &request.labels,
                    concurrency,
                    collective,
                },
            )
            .await?;
        tracing::info!(worker_id = %id, name = %request.name, reconnected = known_id.is_some(), "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: id.to_string(),
            lease_seconds: self.0.policy.lease.as_secs().max(1) as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let worker_id = self.own_worker(&caller, &request.worker_id).await?;
        let leases = convert::leases_from_proto(&request.leases)?;
        let stop = self
            .0
            .db
            .heartbeat(worker_id, &leases, self.0.policy.lease)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            stop: stop.iter().map(Uuid::to_string).collect(),
        }))
    }

    async fn save_checkpoint(
        &self,
        request: Request<pb::SaveCheckpointRequest>,
    ) -> Result<Response<pb::SaveCheckpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let worker_id = self.own_worker(&caller, &request.worker_id).await?;
        let job_id = convert::parse_id("job_id", &request.job_id)?;
        let attempt = convert::attempt_from_proto(request.attempt)?;
        let (checkpoint, manifest) =
            convert::checkpoint_with_manifest_from_proto(request.checkpoint)?;
        self.0
            .artifacts
            .check_stored("checkpoint.tensors", &manifest)
            .await?;
        self.0
            .db
            .save_checkpoint(worker_id, job_id, attempt, &checkpoint, self.0.policy.lease)
            .await?;
        tracing::info!(job_id = %job_id, step = checkpoint.step, "checkpoint saved");
        Ok(Response::new(pb::SaveCheckpointResponse {}))
    }

    type StreamAssignmentsStream = AssignmentStream;

    async fn stream_assignments(
        &self,
        request: Request<pb::StreamAssignmentsRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        let caller = Caller::of(&request)?;
        let worker_id = self
            .own_worker(&caller, &request.into_inner().worker_id)
            .await?;
        let stream = dispatch::assignments(self.0.clone(), worker_id).map(|assignment| {
            assignment
                .map(|assignment| convert::assignment_to_proto(&assignment))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let worker_id = self.own_worker(&caller, &request.worker_id).await?;
        let job_id = convert::parse_id("job_id", &request.job_id)?;
        let progress = convert::progress_from_proto(request.progress)?;
        let cancelled = self
            .0
            .db
            .report_progress(
                worker_id,
                job_id,
                convert::attempt_from_proto(request.attempt)?,
                &progress,
                self.0.policy.lease,
            )
            .await?;
        Ok(Response::new(pb::ReportProgressResponse { cancelled }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let worker_id = self.own_worker(&caller, &request.worker_id).await?;
        let job_id = convert::parse_id("job_id", &request.job_id)?;
        let attempt = convert::attempt_from_proto(request.attempt)?;
        let job = match convert::completion_from_proto(request.result)? {
            Completion::Output(output) => {
                dispatch::record_output(&self.0, worker_id, job_id, attempt, output).await?
            }
            Completion::Error(error) if request.retryable => {
                tracing::warn!(job_id = %job_id, error = %error, "attempt failed on the worker; retrying");
                self.0
                    .db
                    .retry_job(worker_id, job_id, attempt, &error, &self.0.policy)
                    .await?
            }
            Completion::Error(error) => {
                tracing::warn!(job_id = %job_id, error = %error, "job failed on the worker");
                self.0
                    .db
                    .fail_job(worker_id, job_id, attempt, &error)
                    .await?
            }
            Completion::Release(reason) => {
                tracing::info!(job_id = %job_id, reason = %reason, "job handed back");
                self.0
                    .db
                    .release_job(worker_id, job_id, attempt, &reason)
                    .await?
            }
        };
        self.0.metrics.job_answered(&job);
        Ok(Response::new(pb::CompleteJobResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }
}
