use super::Db;
use crate::domain::Dataset;
use crate::error::{Error, Result, is_unique_violation};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct DatasetRow {
    id: Uuid,
    name: String,
    sha256: String,
    size_bytes: i64,
    num_examples: i64,
    num_features: i32,
    num_classes: i32,
    path: String,
    created_at: DateTime<Utc>,
}

impl From<DatasetRow> for Dataset {
    fn from(row: DatasetRow) -> Self {
        Dataset {
            id: row.id,
            name: row.name,
            sha256: row.sha256,
            size_bytes: row.size_bytes as u64,
            num_examples: row.num_examples as u64,
            num_features: row.num_features as u32,
            num_classes: row.num_classes as u32,
            path: row.path,
            created_at: row.created_at,
        }
    }
}

impl Db {
    pub async fn insert_dataset(&self, dataset: &Dataset) -> Result<Dataset> {
        let row: DatasetRow = sqlx::query_as(
            "INSERT INTO datasets
                 (id, name, sha256, size_bytes, num_examples, num_features, num_classes, path)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING *",
        )
        .bind(dataset.id)
        .bind(&dataset.name)
        .bind(&dataset.sha256)
        .bind(dataset.size_bytes as i64)
        .bind(dataset.num_examples as i64)
        .bind(dataset.num_features as i32)
        .bind(dataset.num_classes as i32)
        .bind(&dataset.path)
        .fetch_one(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err, "datasets_name_unique") {
                Error::AlreadyExists(format!(
                    "name: a dataset named {:?} exists already; choose another name",
                    dataset.name
                ))
            } else {
                err.into()
            }
        })?;
        Ok(row.into())
    }

    pub async fn dataset(&self, id: Uuid) -> Result<Dataset> {
        sqlx::query_as::<_, DatasetRow>("SELECT * FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(Dataset::from)
            .ok_or_else(|| Error::NotFound(format!("dataset {id} does not exist")))
    }

    pub async fn datasets(&self) -> Result<Vec<Dataset>> {
        let rows: Vec<DatasetRow> =
            sqlx::query_as("SELECT * FROM datasets ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(Dataset::from).collect())
    }
}
