//! JobService: submission (idempotent by request id), planning, reading, cancelling and
//! watching jobs. Plans come from `planning` and messages from `convert.rs`: this file
//! builds only its own `*Response` messages and never speaks SQL.

use super::convert;
use crate::Services;
use crate::db::Db;
use crate::db::Submission;
use crate::dispatch;
use crate::domain::{Job, JobEventKind, JobState, waiting_reason};
use crate::error::Error;
use crate::notifier::Notification;
use crate::planning::{GangPlan, Plan, draft_from_recipe, plan_job};
use heirloom_core::{Invalid, limits};
use heirloom_proto::v1 as pb;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How often a watcher looks for events on its own, in case a notification was lost.
const WATCH_POLL: Duration = Duration::from_secs(1);

pub struct JobApi(pub Services);

/// How many attempts may fail before a job does, unless the submission says.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The most attempts a submission may allow.
const MAX_ATTEMPTS: u32 = 100;

/// The submission's `max_attempts`: unset takes the default; 0 or too many is refused,
/// never replaced.
fn max_attempts(requested: Option<u32>) -> Result<i32, Error> {
    let attempts = requested.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err(Invalid::new(
            "max_attempts",
            format!(
                "must be between 1 and {MAX_ATTEMPTS}, got {attempts}; leave it unset for the default {DEFAULT_MAX_ATTEMPTS}"
            ),
        )
        .into());
    }
    Ok(i32::try_from(attempts).expect("at most MAX_ATTEMPTS"))
}

/// The plan of a submission, a recipe's expanded first.
async fn plan(db: &Db, request: convert::JobRequest) -> Result<Plan, Error> {
    match request {
        convert::JobRequest::Spec(draft) => plan_job(db, *draft, None).await,
        convert::JobRequest::Recipe(submission) => {
            let (draft, recipe) = draft_from_recipe(db, submission).await?;
            plan_job(db, draft, Some(recipe)).await
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let request = request.into_inner();
        if request.request_id.len() > 128 {
            return Err(
                Error::from(Invalid::new("request_id", "must be at most 128 bytes")).into(),
            );
        }
        let request_id = Some(request.request_id.as_str()).filter(|id| !id.is_empty());
        let max_attempts = max_attempts(request.max_attempts)?;
        let requirements = convert::requirements_from_proto(request.requirements.clone())?;
        if request.priority.abs() > limits::MAX_PRIORITY {
            return Err(Error::from(Invalid::new(
                "priority",
                format!("must lie between -{0} and {0}", limits::MAX_PRIORITY),
            ))
            .into());
        }
        let fingerprint = convert::submission_fingerprint(&request, &requirements);
        let submission = Submission {
            priority: request.priority,
            request_id,
            fingerprint: &fingerprint,
            requirements: &requirements,
            max_attempts,
        };
        // A retry of a submission returns its job, even once that job has succeeded and
        // its model holds the name.
        if let Some(job) = self.0.db.job_for_request(&submission).await? {
            return Ok(Response::new(pb::SubmitJobResponse {
                job: Some(convert::job_to_proto(&job)),
            }));
        }
        let request = convert::job_request_from_proto(request.spec)?;
        let spec = match plan(&self.0.db, request).await?.into_spec() {
            Ok(spec) => spec,
            Err(refusal) => {
                // A concurrent submission with this request id may have queued its job
                // (and so taken the model's name) since the look-up above: that job is
                // the answer.
                if let Some(job) = self.0.db.job_for_request(&submission).await? {
                    return Ok(Response::new(pb::SubmitJobResponse {
                        job: Some(convert::job_to_proto(&job)),
                    }));
                }
                return Err(refusal.into());
            }
        };
        let job = self.0.db.insert_job(&spec, &submission).await?;
        self.0.notifier.wake(Notification::Jobs);
        tracing::info!(job_id = %job.id, kind = job.spec.kind.as_str(), "job submitted");
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    async fn plan_job(
        &self,
        request: Request<pb::PlanJobRequest>,
    ) -> Result<Response<pb::PlanJobResponse>, Status> {
        let request = request.into_inner();
        let requirements = convert::requirements_from_proto(request.requirements)?;
        let request = convert::job_request_from_proto(request.spec)?;
        let mut plan = match plan(&self.0.db, request).await {
            Ok(plan) => plan,
            // A recipe that is not there, or overrides that do not fit it: the one refusal.
            Err(error) if error.code() != tonic::Code::Internal => Plan {
                refusals: vec![error],
                ..Plan::default()
            },
            Err(error) => return Err(error.into()),
        };
        if requirements.world_size > 1 {
            let workers = self
                .0
                .db
                .connected_workers(dispatch::CONNECTED_WITHIN)
                .await?;
            let placement = waiting_reason(&requirements, None, &workers);
            plan.gang = Some(GangPlan::new(
                &requirements,
                plan.memory.as_ref(),
                placement,
            ));
        }
        Ok(Response::new(pb::PlanJobResponse {
            plan: Some(convert::plan_to_proto(&plan)),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = convert::parse_id("job_id", &request.into_inner().job_id)?;
        let job = self.0.db.job(id).await?;
        let attempts = self.0.db.attempts(id).await?;
        let waiting_reason = match job.state {
            JobState::Queued => Some(why_waiting(&self.0.db, &job).await?),
            _ => None,
        };
        Ok(Response::new(pb::GetJobResponse {
            job: Some(convert::job_with_attempts_to_proto(
                &job,
                &attempts,
                waiting_reason,
            )),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let state = convert::job_state_from_proto("state", request.into_inner().state)?;
        let jobs = self.0.db.jobs(state).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(convert::job_to_proto).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let id = convert::parse_id("job_id", &request.into_inner().job_id)?;
        let job = self.0.db.cancel_job(id).await?;
        tracing::info!(job_id = %job.id, "job cancelled");
        self.0.metrics.job_answered(&job);
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let job_id = convert::parse_id("job_id", &request.job_id)?;
        self.0.db.job(job_id).await?;
        // Subscribe before the first read, so no event falls between read and wait.
        let mut wake = self.0.notifier.subscribe();
        let db = self.0.db.clone();
        let stopping = self.0.stopping.clone();
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut after = request.after_sequence;
            loop {
                let events = match db.events_after(job_id, after).await {
                    Ok(events) => events,
                    Err(err) => {
                        let _ = sender.send(Err(err.into())).await;
                        return;
                    }
                };
                let nothing_new = events.is_empty();
                for event in events {
                    after = event.sequence;
                    let is_final =
                        matches!(event.kind, JobEventKind::State(state) if state.is_final());
                    let response = pb::WatchJobResponse {
                        event: Some(convert::event_to_proto(&event)),
                    };
                    if sender.send(Ok(response)).await.is_err() || is_final {
                        return;
                    }
                }
                // A watcher that starts after the final event has nothing left to wait for.
                if nothing_new && matches!(db.job(job_id).await, Ok(job) if job.state.is_final()) {
                    return;
                }
                tokio::select! {
                    _ = sender.closed() => return,
                    _ = stopping.cancelled() => {
                        // `try_send`: a client that reads nothing holds up no drain.
                        let stopping = Error::Unavailable("the coordinator is stopping; watch again".into());
                        let _ = sender.try_send(Err(stopping.into()));
                        return;
                    }
                    _ = wait_for_event(&mut wake, job_id) => {}
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Why a queued job is not leased yet: its backoff, and the workers connected now.
async fn why_waiting(db: &Db, job: &Job) -> Result<String, Error> {
    let backoff_until = db.backoff_until(job.id).await?;
    let workers = db.connected_workers(dispatch::CONNECTED_WITHIN).await?;
    Ok(waiting_reason(&job.requirements, backoff_until, &workers))
}

async fn wait_for_event(
    wake: &mut tokio::sync::broadcast::Receiver<Notification>,
    job_id: uuid::Uuid,
) {
    loop {
        match wake.recv().await {
            Ok(Notification::JobEvent(id)) if id == job_id => return,
            Ok(_) => {}
            // Lagged: something may have been missed, so look.
            Err(_) => return,
        }
    }
}
