//! The queue and its leases: claiming the next job that fits a worker, and everything a
//! lease holder's reports do — progress, heartbeats, checkpoints, success, failure,
//! retry, hand-back — plus the scan that takes back expired leases. Every statement is
//! fenced by the job's `attempt`, so only the current lease holder changes a job.
//! Never builds a protobuf message; rows become domain types in `jobs.rs`.

use super::jobs::{
    JobRow, end_attempt, insert_state_event, notify_event, notify_queued, notify_ranks_placed,
    notify_worker_freed, set_state,
};
use super::models::name_taken;
use super::workers::lock_connected_workers;
use super::{Db, EVENTS_CHANNEL};
use crate::domain::{
    Checkpoint, Gang, Job, JobState, Metrics, Policy, Progress, RankPlacement, TensorRecord,
    place_gang,
};
use crate::error::{Error, Result};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// A job just leased to a worker (or a rank of one delivered to it).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    /// The attempt's ranks, when the job trains on several at once.
    pub gang: Option<Gang>,
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
    /// When that job is a gang, it is leased only if all its ranks can be placed at once
    /// (`claim_gang`); otherwise the next single-rank job is (a gang that waits for slots
    /// does not hold the queue up).
    pub async fn claim_job(
        &self,
        worker_id: Uuid,
        lease: std::time::Duration,
        connected_within: std::time::Duration,
    ) -> Result<Option<Claimed>> {
        let Some(job) = self.claim_next(worker_id, lease, false).await? else {
            return Ok(None);
        };
        if job.state.is_leased() {
            return Ok(Some(Claimed { job, gang: None }));
        }
        if let Some(claimed) = self
            .claim_gang(worker_id, job.id, lease, connected_within)
            .await?
        {
            return Ok(Some(claimed));
        }
        let single = self.claim_next(worker_id, lease, true).await?;
        Ok(single
            .filter(|job| job.state.is_leased())
            .map(|job| Claimed { job, gang: None }))
    }

    /// One call of the SQL claim (migration 000010): the next fitting job, leased when it
    /// has one rank, returned still queued when it is a gang.
    async fn claim_next(
        &self,
        worker_id: Uuid,
        lease: std::time::Duration,
        singles_only: bool,
    ) -> Result<Option<Job>> {
        // The claim is a function, so that the planner walks the queue in index order
        // and stops at the first fit.
        let row: Option<JobRow> = sqlx::query_as("SELECT * FROM claim_job($1, $2, $3, $4)")
            .bind(worker_id)
            .bind(lease.as_secs_f64())
            .bind(EVENTS_CHANNEL)
            .bind(singles_only)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Job::try_from).transpose()
    }

    /// Leases every rank of a queued gang job at once, or none: rank 0 (and as many more
    /// as fit) on the claiming worker, the rest on the other connected workers that fit,
    /// packed onto as few as fit. The rows of the connected workers are locked for the
    /// placement, so no slot is counted twice. An attempt after a failure may run with
    /// fewer ranks, down to the job's `min_ranks`. The other workers' dispatchers are
    /// woken to deliver their ranks (`deliver_ranks`).
    async fn claim_gang(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        lease: std::time::Duration,
        connected_within: std::time::Duration,
    ) -> Result<Option<Claimed>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<JobRow> = sqlx::query_as(
            "SELECT * FROM jobs WHERE id = $1 AND state = 'queued' AND not_before <= now()
                FOR UPDATE SKIP LOCKED",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = row.map(Job::try_from).transpose()? else {
            return Ok(None);
        };
        let workers = lock_connected_workers(&mut tx, connected_within).await?;
        let wanted = &job.requirements;
        let elastic =
            (job.failures > 0 && wanted.min_ranks < wanted.world_size).then_some(wanted.min_ranks);
        let Ok(ranks) = place_gang(wanted, worker_id, &workers, elastic) else {
            return Ok(None); // the rollback releases the locks; nothing was written
        };
        let store = workers
            .iter()
            .find(|w| w.id == worker_id)
            .and_then(|w| w.collective.clone())
            .ok_or_else(|| Error::Internal("rank 0's worker has no collective port".into()))?;
        let gang = Gang { ranks, store };
        let leased: JobRow = sqlx::query_as(
            "UPDATE jobs SET state = 'leased', worker_id = $2, attempt = attempt + 1,
                             lease_expires_at = now() + make_interval(secs => $3),
                             updated_at = now()
              WHERE id = $1
             RETURNING *",
        )
        .bind(job_id)
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        let job = Job::try_from(leased)?;
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, world_size, backend)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job_id)
        .bind(job.attempt)
        .bind(worker_id)
        .bind(gang.ranks.len() as i32)
        .bind(gang.backend())
        .execute(&mut *tx)
        .await?;
        let (ranks, (hosts, devices)): (Vec<i32>, (Vec<Uuid>, Vec<String>)) = gang
            .ranks
            .iter()
            .map(|r| (r.rank as i32, (r.worker_id, r.device.clone())))
            .unzip();
        sqlx::query(
            "INSERT INTO job_ranks (job_id, attempt, rank, worker_id, device, lease_expires_at,
                                    delivered)
             SELECT $1, $2, rank, host, device, now() + make_interval(secs => $3), host = $4
               FROM unnest($5::int4[], $6::uuid[], $7::text[]) AS r(rank, host, device)",
        )
        .bind(job_id)
        .bind(job.attempt)
        .bind(lease.as_secs_f64())
        .bind(worker_id)
        .bind(&ranks)
        .bind(&hosts)
        .bind(&devices)
        .execute(&mut *tx)
        .await?;
        let placement: Vec<String> = gang
            .ranks
            .iter()
            .map(|r| format!("rank {} on worker {} ({})", r.rank, r.worker_id, r.device))
            .collect();
        let resuming = job
            .checkpoint
            .as_ref()
            .map(|checkpoint| format!(", resuming from step {}", checkpoint.step))
            .unwrap_or_default();
        let message = format!(
            "leased to {} ranks ({}), attempt {}{resuming}: {}",
            gang.ranks.len(),
            gang.backend(),
            job.attempt,
            placement.join(", ")
        );
        insert_state_event(&mut tx, job_id, JobState::Leased.as_str(), &message).await?;
        let mut others: Vec<Uuid> = hosts.into_iter().filter(|&h| h != worker_id).collect();
        others.sort();
        others.dedup();
        for other in others {
            notify_ranks_placed(&mut tx, other).await?;
        }
        tx.commit().await?;
        Ok(Some(Claimed {
            job,
            gang: Some(gang),
        }))
    }

    /// The gang attempts with ranks on this worker that it has not been sent yet, marked
    /// sent.
    pub async fn deliver_ranks(&self, worker_id: Uuid) -> Result<Vec<Claimed>> {
        let marked: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE job_ranks r SET delivered = true
               FROM jobs j
              WHERE r.worker_id = $1 AND NOT r.delivered
                AND j.id = r.job_id AND j.attempt = r.attempt AND j.state IN ('leased', 'running')
             RETURNING r.job_id",
        )
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        let mut job_ids: Vec<Uuid> = marked.into_iter().map(|(id,)| id).collect();
        job_ids.sort();
        job_ids.dedup();
        let mut delivered = Vec::new();
        for job_id in job_ids {
            let job = self.job(job_id).await?;
            let gang = self.gang(job_id, job.attempt).await?;
            delivered.push(Claimed { job, gang });
        }
        Ok(delivered)
    }

    /// The ranks of a job's attempt and where rank 0 hosts the store; `None` for a
    /// single-rank attempt.
    pub async fn gang(&self, job_id: Uuid, attempt: i32) -> Result<Option<Gang>> {
        let rows: Vec<(i32, Uuid, String, String, i32)> = sqlx::query_as(
            "SELECT r.rank, r.worker_id, r.device, w.collective_address, w.collective_port
               FROM job_ranks r JOIN workers w ON w.id = r.worker_id
              WHERE r.job_id = $1 AND r.attempt = $2 ORDER BY r.rank",
        )
        .bind(job_id)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?;
        let Some((_, _, _, address, port)) = rows.first().cloned() else {
            return Ok(None);
        };
        Ok(Some(Gang {
            ranks: rows
                .into_iter()
                .map(|(rank, worker_id, device, ..)| RankPlacement {
                    rank: rank as u32,
                    worker_id,
                    device,
                })
                .collect(),
            store: (address, u16::try_from(port).unwrap_or(0)),
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

    /// Fails a job its worker holds (or hosts a rank of); writes no model.
    pub async fn fail_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        error: &str,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let (job, reporter) = lock_attempt_member(&mut tx, worker_id, job_id, attempt).await?;
        let error = &attribute_failure(&mut tx, &job, reporter, error).await?;
        set_state(&mut tx, job_id, JobState::Failed, Some(error)).await?;
        end_attempt(&mut tx, job_id, attempt, "failed", Some(error)).await?;
        insert_state_event(&mut tx, job_id, JobState::Failed.as_str(), error).await?;
        if let Some(rank0) = job.worker_id {
            notify_worker_freed(&mut tx, rank0).await?;
        }
        tx.commit().await?;
        self.job(job_id).await
    }

    /// Ends a worker's attempt with a retryable error: queued again after a backoff, or
    /// failed once the job has used its attempts. From any rank of a gang, it ends the
    /// attempt for every rank.
    pub async fn retry_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        error: &str,
        policy: &Policy,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        let (job, reporter) = lock_attempt_member(&mut tx, worker_id, job_id, attempt).await?;
        let error = attribute_failure(&mut tx, &job, reporter, error).await?;
        retry_or_fail(&mut tx, &job, "retried", &error, policy).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    /// A draining worker hands its job back unfinished: queued again at once, keeping its
    /// checkpoint, and not counted as a failure. A worker hosting any rank of a gang hands
    /// back the whole attempt.
    pub async fn release_job(
        &self,
        worker_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        reason: &str,
    ) -> Result<Job> {
        let mut tx = self.pool.begin().await?;
        lock_attempt_member(&mut tx, worker_id, job_id, attempt).await?;
        // A worker hands jobs back only when it drains: it is leaving. Until it registers
        // again it counts as gone, so the job queued here is not placed back on it (a
        // gang's rank there would never start, and its lease would fail the attempt).
        sqlx::query("UPDATE workers SET disconnected_at = 'infinity' WHERE id = $1")
            .bind(worker_id)
            .execute(&mut *tx)
            .await?;
        requeue(&mut tx, job_id, std::time::Duration::ZERO).await?;
        end_attempt(&mut tx, job_id, attempt, "released", Some(reason)).await?;
        let message = format!("handed back by worker {worker_id}: {reason}");
        insert_state_event(&mut tx, job_id, JobState::Queued.as_str(), &message).await?;
        notify_queued(&mut tx).await?;
        tx.commit().await?;
        self.job(job_id).await
    }

    /// Renews the leases a worker still holds (its jobs, and the ranks it hosts); returns
    /// the job ids it must stop working on (cancelled, or no longer its lease).
    pub async fn heartbeat(
        &self,
        worker_id: Uuid,
        leases: &[(Uuid, i32)],
        lease: std::time::Duration,
    ) -> Result<Vec<Uuid>> {
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = leases.iter().copied().unzip();
        // The job's own lease where the worker holds it (rank 0), and the lease of every
        // other rank it hosts of a current attempt.
        let renewed: Vec<(Uuid,)> = sqlx::query_as(
            "WITH held (id, attempt) AS (SELECT * FROM unnest($2::uuid[], $3::int4[])),
             own AS (
                UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
                 WHERE worker_id = $1 AND state IN ('leased', 'running')
                   AND (id, attempt) IN (SELECT id, attempt FROM held)
                RETURNING id),
             ranks AS (
                UPDATE job_ranks r SET lease_expires_at = now() + make_interval(secs => $4)
                  FROM jobs j
                 WHERE r.worker_id = $1 AND j.id = r.job_id AND j.attempt = r.attempt
                   AND j.state IN ('leased', 'running')
                   AND (r.job_id, r.attempt) IN (SELECT id, attempt FROM held)
                RETURNING r.job_id AS id)
             SELECT id FROM own UNION SELECT id FROM ranks",
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
        // Any rank of a gang may: their weights are the same (a draining worker that
        // hosts no rank 0 checkpoints for the gang it hands back).
        lock_attempt_member(&mut tx, worker_id, job_id, attempt).await?;
        sqlx::query("UPDATE jobs SET checkpoint = $2 WHERE id = $1")
            .bind(job_id)
            .bind(Json(checkpoint))
            .execute(&mut *tx)
            .await?;
        renew_lease(&mut tx, job_id, lease).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes back every job whose lease (or the lease of any of its ranks) has expired
    /// (its worker died, or was cut off):
    /// queued again after a backoff, or failed once it has used its attempts. Safe to
    /// run on every replica at once. Returns how many it took back.
    pub async fn expire_leases(&self, policy: &Policy) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT * FROM jobs j
              WHERE state IN ('leased', 'running')
                AND (lease_expires_at < now()
                     OR EXISTS (SELECT 1 FROM job_ranks r
                                 WHERE r.job_id = j.id AND r.attempt = j.attempt AND r.rank > 0
                                   AND r.lease_expires_at < now()))
              FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let count = rows.len();
        for row in rows {
            let job = Job::try_from(row)?;
            let expired: Option<(i32, Uuid)> = sqlx::query_as(
                "SELECT rank, worker_id FROM job_ranks
                  WHERE job_id = $1 AND attempt = $2 AND rank > 0 AND lease_expires_at < now()
                  ORDER BY rank LIMIT 1",
            )
            .bind(job.id)
            .bind(job.attempt)
            .fetch_optional(&mut *tx)
            .await?;
            let error = match expired {
                Some((rank, worker_id)) => {
                    record_failed_rank(&mut tx, job.id, job.attempt, rank).await?;
                    format!(
                        "the lease of rank {rank} (worker {worker_id}) expired (attempt {})",
                        job.attempt
                    )
                }
                None => format!(
                    "the lease of worker {} expired (attempt {})",
                    job.worker_id.map(|id| id.to_string()).unwrap_or_default(),
                    job.attempt
                ),
            };
            retry_or_fail(&mut tx, &job, "lease_expired", &error, policy).await?;
        }
        tx.commit().await?;
        Ok(count)
    }
}

async fn lock_job(tx: &mut Transaction<'_, Postgres>, job_id: Uuid) -> Result<Job> {
    let row: Option<JobRow> = sqlx::query_as("SELECT * FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Job::try_from)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("job {job_id} does not exist")))
}

/// Locks a job for a report from its worker, refusing anyone but the lease holder.
async fn lock_leased_job(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
) -> Result<Job> {
    let job = lock_job(tx, job_id).await?;
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

/// Locks a job for a report that ends its attempt, from its lease holder or from a
/// worker hosting another rank of the attempt; returns the job and the reporter's rank
/// (its lowest on that worker; 0 for a single-rank job's holder).
async fn lock_attempt_member(
    tx: &mut Transaction<'_, Postgres>,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
) -> Result<(Job, i32)> {
    let hosted: Option<(i32,)> = sqlx::query_as(
        "SELECT min(rank) FROM job_ranks WHERE job_id = $1 AND attempt = $2 AND worker_id = $3
         HAVING count(*) > 0",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((rank,)) = hosted else {
        return Ok((lock_leased_job(tx, worker_id, job_id, attempt).await?, 0));
    };
    let job = lock_job(tx, job_id).await?;
    if job.attempt != attempt || !job.state.is_leased() {
        return Err(Error::LeaseLost(format!(
            "worker {worker_id} no longer holds a rank of job {job_id} (attempt {attempt}); the \
             job is {} at attempt {}: stop working on it",
            job.state.as_str(),
            job.attempt
        )));
    }
    Ok((job, rank))
}

/// Says which rank a gang attempt lost, for the failure `reported` by rank `reporter`: a
/// rank whose worker's assignment stream has closed (a process that died) rather than the
/// survivor that saw its collective fail; records it on the attempt. A single-rank job's
/// error is returned as it is.
async fn attribute_failure(
    tx: &mut Transaction<'_, Postgres>,
    job: &Job,
    reporter: i32,
    reported: &str,
) -> Result<String> {
    if job.requirements.world_size <= 1 {
        return Ok(reported.to_string());
    }
    let lost: Option<(i32, Uuid)> = sqlx::query_as(
        "SELECT r.rank, r.worker_id FROM job_ranks r JOIN workers w ON w.id = r.worker_id
          WHERE r.job_id = $1 AND r.attempt = $2
            AND w.disconnected_at IS NOT NULL AND w.disconnected_at > w.last_seen_at
          ORDER BY r.rank LIMIT 1",
    )
    .bind(job.id)
    .bind(job.attempt)
    .fetch_optional(&mut **tx)
    .await?;
    let (rank, error) = match lost {
        Some((rank, worker_id)) if rank != reporter => (
            rank,
            format!(
                "rank {rank} (worker {worker_id}) was lost: its worker disconnected; rank \
                 {reporter} reported: {reported}"
            ),
        ),
        _ => (reporter, format!("rank {reporter}: {reported}")),
    };
    record_failed_rank(tx, job.id, job.attempt, rank).await?;
    Ok(error)
}

async fn record_failed_rank(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    attempt: i32,
    rank: i32,
) -> Result<()> {
    sqlx::query("UPDATE job_attempts SET failed_rank = $3 WHERE job_id = $1 AND attempt = $2")
        .bind(job_id)
        .bind(attempt)
        .bind(rank)
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
