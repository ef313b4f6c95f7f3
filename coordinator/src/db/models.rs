//! The `models` table and what hangs off it: inserting an imported model with its
//! tensors, finding models, their parents, tensors and manifests; and the blob references
//! garbage collection relies on (MissingBlobs' holds are written in `quotas.rs`). Never
//! builds a prost message and never touches a blob's bytes (`artifacts` does).

use super::is_unique_violation;
use super::{Db, check_reference};
use crate::artifacts::ManifestEntry;
use crate::domain::{
    DatasetRef, Metrics, Model, ParentEdge, RecipeRef, Relation, TensorProvenance, TensorRecord,
};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use heirloom_core::{Architecture, TensorInfo, TensorStatus};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Rows of `model_tensors` written by one INSERT.
const TENSORS_PER_STATEMENT: usize = 5_000;
/// The advisory lock a garbage collection holds exclusively and MissingBlobs shares.
pub(super) const GARBAGE_COLLECTION_LOCK: i64 = 0x6865_6972_6c6f_6f6d; // "heirloom"

/// The garbage collection lock, held from [`Db::begin_garbage_collection`] until
/// [`CollectionLock::release`] (or until dropped, which also releases it).
pub struct CollectionLock(sqlx::Transaction<'static, sqlx::Postgres>);

impl CollectionLock {
    /// Ends the collection, committing the expired holds it dropped.
    pub async fn release(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ModelRow {
    id: Uuid,
    name: String,
    architecture: Json<Architecture>,
    weights_sha256: String,
    weights_bytes: i64,
    source: String,
    job_id: Option<Uuid>,
    metrics: Option<Json<Metrics>>,
    created_at: DateTime<Utc>,
    dataset_id: Option<Uuid>,
    dataset_name: Option<String>,
    dataset_version: Option<i32>,
    dataset_sha256: Option<String>,
    dataset_role: Option<String>,
    recipe_id: Option<Uuid>,
    recipe_name: Option<String>,
    recipe_version: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct TensorRow {
    name: String,
    sha256: String,
    dtype: String,
    shape: Vec<i64>,
    status: String,
    origin_model_id: Option<Uuid>,
    origin_tensor: Option<String>,
    origin_model_name: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ParentRow {
    child_id: Uuid,
    parent_id: Uuid,
    parent_name: String,
    relation: String,
    details: Json<serde_json::Value>,
}

/// Models with their training dataset; a macro so that queries stay `concat!` literals.
macro_rules! select_models {
    () => {
        "SELECT m.*, d.id AS dataset_id, d.name AS dataset_name, d.version AS dataset_version,
                d.sha256 AS dataset_sha256, md.role AS dataset_role,
                r.name AS recipe_name, r.version AS recipe_version
           FROM models m
           LEFT JOIN model_datasets md ON md.model_id = m.id
           LEFT JOIN datasets d ON d.id = md.dataset_id
           LEFT JOIN recipes r ON r.id = m.recipe_id"
    };
}
pub(super) use select_models;

impl Db {
    /// The models with these ids, by id.
    pub async fn models_with_ids(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Model>> {
        let rows: Vec<ModelRow> =
            sqlx::query_as(concat!(select_models!(), " WHERE m.id = ANY($1)"))
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(self
            .with_parents(rows)
            .await?
            .into_iter()
            .map(|model| (model.id, model))
            .collect())
    }

    pub async fn insert_imported_model(
        &self,
        model: &Model,
        tensors: &[TensorRecord],
    ) -> Result<Model> {
        let mut tx = self.pool.begin().await?;
        self.check_model_name_free(&model.name).await?;
        sqlx::query(
            "INSERT INTO models (id, name, architecture, weights_sha256, weights_bytes, source)
             VALUES ($1, $2, $3, $4, $5, 'import')",
        )
        .bind(model.id)
        .bind(&model.name)
        .bind(Json(&model.architecture))
        .bind(&model.weights_sha256)
        .bind(model.weights_bytes as i64)
        .execute(&mut *tx)
        .await
        .map_err(|err| name_taken(err, &model.name))?;
        insert_tensors(&mut tx, model.id, tensors).await?;
        tx.commit().await?;
        self.model(model.id).await
    }

    /// Every tensor of a model with its provenance, in name order.
    pub async fn model_tensors(&self, model_id: Uuid) -> Result<Vec<TensorProvenance>> {
        let rows: Vec<TensorRow> = sqlx::query_as(
            "SELECT t.name, t.sha256, t.dtype, t.shape, t.status, t.origin_model_id,
                    t.origin_tensor, o.name AS origin_model_name
               FROM model_tensors t LEFT JOIN models o ON o.id = t.origin_model_id
              WHERE t.model_id = $1 ORDER BY t.name",
        )
        .bind(model_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let status = TensorStatus::parse(&row.status).ok_or_else(|| {
                    Error::Internal(format!("unknown tensor status {:?}", row.status))
                })?;
                Ok(TensorProvenance {
                    record: TensorRecord {
                        name: row.name,
                        sha256: row.sha256,
                        dtype: row.dtype,
                        shape: row.shape.into_iter().map(|d| d as u64).collect(),
                        status,
                        origin: row.origin_model_id.zip(row.origin_tensor),
                    },
                    origin_model_name: row.origin_model_name,
                })
            })
            .collect()
    }

    /// A model's manifest: each tensor's name, dtype, shape and hash, in name order.
    pub async fn manifest(&self, model_id: Uuid) -> Result<Vec<ManifestEntry>> {
        let rows: Vec<(String, String, Vec<i64>, String)> = sqlx::query_as(
            "SELECT name, dtype, shape, sha256 FROM model_tensors WHERE model_id = $1 ORDER BY name",
        )
        .bind(model_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, dtype, shape, sha256)| ManifestEntry {
                info: TensorInfo {
                    name,
                    dtype,
                    shape: shape.into_iter().map(|d| d as usize).collect(),
                },
                sha256,
            })
            .collect())
    }

    /// Starts a garbage collection: takes the collection lock (MissingBlobs waits while
    /// it is held), drops expired holds and upload usage, and returns every blob that the
    /// lineage or an unfinished job's checkpoint references, or that a hold keeps. The
    /// lock lasts until the transaction ends.
    pub async fn begin_garbage_collection(&self) -> Result<(CollectionLock, HashSet<String>)> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(GARBAGE_COLLECTION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blob_holds WHERE held_until < now()")
            .execute(&mut *tx)
            .await?;
        // Upload usage of tokens that stopped uploading, which nothing else would clear.
        sqlx::query("DELETE FROM upload_usage WHERE minute <= now() - interval '1 hour'")
            .execute(&mut *tx)
            .await?;
        // Blob names are hashes, so the kinds cannot collide.
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "SELECT sha256 FROM model_tensors
             UNION SELECT sha256 FROM datasets
             UNION SELECT shard->>'sha256' FROM datasets,
                          jsonb_array_elements(token_shards) AS shard
             UNION SELECT architecture->'torchscript'->>'program_sha256' FROM models
                    WHERE architecture ? 'torchscript'
             UNION SELECT sha256 FROM blob_holds
             UNION SELECT tensor->>'sha256' FROM jobs,
                          jsonb_array_elements(checkpoint->'tensors') AS tensor
                    WHERE state IN ('queued', 'leased', 'running')",
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok((
            CollectionLock(tx),
            rows.into_iter().filter_map(|(sha,)| sha).collect(),
        ))
    }

    /// A model's tensor hashes by name.
    pub async fn tensor_hashes(&self, model_id: Uuid) -> Result<HashMap<String, String>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, sha256 FROM model_tensors WHERE model_id = $1")
                .bind(model_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn model(&self, id: Uuid) -> Result<Model> {
        self.models_with_ids(&[id])
            .await?
            .remove(&id)
            .ok_or_else(|| Error::NotFound(format!("model {id} does not exist")))
    }

    /// A model by id or, failing that, by name.
    pub async fn find_model(&self, id_or_name: &str) -> Result<Model> {
        check_reference(id_or_name)?;
        if let Ok(id) = Uuid::parse_str(id_or_name) {
            return self.model(id).await;
        }
        self.model_named(id_or_name).await
    }

    /// A model by name.
    pub async fn model_named(&self, name: &str) -> Result<Model> {
        // Its own statement, so the plan uses models_name_unique: a statement that takes
        // either an id or a name scans the table.
        let row: Option<ModelRow> = sqlx::query_as(concat!(select_models!(), " WHERE m.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or_else(|| Error::NotFound(format!("no model is named {name:?}")))?;
        Ok(self.with_parents(vec![row]).await?.remove(0))
    }

    /// The job in progress that holds `name` for its model (jobs_model_name_active).
    pub async fn job_holding_name(&self, name: &str) -> Result<Option<Uuid>> {
        let held: Option<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE model_name = $1 AND state NOT IN ('failed', 'cancelled')",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.map(|(id,)| id))
    }

    /// Refuses (ALREADY_EXISTS) a name a model has or a job in progress will give its
    /// model. Asked before anything is stored; the unique constraints decide races.
    pub async fn check_model_name_free(&self, name: &str) -> Result<()> {
        if let Some(job_id) = self.job_holding_name(name).await? {
            return Err(Error::AlreadyExists(format!(
                "name: job {job_id} will create a model named {name:?}; choose another name"
            )));
        }
        if self.model_name_exists(name).await? {
            return Err(Error::AlreadyExists(format!(
                "model name {name:?} is taken by a model or a job in progress; choose another name"
            )));
        }
        Ok(())
    }

    pub async fn model_name_exists(&self, name: &str) -> Result<bool> {
        let found: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    pub async fn all_models(&self) -> Result<Vec<Model>> {
        let rows: Vec<ModelRow> =
            sqlx::query_as(concat!(select_models!(), " ORDER BY m.created_at, m.id"))
                .fetch_all(&self.pool)
                .await?;
        self.with_parents(rows).await
    }

    pub(super) async fn with_parents(&self, rows: Vec<ModelRow>) -> Result<Vec<Model>> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let edges: Vec<ParentRow> = sqlx::query_as(
            "SELECT e.child_id, e.parent_id, p.name AS parent_name, e.relation, e.details
               FROM model_parents e JOIN models p ON p.id = e.parent_id
              WHERE e.child_id = ANY($1)
              ORDER BY p.created_at, p.id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut parents: HashMap<Uuid, Vec<ParentEdge>> = HashMap::new();
        for edge in edges {
            let relation = Relation::parse(&edge.relation).ok_or_else(|| {
                Error::Internal(format!(
                    "unknown relation {:?} in the database",
                    edge.relation
                ))
            })?;
            parents.entry(edge.child_id).or_default().push(ParentEdge {
                parent_id: edge.parent_id,
                parent_name: edge.parent_name,
                relation,
                details: edge.details.0,
            });
        }
        Ok(rows
            .into_iter()
            .map(|row| Model {
                parents: parents.remove(&row.id).unwrap_or_default(),
                id: row.id,
                name: row.name,
                architecture: row.architecture.0,
                weights_sha256: row.weights_sha256,
                weights_bytes: row.weights_bytes as u64,
                source: row.source,
                job_id: row.job_id,
                dataset: match (
                    row.dataset_id,
                    row.dataset_name,
                    row.dataset_version,
                    row.dataset_sha256,
                ) {
                    (Some(id), Some(name), Some(version), Some(sha256)) => Some(DatasetRef {
                        id,
                        name,
                        version: version as u32,
                        sha256,
                        role: row.dataset_role.unwrap_or_default(),
                    }),
                    _ => None,
                },
                metrics: row.metrics.map(|metrics| metrics.0),
                created_at: row.created_at,
                recipe: match (row.recipe_id, row.recipe_name, row.recipe_version) {
                    (Some(id), Some(name), Some(version)) => Some(RecipeRef {
                        id,
                        name,
                        version: version as u32,
                    }),
                    _ => None,
                },
            })
            .collect())
    }
}

pub(super) async fn insert_tensors(
    tx: &mut Transaction<'_, Postgres>,
    model_id: Uuid,
    tensors: &[TensorRecord],
) -> Result<()> {
    // Thousands of rows per statement instead of a round trip per tensor. Each column
    // travels as an array; shapes differ in length, and a Postgres array is rectangular,
    // so each shape travels as the text of its own array.
    for chunk in tensors.chunks(TENSORS_PER_STATEMENT) {
        let column = |field: fn(&TensorRecord) -> Option<String>| -> Vec<Option<String>> {
            chunk.iter().map(field).collect()
        };
        let origin_models: Vec<Option<Uuid>> = chunk
            .iter()
            .map(|tensor| tensor.origin.as_ref().map(|(id, _)| *id))
            .collect();
        sqlx::query(
            "INSERT INTO model_tensors
                 (model_id, name, sha256, dtype, shape, status, origin_model_id, origin_tensor)
             SELECT $1, name, sha256, dtype, shape::bigint[], status, origin_model_id, origin_tensor
               FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::uuid[], $8::text[])
                    AS t(name, sha256, dtype, shape, status, origin_model_id, origin_tensor)",
        )
        .bind(model_id)
        .bind(column(|t| Some(t.name.clone())))
        .bind(column(|t| Some(t.sha256.clone())))
        .bind(column(|t| Some(t.dtype.clone())))
        .bind(column(|t| Some(shape_literal(&t.shape))))
        .bind(column(|t| Some(t.status.as_str().to_string())))
        .bind(origin_models)
        .bind(column(|t| t.origin.as_ref().map(|(_, name)| name.clone())))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A shape as a Postgres array literal: `{16,8}`; `{}` for a scalar.
fn shape_literal(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("{{{}}}", dims.join(","))
}

pub(super) fn name_taken(err: sqlx::Error, name: &str) -> Error {
    if is_unique_violation(&err, "models_name_unique")
        || is_unique_violation(&err, "jobs_model_name_active")
    {
        Error::AlreadyExists(format!(
            "model name {name:?} is taken by a model or a job in progress; choose another name"
        ))
    } else {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::shape_literal;

    #[test]
    fn shapes_are_written_as_array_literals() {
        assert_eq!(shape_literal(&[16, 8]), "{16,8}");
        assert_eq!(shape_literal(&[5]), "{5}");
        assert_eq!(shape_literal(&[]), "{}");
    }
}
