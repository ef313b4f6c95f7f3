use super::models::name_taken;
use super::{Db, EVENTS_CHANNEL, JOBS_CHANNEL};
use crate::domain::{
    Checkpoint, Job, JobAttempt, JobEvent, JobEventKind, JobKind, JobSpec, JobState, Metrics,
    Policy, Progress, Requirements, TensorRecord,
};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct JobRow {
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

/// A job just leased to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
}

/// The model a successful job produces, checked and stored, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub id: Uuid,
    pub weights_sha256: String,
    pub weights_bytes: u64,
    pub metrics: Option<Metrics>,
    /// Checked provenance of every tensor.
    pub tensors: Vec<TensorRecord>,
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
            if crate::error::is_unique_violation(&err, "jobs_request_id_unique") {
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

    /// Leases to the worker the next queued job that fits it (its devices, memory and
    /// labels meet the job's requirements, its backoff has passed), highest priority
    /// first, then oldest; none while the worker runs as many jobs as its concurrency.
    pub async fn claim_job(
        &self,
        worker_id: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<Claimed>> {
        // The claim is a function (migration 000007), so that the planner walks the
        // queue in index order and stops at the first fit.
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM claim_job($1, $2, $3)")
            .bind(worker_id)
            .bind(lease.as_secs_f64())
            .bind(EVENTS_CHANNEL)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Claimed {
            job: Job::try_from(row)?,
        }))
    }

    /// Records progress (the first report moves the job to running). Returns whether the
    /// job was cancelled, so the worker can stop.
    pub async fn report_progress(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        progress: &Progress,
        lease: std::time::Duration,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let job = match lock_leased_job(&mut tx, worker_id, job_id, attempt).await {
            Ok(job) => job,
            Err(_) if self.is_cancelled_for(job_id, worker_id, attempt).await? => return Ok(true),
            Err(err) => return Err(err),
        };
        if job.state == JobState::Leased {
            set_state(&mut tx, job_id, JobState::Running, None).await?;
            insert_state_event(&mut tx, job_id, JobState::Running.as_str(), "").await?;
        }
        renew_lease(&mut tx, job_id, lease).await?;
        sqlx::query("INSERT INTO job_events (job_id, progress) VALUES ($1, $2)")
            .bind(job_id)
            .bind(Json(progress))
            .execute(&mut *tx)
            .await?;
        notify_event(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(false)
    }

    async fn is_cancelled_for(&self, job_id: Uuid, worker_id: Uuid, attempt: i32) -> Result<bool> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT state FROM jobs WHERE id = $1 AND worker_id = $2 AND attempt = $3",
        )
        .bind(job_id)
        .bind(worker_id)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        Ok(matches!(found, Some((state,)) if state == JobState::Cancelled.as_str()))
    }

    /// Records a successful job: the child model, its parent edge, its dataset edge and
    /// the job's final state, all in one transaction.
    pub async fn succeed_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        model: &NewModel,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let job = lock_leased_job(&mut tx, worker_id, job_id, attempt).await?;
        let spec = &job.spec;
        sqlx::query(
            "INSERT INTO models (id, name, architecture, weights_sha256, weights_bytes,
                                 source, job_id, metrics, recipe_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(model.id)
        .bind(&spec.model_name)
        .bind(Json(&spec.architecture))
        .bind(&model.weights_sha256)
        .bind(model.weights_bytes as i64)
        .bind(spec.kind.as_str())
        .bind(job_id)
        .bind(model.metrics.as_ref().map(Json))
        .bind(spec.recipe.as_ref().map(|used| used.recipe.id))
        .execute(&mut *tx)
        .await
        .map_err(|err| name_taken(err, &spec.model_name))?;
        if let Some(relation) = spec.kind.relation() {
            for (index, parent_id) in spec.parents.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO model_parents (child_id, parent_id, relation, details)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(model.id)
                .bind(parent_id)
                .bind(relation.as_str())
                .bind(Json(edge_details(spec, index, job_id)))
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(dataset_id) = spec.dataset_id {
            sqlx::query(
                "INSERT INTO model_datasets (model_id, dataset_id, role) VALUES ($1, $2, $3)",
            )
            .bind(model.id)
            .bind(dataset_id)
            .bind(if spec.trains() { "train" } else { "eval" })
            .execute(&mut *tx)
            .await?;
        }
        super::models::insert_tensors(&mut tx, model.id, &model.tensors).await?;
        let succeeded: JobRow = sqlx::query_as(
            // State and model together (jobs_succeeded_has_model); like set_state, an
            // ended job holds no lease and no checkpoint.
            "UPDATE jobs SET state = 'succeeded', model_id = $2, updated_at = now(),
                             lease_expires_at = NULL, checkpoint = NULL
              WHERE id = $1
             RETURNING *",
        )
        .bind(job_id)
        .bind(model.id)
        .fetch_one(&mut *tx)
        .await?;
        end_attempt(&mut tx, job_id, attempt, "succeeded", None).await?;
        let message = format!("model {} created", model.id);
        insert_state_event(&mut tx, job_id, JobState::Succeeded.as_str(), &message).await?;
        notify_worker_freed(&mut tx, worker_id).await?;
        tx.commit().await?;
        Job::try_from(succeeded)
    }

    /// Fails a job its worker holds; writes no model.
    pub async fn fail_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        error: &str,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        lock_leased_job(&mut tx, worker_id, job_id, attempt).await?;
        set_state(&mut tx, job_id, JobState::Failed, Some(error)).await?;
        end_attempt(&mut tx, job_id, attempt, "failed", Some(error)).await?;
        insert_state_event(&mut tx, job_id, JobState::Failed.as_str(), error).await?;
        notify_worker_freed(&mut tx, worker_id).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    /// Ends a worker's attempt with a retryable error: queued again after a backoff, or
    /// failed once the job has used its attempts.
    pub async fn retry_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        error: &str,
        policy: &Policy,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let job = lock_leased_job(&mut tx, worker_id, job_id, attempt).await?;
        retry_or_fail(&mut tx, &job, "retried", error, policy).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    /// A draining worker hands its job back unfinished: queued again at once, keeping its
    /// checkpoint, and not counted as a failure.
    pub async fn release_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        reason: &str,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        lock_leased_job(&mut tx, worker_id, job_id, attempt).await?;
        requeue(&mut tx, job_id, std::time::Duration::ZERO).await?;
        end_attempt(&mut tx, job_id, attempt, "released", Some(reason)).await?;
        let message = format!("handed back by worker {worker_id}: {reason}");
        insert_state_event(&mut tx, job_id, JobState::Queued.as_str(), &message).await?;
        notify_queued(&mut tx).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    /// Renews the leases a worker still holds; returns the job ids it must stop working
    /// on (cancelled, or no longer its lease).
    pub async fn heartbeat(
        &self,
        worker_id: Uuid,
        leases: &[(Uuid, i32)],
        lease: std::time::Duration,
    ) -> Result<Vec<Uuid>> {
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = leases.iter().copied().unzip();
        let renewed: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
              WHERE worker_id = $1 AND state IN ('leased', 'running')
                AND (id, attempt) IN (SELECT * FROM unnest($2::uuid[], $3::int4[]))
             RETURNING id",
        )
        .bind(worker_id)
        .bind(&ids)
        .bind(&attempts)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        sqlx::query("UPDATE workers SET last_seen_at = now() WHERE id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(ids
            .into_iter()
            .filter(|id| !renewed.iter().any(|(renewed,)| renewed == id))
            .collect())
    }

    /// Records an attempt's checkpoint (its blobs stored already) and renews its lease.
    pub async fn save_checkpoint(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        checkpoint: &Checkpoint,
        lease: std::time::Duration,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_leased_job(&mut tx, worker_id, job_id, attempt).await?;
        sqlx::query("UPDATE jobs SET checkpoint = $2 WHERE id = $1")
            .bind(job_id)
            .bind(Json(checkpoint))
            .execute(&mut *tx)
            .await?;
        renew_lease(&mut tx, job_id, lease).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes back every job whose lease has expired (its worker died, or was cut off):
    /// queued again after a backoff, or failed once it has used its attempts. Safe to
    /// run on every replica at once. Returns how many it took back.
    pub async fn expire_leases(&self, policy: &Policy) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT * FROM jobs
              WHERE state IN ('leased', 'running') AND lease_expires_at < now()
              FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let count = rows.len();
        for row in rows {
            let job = Job::try_from(row)?;
            let error = format!(
                "the lease of worker {} expired (attempt {})",
                job.worker_id.map(|id| id.to_string()).unwrap_or_default(),
                job.attempt
            );
            retry_or_fail(&mut tx, &job, "lease_expired", &error, policy).await?;
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Every attempt at a job, oldest first.
    pub async fn attempts(&self, job_id: Uuid) -> Result<Vec<JobAttempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT attempt, worker_id, started_at, ended_at, outcome, error
               FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
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
            })
            .collect())
    }

    pub async fn cancel_job(&self, job_id: Uuid) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<Uuid>)> =
            sqlx::query_as("SELECT state, worker_id FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, worker_id)) = row else {
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
        sqlx::query(
            "UPDATE job_attempts SET outcome = 'cancelled', ended_at = now()
              WHERE job_id = $1 AND outcome = 'running'",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
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

/// What a parent edge records: how the child was made from this parent.
fn edge_details(spec: &JobSpec, parent_index: usize, job_id: Uuid) -> serde_json::Value {
    let parent_id = spec.parents[parent_index];
    let mut details = serde_json::json!({ "job_id": job_id });
    if spec.trains() {
        details["hyperparameters"] = serde_json::json!(spec.hyperparameters);
    }
    match spec.kind {
        JobKind::Train => {}
        JobKind::Finetune => details["trainable"] = serde_json::json!(spec.trainable),
        JobKind::Transfer => {
            details["num_classes"] = serde_json::json!(spec.num_classes);
            details["unfreeze_blocks"] = serde_json::json!(spec.unfreeze_blocks);
        }
        JobKind::Direct => {
            details["role"] = serde_json::json!(if parent_index == 0 { "a" } else { "b" })
        }
        JobKind::Compose => {
            let modules: Vec<_> = spec
                .modules
                .iter()
                .filter(|m| m.parent_id == parent_id)
                .collect();
            details["modules"] = serde_json::json!(modules);
            details["trainable"] = serde_json::json!(spec.trainable);
        }
    }
    if let Some(adjustment) = spec.adjustment {
        details["adjustment"] = serde_json::json!(adjustment);
    }
    details
}

/// Locks a job for a report from its worker, refusing anyone but the lease holder.
async fn lock_leased_job(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
) -> Result<Job> {
    let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    let job = row
        .map(Job::try_from)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))?;
    let holds_lease = job.worker_id == Some(worker_id)
        && job.attempt == attempt
        && matches!(job.state, JobState::Leased | JobState::Running);
    if !holds_lease {
        return Err(Error::LeaseLost(format!(
            "worker {worker_id} no longer holds job {job_id} (attempt {attempt}); the job is {} \
             at attempt {}: stop working on it",
            job.state.as_str(),
            job.attempt
        )));
    }
    Ok(job)
}

async fn set_state(
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

async fn notify_event(tx: &mut Transaction<'_, Postgres>, job_id: Uuid) -> Result<()> {
    // NOTIFY inside the transaction is delivered on commit, never for a rollback.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(job_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Wakes every replica's dispatchers: a job may have become claimable.
async fn notify_queued(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Wakes only this worker's dispatcher, wherever it runs: one of its jobs ended, so it
/// has room. (Waking every dispatcher for every ended job made each of them look for
/// work it had no room for.)
async fn notify_worker_freed(tx: &mut Transaction<'_, Postgres>, worker_id: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(worker_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn renew_lease(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    lease: std::time::Duration,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $2) WHERE id = $1",
    )
    .bind(job_id)
    .bind(lease.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts a job back in the queue, leasable after `delay`; it keeps its checkpoint.
async fn requeue(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    delay: std::time::Duration,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'queued', worker_id = NULL, lease_expires_at = NULL,
                         not_before = now() + make_interval(secs => $2), updated_at = now()
          WHERE id = $1",
    )
    .bind(job_id)
    .bind(delay.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn end_attempt(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    attempt: i32,
    outcome: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE job_attempts SET outcome = $3, error = $4, ended_at = now()
          WHERE job_id = $1 AND attempt = $2",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(outcome)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the job's current attempt as a failure that may be retried: queued again after an
/// exponential backoff with jitter while attempts remain, failed otherwise.
async fn retry_or_fail(
    tx: &mut Transaction<'_, Postgres>,
    job: &Job,
    outcome: &str,
    error: &str,
    policy: &Policy,
) -> Result<()> {
    let failures = job.failures + 1;
    sqlx::query("UPDATE jobs SET failures = $2 WHERE id = $1")
        .bind(job.id)
        .bind(failures)
        .execute(&mut **tx)
        .await?;
    end_attempt(tx, job.id, job.attempt, outcome, Some(error)).await?;
    if failures >= job.max_attempts {
        let reason = format!("gave up after {failures} failed attempts; the last: {error}");
        set_state(tx, job.id, JobState::Failed, Some(&reason)).await?;
        insert_state_event(tx, job.id, JobState::Failed.as_str(), &reason).await?;
        match job.worker_id {
            Some(worker_id) => notify_worker_freed(tx, worker_id).await,
            None => Ok(()),
        }
    } else {
        let delay = heirloom_spec::backoff::jittered(policy.backoff(failures));
        requeue(tx, job.id, delay).await?;
        let message = format!(
            "attempt {} failed ({error}); retrying in {:.1} s ({failures} of {} attempts failed)",
            job.attempt,
            delay.as_secs_f64(),
            job.max_attempts
        );
        insert_state_event(tx, job.id, JobState::Queued.as_str(), &message).await?;
        notify_queued(tx).await
    }
}
