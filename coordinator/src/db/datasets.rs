//! The `datasets` table: registering a dataset as the next version of its name (the same
//! content twice under one name is refused) and finding one by id or `name[@version]`.
//! Never builds a prost message and never reads a dataset's bytes (`artifacts` does).
//! Reading a row never fails on its statistics: one bad row must not break a listing.

use super::Db;
use super::is_unique_violation;
use crate::domain::Dataset;
use crate::domain::TokenData;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use heirloom_core::{DatasetStatistics, TokenShard};
use sqlx::types::Json;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct DatasetRow {
    id: Uuid,
    name: String,
    version: i32,
    sha256: String,
    size_bytes: i64,
    num_examples: i64,
    num_features: i32,
    num_classes: i32,
    created_at: DateTime<Utc>,
    /// Read as plain JSON and parsed here, so that a row whose statistics do not parse
    /// (NaN stored as `null` before registration refused non-finite data) reads as a
    /// dataset without statistics instead of failing every query that touches it.
    statistics: Option<Json<serde_json::Value>>,
    token_shards: Option<Json<Vec<TokenShard>>>,
    pad_token_id: Option<i32>,
}

impl From<DatasetRow> for Dataset {
    fn from(row: DatasetRow) -> Self {
        Dataset {
            id: row.id,
            name: row.name,
            version: row.version as u32,
            sha256: row.sha256,
            size_bytes: row.size_bytes as u64,
            num_examples: row.num_examples as u64,
            num_features: row.num_features as u32,
            num_classes: row.num_classes as u32,
            created_at: row.created_at,
            tokens: row.token_shards.map(|Json(shards)| TokenData {
                shards,
                pad_token_id: row.pad_token_id.map(|id| id as u32),
            }),
            statistics: row.statistics.and_then(|Json(json)| {
                serde_json::from_value::<DatasetStatistics>(json)
                    .inspect_err(|err| {
                        tracing::warn!(
                            dataset_id = %row.id,
                            error = %err,
                            "dataset statistics do not parse; reading the dataset without them"
                        )
                    })
                    .ok()
            }),
        }
    }
}

impl Db {
    /// Registers the next version of the dataset's name; the same content twice under
    /// one name is refused.
    pub async fn insert_dataset(&self, dataset: &Dataset) -> Result<Dataset> {
        // Two registrations racing for the same next version: one retries.
        for _ in 0..3 {
            let inserted = sqlx::query_as::<_, DatasetRow>(
                "INSERT INTO datasets (id, name, version, sha256, size_bytes, num_examples,
                                       num_features, num_classes, statistics, token_shards,
                                       pad_token_id)
                 SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10
                   FROM datasets WHERE name = $2
                 RETURNING *",
            )
            .bind(dataset.id)
            .bind(&dataset.name)
            .bind(&dataset.sha256)
            .bind(dataset.size_bytes as i64)
            .bind(dataset.num_examples as i64)
            .bind(dataset.num_features as i32)
            .bind(dataset.num_classes as i32)
            .bind(dataset.statistics.as_ref().map(Json))
            .bind(dataset.tokens.as_ref().map(|tokens| Json(&tokens.shards)))
            .bind(
                dataset
                    .tokens
                    .as_ref()
                    .and_then(|tokens| tokens.pad_token_id)
                    .map(|id| id as i32),
            )
            .fetch_one(&self.pool)
            .await;
            match inserted {
                Ok(row) => return Ok(row.into()),
                Err(err) if is_unique_violation(&err, "datasets_name_sha256_unique") => {
                    return Err(Error::AlreadyExists(format!(
                        "content: dataset {:?} already holds this content (sha256 {}); \
                         register changed content to add a version",
                        dataset.name, dataset.sha256
                    )));
                }
                Err(err) if is_unique_violation(&err, "datasets_name_version_unique") => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Internal("dataset version kept colliding".into()))
    }

    pub async fn dataset(&self, id: Uuid) -> Result<Dataset> {
        sqlx::query_as::<_, DatasetRow>("SELECT * FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(Dataset::from)
            .ok_or_else(|| Error::NotFound(format!("dataset {id} does not exist")))
    }

    /// A dataset by id, `name@version`, or name (its latest version).
    pub async fn find_dataset(&self, reference: &str) -> Result<Dataset> {
        super::check_reference(reference)?;
        if let Ok(id) = Uuid::parse_str(reference) {
            return self.dataset(id).await;
        }
        let (name, version) = super::split_version("dataset", reference)?;
        self.dataset_named(name, version).await
    }

    /// A dataset by name: that version, or the latest one.
    pub async fn dataset_named(&self, name: &str, version: Option<i32>) -> Result<Dataset> {
        sqlx::query_as::<_, DatasetRow>(
            "SELECT * FROM datasets WHERE name = $1 AND ($2::int4 IS NULL OR version = $2)
              ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .map(Dataset::from)
        .ok_or_else(|| {
            Error::NotFound(match version {
                Some(version) => format!("no dataset is \"{name}@{version}\""),
                None => format!("no dataset is named {name:?}"),
            })
        })
    }

    pub async fn datasets(&self) -> Result<Vec<Dataset>> {
        let rows: Vec<DatasetRow> = sqlx::query_as("SELECT * FROM datasets ORDER BY name, version")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Dataset::from).collect())
    }
}
