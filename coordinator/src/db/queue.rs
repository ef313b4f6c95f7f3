//! The queue and its leases: claiming the next job that fits a worker, and everything a
//! lease holder's reports do — progress, heartbeats, checkpoints, success, failure,
//! retry, hand-back — plus the scan that takes back expired leases. Every statement is
//! fenced by the job's `attempt`, so only the current lease holder changes a job.
//! Never builds a protobuf message; rows become domain types in `jobs.rs`.

use super::jobs::{
    JobRow, end_attempt, insert_state_event, notify_event, notify_queued, notify_worker_freed,
    set_state,
};
use super::models::name_taken;
use super::{Db, EVENTS_CHANNEL};
use crate::domain::{Checkpoint, Job, JobState, Metrics, Policy, Progress, TensorRecord};
use crate::error::{Error, Result};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

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
    /// job was cancelled, so the worker can stop. A report that says nothing yet (no
    /// epochs, no steps: a worker announcing that it started) still renews the lease and
    /// moves the job to running, but is no event: watchers would see "epoch 0/0".
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
        let starts = job.state == JobState::Leased;
        if starts {
            set_state(&mut tx, job_id, JobState::Running, None).await?;
            insert_state_event(&mut tx, job_id, JobState::Running.as_str(), "").await?;
        }
        renew_lease(&mut tx, job_id, lease).await?;
        let says_something = progress.epochs != 0 || progress.total_steps != 0;
        if says_something {
            sqlx::query("INSERT INTO job_events (job_id, progress) VALUES ($1, $2)")
                .bind(job_id)
                .bind(Json(progress))
                .execute(&mut *tx)
                .await?;
        }
        if says_something {
            notify_event(&mut tx, job_id).await?;
        }
        tx.commit().await?;
        Ok(false)
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
                .bind(Json(spec.edge_details(index, job_id)))
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
    let holds_lease =
        job.worker_id == Some(worker_id) && job.attempt == attempt && job.state.is_leased();
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
        let delay = heirloom_core::backoff::jittered(policy.backoff(failures));
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
