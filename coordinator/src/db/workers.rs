use super::{Db, JOBS_CHANNEL};
use crate::domain::Device;
use crate::error::Result;
use std::collections::HashMap;
use uuid::Uuid;

impl Db {
    pub async fn insert_worker(
        &self,
        name: &str,
        devices: &[Device],
        labels: &HashMap<String, String>,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO workers (id, name, devices, labels) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(sqlx::types::Json(devices))
            .bind(sqlx::types::Json(labels))
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn worker_exists(&self, id: Uuid) -> Result<bool> {
        let found: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM workers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Gives back to the queue the jobs leased on one assignment stream that has closed
    /// (`leases`: job id and attempt), unless they have moved on since; returns their ids.
    /// Only that stream's leases: the worker may already be running a job it was given on
    /// a newer stream.
    pub async fn requeue_leases(
        &self,
        worker_id: Uuid,
        leases: &[(Uuid, i32)],
    ) -> Result<Vec<Uuid>> {
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = leases.iter().copied().unzip();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, updated_at = now()
             WHERE worker_id = $1 AND state IN ('leased', 'running')
               AND (id, attempt) IN (SELECT * FROM unnest($2::uuid[], $3::int4[]))
            RETURNING id",
        )
        .bind(worker_id)
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&mut *tx)
        .await?;
        for (id,) in &ids {
            super::jobs::insert_state_event(
                &mut tx,
                *id,
                "queued",
                "worker disconnected; job requeued",
            )
            .await?;
        }
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}
