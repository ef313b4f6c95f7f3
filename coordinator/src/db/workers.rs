use super::Db;
use crate::domain::Device;
use crate::error::Result;
use std::collections::HashMap;
use uuid::Uuid;

impl Db {
    /// Registers a worker, or updates the one with `id` (a worker reconnecting keeps its
    /// id, and so its leases).
    pub async fn upsert_worker(
        &self,
        id: Option<Uuid>,
        name: &str,
        devices: &[Device],
        labels: &HashMap<String, String>,
        concurrency: i32,
    ) -> Result<Uuid> {
        let id = id.unwrap_or_else(Uuid::new_v4);
        sqlx::query(
            "INSERT INTO workers (id, name, devices, labels, concurrency)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE
                SET name = excluded.name, devices = excluded.devices, labels = excluded.labels,
                    concurrency = excluded.concurrency, last_seen_at = now()",
        )
        .bind(id)
        .bind(name)
        .bind(sqlx::types::Json(devices))
        .bind(sqlx::types::Json(labels))
        .bind(concurrency)
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
}
