use super::models::name_taken;
use super::{Db, EVENTS_CHANNEL, JOBS_CHANNEL};
use crate::domain::{
    Job, JobEvent, JobEventKind, JobKind, JobSpec, JobState, Metrics, Progress, TensorRecord,
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
        })
    }
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
    /// Queues a job; with a request id seen before, returns that job instead.
    pub async fn insert_job(
        &self,
        spec: &JobSpec,
        priority: i32,
        request_id: Option<&str>,
    ) -> Result<Job> {
        if let Some(request_id) = request_id
            && let Some(job) = self.job_by_request_id(request_id).await?
        {
            return Ok(job);
        }
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, kind, spec, model_name, dataset_id, priority, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(spec.kind.as_str())
        .bind(Json(spec))
        .bind(&spec.model_name)
        .bind(spec.dataset_id)
        .bind(priority)
        .bind(request_id)
        .execute(&mut *tx)
        .await;
        if let Err(err) = inserted {
            if let Some(request_id) = request_id
                && crate::error::is_unique_violation(&err, "jobs_request_id_unique")
            {
                // A concurrent submission with the same request id won the race.
                drop(tx);
                return self
                    .job_by_request_id(request_id)
                    .await?
                    .ok_or_else(|| Error::Internal("request id vanished".into()));
            }
            return Err(name_taken(err, &spec.model_name));
        }
        insert_state_event(&mut tx, id, JobState::Queued.as_str(), "").await?;
        notify_jobs(&mut tx).await?;
        tx.commit().await?;
        self.job(id).await
    }

    pub async fn job_by_request_id(&self, request_id: &str) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Job::try_from).transpose()
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

    pub async fn jobs(&self, state: Option<JobState>) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT * FROM jobs WHERE $1::text IS NULL OR state = $1 ORDER BY created_at, id",
        )
        .bind(state.map(JobState::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Leases the next queued job to an idle worker: highest priority, then oldest.
    pub async fn claim_job(&self, worker_id: Uuid) -> Result<Option<Claimed>> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED lets concurrent dispatchers (other workers, other replicas) pass
        // over a row another transaction is claiming instead of queueing behind it.
        let row: Option<JobRow> = sqlx::query_as(
            "WITH next AS (
                 SELECT id FROM jobs
                  WHERE state = 'queued'
                    AND NOT EXISTS (SELECT 1 FROM jobs busy
                                     WHERE busy.worker_id = $1
                                       AND busy.state IN ('leased', 'running'))
                  ORDER BY priority DESC, created_at, id
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED)
             UPDATE jobs SET state = 'leased', worker_id = $1, attempt = attempt + 1,
                             updated_at = now()
               FROM next WHERE jobs.id = next.id
             RETURNING jobs.*",
        )
        .bind(worker_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = Job::try_from(row)?;
        let message = format!("leased to worker {worker_id}, attempt {}", job.attempt);
        insert_state_event(&mut tx, job.id, JobState::Leased.as_str(), &message).await?;
        tx.commit().await?;
        Ok(Some(Claimed { job }))
    }

    /// Records progress (the first report moves the job to running). Returns whether the
    /// job was cancelled, so the worker can stop.
    pub async fn report_progress(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        progress: &Progress,
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
                                 source, job_id, metrics)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(model.id)
        .bind(&spec.model_name)
        .bind(Json(&spec.architecture))
        .bind(&model.weights_sha256)
        .bind(model.weights_bytes as i64)
        .bind(spec.kind.as_str())
        .bind(job_id)
        .bind(model.metrics.as_ref().map(Json))
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
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', model_id = $2, updated_at = now()
              WHERE id = $1",
        )
        .bind(job_id)
        .bind(model.id)
        .execute(&mut *tx)
        .await?;
        let message = format!("model {} created", model.id);
        insert_state_event(&mut tx, job_id, JobState::Succeeded.as_str(), &message).await?;
        notify_jobs(&mut tx).await?;
        tx.commit().await?;
        self.job(job_id).await
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
        insert_state_event(&mut tx, job_id, JobState::Failed.as_str(), error).await?;
        notify_jobs(&mut tx).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    pub async fn cancel_job(&self, job_id: Uuid) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state,)) = row else {
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
        insert_state_event(
            &mut tx,
            job_id,
            JobState::Cancelled.as_str(),
            "cancelled by request",
        )
        .await?;
        notify_jobs(&mut tx).await?;
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
    sqlx::query("UPDATE jobs SET state = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(job_id)
        .bind(state.as_str())
        .bind(error)
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
    sqlx::query("INSERT INTO job_events (job_id, state, message) VALUES ($1, $2, $3)")
        .bind(job_id)
        .bind(state)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    notify_event(tx, job_id).await
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

async fn notify_jobs(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
