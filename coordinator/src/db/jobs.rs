//! Jobs as submitters see them: inserting a submission (deduplicated by request id),
//! reading jobs, their attempts and events, cancelling; and the helpers every job state
//! change goes through (state, event, attempt end and NOTIFY in one transaction), which
//! `queue.rs` shares. Never builds a prost message; never plans a job (`planning` does).

use super::models::name_taken;
use super::{Db, EVENTS_CHANNEL, JOBS_CHANNEL, RANKS_PLACED};
use crate::domain::{
    Checkpoint, Job, JobAttempt, JobEvent, JobEventKind, JobSpec, JobState, Progress,
    RankPlacement, Requirements,
};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    id: Uuid,
    spec: Json<JobSpec>,
    state: String,
    priority: i32,
    request_id: Option<String>,
    worker_id: Option<Uuid>,
    attempt: i32,
    error: Option<String>,
    model_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    requirements: Json<Requirements>,
    max_attempts: i32,
    failures: i32,
    checkpoint: Option<Json<Checkpoint>>,
    request_fingerprint: Option<String>,
}

impl TryFrom<JobRow> for Job {
    type Error = Error;

    fn try_from(row: JobRow) -> Result<Job> {
        Ok(Job {
            id: row.id,
            spec: row.spec.0,
            state: JobState::parse(&row.state)
                .ok_or_else(|| Error::Internal(format!("unknown job state {:?}", row.state)))?,
            priority: row.priority,
            request_id: row.request_id,
            worker_id: row.worker_id,
            attempt: row.attempt,
            error: row.error,
            model_id: row.model_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
            requirements: row.requirements.0,
            max_attempts: row.max_attempts,
            failures: row.failures,
            checkpoint: row.checkpoint.map(|json| json.0),
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    worker_id: Uuid,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    outcome: String,
    error: Option<String>,
    world_size: i32,
    backend: String,
    failed_rank: Option<i32>,
}

/// What a submission asks for, beyond its spec.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub priority: i32,
    pub request_id: Option<&'a str>,
    /// The sha256 of everything submitted but the request id.
    pub fingerprint: &'a str,
    pub requirements: &'a Requirements,
    pub max_attempts: i32,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    sequence: i64,
    job_id: Uuid,
    at: DateTime<Utc>,
    state: Option<String>,
    progress: Option<Json<Progress>>,
    message: String,
}

impl Db {
    /// Queues a job; with a request id seen before, returns that job instead (or refuses
    /// when it was submitted with different parameters).
    pub async fn insert_job(&self, spec: &JobSpec, submission: &Submission<'_>) -> Result<Job> {
        if let Some(job) = self.job_for_request(submission).await? {
            return Ok(job);
        }
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, kind, spec, model_name, dataset_id, priority, request_id,
                               request_fingerprint, requirements, max_attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(spec.kind.as_str())
        .bind(Json(spec))
        .bind(&spec.model_name)
        .bind(spec.dataset_id)
        .bind(submission.priority)
        .bind(submission.request_id)
        .bind(submission.fingerprint)
        .bind(Json(submission.requirements))
        .bind(submission.max_attempts)
        .execute(&mut *tx)
        .await;
        if let Err(err) = inserted {
            if super::is_unique_violation(&err, "jobs_request_id_unique") {
                // A concurrent submission with the same request id won the race.
                drop(tx);
                return self
                    .job_for_request(submission)
                    .await?
                    .ok_or_else(|| Error::Internal("request id vanished".into()));
            }
            return Err(name_taken(err, &spec.model_name));
        }
        insert_state_event(&mut tx, id, JobState::Queued.as_str(), "").await?;
        notify_queued(&mut tx).await?;
        tx.commit().await?;
        self.job(id).await
    }

    /// The job a submission's request id already stands for, if any; refuses a request
    /// id reused for a different submission.
    pub async fn job_for_request(&self, submission: &Submission<'_>) -> Result<Option<Job>> {
        let Some(request_id) = submission.request_id else {
            return Ok(None);
        };
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.request_fingerprint.as_deref() != Some(submission.fingerprint) {
            return Err(Error::AlreadyExists(format!(
                "request_id: {request_id:?} was used for a different submission (job {}); \
                 resend exactly that submission, or use a new request id",
                row.id
            )));
        }
        Job::try_from(row).map(Some)
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Job::try_from)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("job {id} does not exist")))
    }

    /// How many jobs are in each state (states with none are left out).
    pub async fn job_counts(&self) -> Result<Vec<(JobState, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(state, count)| {
                JobState::parse(&state)
                    .map(|state| (state, count))
                    .ok_or_else(|| Error::Internal(format!("unknown job state {state:?}")))
            })
            .collect()
    }

    pub async fn jobs(&self, state: Option<JobState>) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT * FROM jobs WHERE $1::text IS NULL OR state = $1 ORDER BY created_at, id",
        )
        .bind(state.map(JobState::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Every attempt at a job, oldest first.
    pub async fn attempts(&self, job_id: Uuid) -> Result<Vec<JobAttempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, worker_id, started_at, ended_at, outcome, error, world_size,
                    backend, failed_rank
               FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        let ranks: Vec<(i32, i32, Uuid, String)> = sqlx::query_as(
            "SELECT attempt, rank, worker_id, device FROM job_ranks
              WHERE job_id = $1 ORDER BY attempt, rank",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| JobAttempt {
                attempt: row.attempt,
                worker_id: row.worker_id,
                started_at: row.started_at,
                ended_at: row.ended_at,
                outcome: row.outcome,
                error: row.error,
                world_size: row.world_size,
                backend: row.backend,
                failed_rank: row.failed_rank,
                ranks: ranks
                    .iter()
                    .filter(|(attempt, ..)| *attempt == row.attempt)
                    .map(|(_, rank, worker_id, device)| RankPlacement {
                        rank: *rank as u32,
                        worker_id: *worker_id,
                        device: device.clone(),
                    })
                    .collect(),
            })
            .collect())
    }

    pub async fn cancel_job(&self, job_id: Uuid) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<Uuid>, i32)> =
            sqlx::query_as("SELECT state, worker_id, attempt FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, worker_id, attempt)) = row else {
            return Err(Error::NotFound(format!("job {job_id} does not exist")));
        };
        let state = JobState::parse(&state)
            .ok_or_else(|| Error::Internal(format!("unknown job state {state:?}")))?;
        if state.is_final() {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is already {}; only queued, leased or running jobs can be cancelled",
                state.as_str()
            )));
        }
        set_state(&mut tx, job_id, JobState::Cancelled, None).await?;
        end_attempt(&mut tx, job_id, attempt, "cancelled", None).await?;
        insert_state_event(
            &mut tx,
            job_id,
            JobState::Cancelled.as_str(),
            "cancelled by request",
        )
        .await?;
        if let Some(worker_id) = worker_id {
            notify_worker_freed(&mut tx, worker_id).await?;
        }
        tx.commit().await?;
        self.job(job_id).await
    }

    /// When a queued job's retry backoff ends, if that lies ahead.
    pub async fn backoff_until(&self, job_id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let found: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "SELECT not_before FROM jobs
              WHERE id = $1 AND state = 'queued' AND not_before > now()",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|(until,)| until))
    }

    pub async fn events_after(&self, job_id: Uuid, after_sequence: i64) -> Result<Vec<JobEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT sequence, job_id, at, state, progress, message FROM job_events
              WHERE job_id = $1 AND sequence > $2 ORDER BY sequence",
        )
        .bind(job_id)
        .bind(after_sequence)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let kind = match (row.state, row.progress) {
                    (Some(state), _) => {
                        JobEventKind::State(JobState::parse(&state).ok_or_else(|| {
                            Error::Internal(format!("unknown job state {state:?}"))
                        })?)
                    }
                    (None, Some(progress)) => JobEventKind::Progress(progress.0),
                    (None, None) => return Err(Error::Internal("empty job event".into())),
                };
                Ok(JobEvent {
                    sequence: row.sequence,
                    job_id: row.job_id,
                    at: row.at,
                    kind,
                    message: row.message,
                })
            })
            .collect()
    }
}

pub(super) async fn set_state(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    state: JobState,
    error: Option<&str>,
) -> Result<()> {
    // A job that ends holds no lease, and its checkpoint (kept for retries) goes.
    sqlx::query(
        "UPDATE jobs SET state = $2, error = $3, updated_at = now(),
                lease_expires_at = CASE WHEN $4 THEN NULL ELSE lease_expires_at END,
                checkpoint = CASE WHEN $4 THEN NULL ELSE checkpoint END
          WHERE id = $1",
    )
    .bind(job_id)
    .bind(state.as_str())
    .bind(error)
    .bind(state.is_final())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn insert_state_event(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    state: &str,
    message: &str,
) -> Result<()> {
    // With its notification, in one round trip.
    sqlx::query(
        "WITH event AS (
             INSERT INTO job_events (job_id, state, message) VALUES ($1, $2, $3) RETURNING job_id)
         SELECT pg_notify($4, job_id::text) FROM event",
    )
    .bind(job_id)
    .bind(state)
    .bind(message)
    .bind(EVENTS_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn notify_event(tx: &mut Transaction<'_, Postgres>, job_id: Uuid) -> Result<()> {
    // NOTIFY inside the transaction is delivered on commit, never for a rollback.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(job_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Wakes every replica's dispatchers: a job may have become claimable.
pub(super) async fn notify_queued(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Wakes only this worker's dispatcher, wherever it runs: one of its jobs ended, so it
/// has room. (Waking every dispatcher for every ended job made each of them look for
/// work it had no room for.)
pub(super) async fn notify_worker_freed(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: Uuid,
) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(worker_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Wakes this worker's dispatcher to deliver the ranks of a gang placed on it.
pub(super) async fn notify_ranks_placed(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: Uuid,
) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(format!("{RANKS_PLACED}{worker_id}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn end_attempt(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    attempt: i32,
    outcome: &str,
    error: Option<&str>,
) -> Result<()> {
    // With the wake-up of every worker that hosted another rank of the attempt (its slot
    // is free now, and it must stop), in one round trip.
    sqlx::query(
        "WITH ended AS (
             UPDATE job_attempts SET outcome = $3, error = $4, ended_at = now()
              WHERE job_id = $1 AND attempt = $2 AND outcome = 'running')
         SELECT pg_notify($5, worker_id::text)
           FROM (SELECT DISTINCT worker_id FROM job_ranks
                  WHERE job_id = $1 AND attempt = $2 AND rank > 0) hosts",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(outcome)
    .bind(error)
    .bind(JOBS_CHANNEL)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
