//! The `workers` table: registering (and re-registering) a worker under its token, who
//! owns which worker, which workers are connected (`last_seen_at`, kept fresh by each
//! open assignment stream), and which blobs a token's leased jobs need. Never builds a
//! prost message; leases themselves live in `queue.rs`.

use super::Db;
use crate::domain::{ConnectedWorker, Device};
use crate::error::{Error, Result};
use sqlx::types::Json;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ConnectedRow {
    id: Uuid,
    name: String,
    devices: Json<Vec<Device>>,
    labels: Json<BTreeMap<String, String>>,
    concurrency: i32,
    busy: i64,
    collective_address: String,
    collective_port: i32,
}

/// What a worker says of itself when it registers.
#[derive(Debug, Clone)]
pub struct WorkerOffer<'a> {
    pub name: &'a str,
    pub devices: &'a [Device],
    pub labels: &'a HashMap<String, String>,
    /// Slots: jobs (or ranks of gangs) it runs at once.
    pub concurrency: i32,
    /// Where its ranks of gangs meet their peers: address and store port.
    pub collective: Option<(&'a str, u16)>,
}

impl Db {
    /// Registers a worker owned by `token_id`, or updates the one with `id` (a worker
    /// reconnecting keeps its id, and so its leases) if that token owns it.
    pub async fn upsert_worker(
        &self,
        token_id: Uuid,
        id: Option<Uuid>,
        offer: &WorkerOffer<'_>,
    ) -> Result<Uuid> {
        let id = id.unwrap_or_else(Uuid::new_v4);
        let (collective_address, collective_port) = offer.collective.unwrap_or(("", 0));
        let written = sqlx::query(
            "INSERT INTO workers (id, name, devices, labels, concurrency, token_id,
                                  collective_address, collective_port)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE
                SET name = excluded.name, devices = excluded.devices, labels = excluded.labels,
                    concurrency = excluded.concurrency, last_seen_at = now(),
                    disconnected_at = NULL,
                    collective_address = excluded.collective_address,
                    collective_port = excluded.collective_port
                WHERE workers.token_id = excluded.token_id",
        )
        .bind(id)
        .bind(offer.name)
        .bind(sqlx::types::Json(offer.devices))
        .bind(sqlx::types::Json(offer.labels))
        .bind(offer.concurrency)
        .bind(token_id)
        .bind(collective_address)
        .bind(i32::from(collective_port))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if written == 0 {
            return Err(not_yours(id));
        }
        Ok(id)
    }

    /// Checks that worker `id` exists and that `token_id` registered it.
    pub async fn check_worker_owner(&self, id: Uuid, token_id: Uuid) -> Result<()> {
        let found: Option<(Option<Uuid>,)> =
            sqlx::query_as("SELECT token_id FROM workers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        match found {
            None => Err(Error::NotFound(format!(
                "worker {id} is not registered; call RegisterWorker first"
            ))),
            Some((owner,)) if owner != Some(token_id) => Err(not_yours(id)),
            Some(_) => Ok(()),
        }
    }

    /// Records that the worker is connected now: every replica's dispatcher does, while
    /// the worker's assignment stream is open.
    pub async fn mark_worker_seen(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE workers SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the worker's assignment stream closed: it counts as connected again
    /// once it is seen again (it registers, and its next stream opens).
    pub async fn mark_worker_disconnected(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE workers SET disconnected_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The workers seen within `within` (connected to any replica), with the jobs each
    /// holds now.
    pub async fn connected_workers(&self, within: Duration) -> Result<Vec<ConnectedWorker>> {
        let rows: Vec<ConnectedRow> = sqlx::query_as(
            "SELECT w.id, w.name, w.devices, w.labels, w.concurrency,
                    worker_busy(w.id) AS busy, w.collective_address, w.collective_port
               FROM workers w
              WHERE w.last_seen_at > now() - make_interval(secs => $1)
                AND (w.disconnected_at IS NULL OR w.disconnected_at < w.last_seen_at)
              ORDER BY w.name, w.id",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ConnectedWorker::from).collect())
    }

    /// Whether a job leased to a worker of `token_id` (or with a rank on one) needs this
    /// blob: a parent's tensor or program, its own architecture's program, its dataset (or
    /// a shard of it), or its checkpoint's tensors.
    pub async fn lease_needs_blob(&self, token_id: Uuid, sha256: &str) -> Result<bool> {
        let (needed,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (
                SELECT 1 FROM jobs j JOIN workers w
                    ON w.id = j.worker_id
                       OR w.id IN (SELECT r.worker_id FROM job_ranks r
                                    WHERE r.job_id = j.id AND r.attempt = j.attempt)
                WHERE w.token_id = $1 AND j.state IN ('leased', 'running') AND (
                    EXISTS (SELECT 1 FROM datasets d
                            WHERE d.id = j.dataset_id AND d.sha256 = $2)
                    OR EXISTS (SELECT 1 FROM datasets d, jsonb_array_elements(d.token_shards) s
                               WHERE d.id = j.dataset_id AND s->>'sha256' = $2)
                    OR j.spec->'architecture'->'torchscript'->>'program_sha256' = $2
                    OR EXISTS (SELECT 1 FROM jsonb_array_elements(j.checkpoint->'tensors') t
                               WHERE t->>'sha256' = $2)
                    OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(j.spec->'parents') p
                               JOIN model_tensors mt ON mt.model_id = p::uuid
                               WHERE mt.sha256 = $2)
                    OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(j.spec->'parents') p
                               JOIN models m ON m.id = p::uuid
                               WHERE m.architecture->'torchscript'->>'program_sha256' = $2)))",
        )
        .bind(token_id)
        .bind(sha256)
        .fetch_one(&self.pool)
        .await?;
        Ok(needed)
    }
}

impl From<ConnectedRow> for ConnectedWorker {
    fn from(row: ConnectedRow) -> Self {
        let collective = u16::try_from(row.collective_port)
            .ok()
            .filter(|&port| port > 0)
            .map(|port| (row.collective_address, port));
        ConnectedWorker {
            id: row.id,
            name: row.name,
            devices: row.devices.0,
            labels: row.labels.0,
            concurrency: row.concurrency.max(0) as u32,
            busy: u32::try_from(row.busy).unwrap_or(u32::MAX),
            collective,
        }
    }
}

/// Locks the rows of the workers seen within `within`, in id order (every gang placement
/// takes them in the same order, so two never deadlock), then reads them with the slots
/// their leases take, as committed after the locks were taken.
pub(super) async fn lock_connected_workers(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    within: Duration,
) -> Result<Vec<ConnectedWorker>> {
    let locked: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM workers
          WHERE last_seen_at > now() - make_interval(secs => $1)
            AND (disconnected_at IS NULL OR disconnected_at < last_seen_at)
          ORDER BY id FOR UPDATE",
    )
    .bind(within.as_secs_f64())
    .fetch_all(&mut **tx)
    .await?;
    let ids: Vec<Uuid> = locked.into_iter().map(|(id,)| id).collect();
    // A statement of its own: under READ COMMITTED it sees every claim committed before
    // the locks were granted.
    let rows: Vec<ConnectedRow> = sqlx::query_as(
        "SELECT w.id, w.name, w.devices, w.labels, w.concurrency,
                worker_busy(w.id) AS busy, w.collective_address, w.collective_port
           FROM workers w WHERE w.id = ANY($1) ORDER BY w.id",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(ConnectedWorker::from).collect())
}

fn not_yours(id: Uuid) -> Error {
    Error::PermissionDenied(format!(
        "worker {id} was registered with another token: a worker token acts only for the \
         workers it registered"
    ))
}
