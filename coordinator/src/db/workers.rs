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

    pub async fn touch_worker(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE workers SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives the jobs a disconnected worker held back to the queue; returns their ids.
    pub async fn requeue_worker_jobs(&self, worker_id: Uuid) -> Result<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE jobs SET state = 'queued', worker_id = NULL, updated_at = now()
             WHERE worker_id = $1 AND state IN ('leased', 'running')
             RETURNING id",
        )
        .bind(worker_id)
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
