//! The `recipes` table: inserting version 1 of a name or the next version of one,
//! finding a recipe by id or `name[@version]`, walking a recipe's family and the models
//! made with it. Never builds a prost message; never parses or merges a recipe body
//! (`crate::recipes` does).

use super::is_unique_violation;
use super::models::ModelRow;
use super::{Db, check_reference, split_version};
use crate::domain::{JobKind, Model, RecipeRecord, RecipeRef};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct RecipeRow {
    id: Uuid,
    name: String,
    version: i32,
    kind: String,
    body: Json<Value>,
    patch: Option<Json<Value>>,
    created_at: DateTime<Utc>,
    parent_id: Option<Uuid>,
    parent_name: Option<String>,
    parent_version: Option<i32>,
    source_model_id: Option<Uuid>,
    source_model_name: Option<String>,
}

impl TryFrom<RecipeRow> for RecipeRecord {
    type Error = Error;

    fn try_from(row: RecipeRow) -> Result<RecipeRecord> {
        let kind: JobKind = serde_json::from_value(Value::String(row.kind.clone()))
            .map_err(|_| Error::Internal(format!("unknown recipe kind {:?}", row.kind)))?;
        Ok(RecipeRecord {
            reference: RecipeRef {
                id: row.id,
                name: row.name,
                version: row.version as u32,
            },
            kind,
            body: row.body.0,
            derived_from: match (row.parent_id, row.parent_name, row.parent_version) {
                (Some(id), Some(name), Some(version)) => Some(RecipeRef {
                    id,
                    name,
                    version: version as u32,
                }),
                _ => None,
            },
            patch: row.patch.map(|json| json.0),
            source_model: row.source_model_id.zip(row.source_model_name),
            created_at: row.created_at,
        })
    }
}

/// Recipes with the name and version of the one each was derived from.
macro_rules! select_recipes {
    () => {
        "SELECT r.*, p.name AS parent_name, p.version AS parent_version,
                m.name AS source_model_name
           FROM recipes r
           LEFT JOIN recipes p ON p.id = r.parent_id
           LEFT JOIN models m ON m.id = r.source_model_id"
    };
}

/// A recipe to store: its body is canonical already.
pub struct NewRecipe<'a> {
    pub name: &'a str,
    pub kind: JobKind,
    pub body: &'a Value,
    /// The recipe it derives from and the patch that made it.
    pub derived_from: Option<(Uuid, &'a Value)>,
    pub source_model_id: Option<Uuid>,
    /// Add the next version of an existing name (a derivation under the same name)
    /// rather than refuse a taken name.
    pub next_version: bool,
}

impl Db {
    /// Stores a recipe as version 1 of a new name, or as the next version of its name.
    pub async fn insert_recipe(&self, recipe: &NewRecipe<'_>) -> Result<RecipeRecord> {
        let id = Uuid::new_v4();
        // Two derivations racing for the same next version: one retries.
        for _ in 0..3 {
            let inserted: std::result::Result<Option<(Uuid,)>, sqlx::Error> = sqlx::query_as(
                "INSERT INTO recipes (id, name, version, kind, body, parent_id, patch,
                                      source_model_id)
                 SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7
                   FROM recipes WHERE name = $2
                 HAVING $8 OR count(*) = 0
                 RETURNING id",
            )
            .bind(id)
            .bind(recipe.name)
            .bind(recipe.kind.as_str())
            .bind(Json(recipe.body))
            .bind(recipe.derived_from.map(|(parent, _)| parent))
            .bind(recipe.derived_from.map(|(_, patch)| Json(patch)))
            .bind(recipe.source_model_id)
            .bind(recipe.next_version)
            .fetch_optional(&self.pool)
            .await;
            match inserted {
                Ok(Some(_)) => return self.recipe(id).await,
                Ok(None) => {
                    return Err(Error::AlreadyExists(format!(
                        "name: a recipe named {:?} exists already; derive a new version of it \
                         (DeriveRecipe, `heirloom recipe derive`) or choose another name",
                        recipe.name
                    )));
                }
                Err(err) if is_unique_violation(&err, "recipes_name_version_unique") => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Internal("recipe version kept colliding".into()))
    }

    pub async fn recipe(&self, id: Uuid) -> Result<RecipeRecord> {
        sqlx::query_as::<_, RecipeRow>(concat!(select_recipes!(), " WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("recipe {id} does not exist")))?
            .try_into()
    }

    /// A recipe by id, `name@version`, or name (its latest version).
    pub async fn find_recipe(&self, reference: &str) -> Result<RecipeRecord> {
        check_reference(reference)?;
        if let Ok(id) = Uuid::parse_str(reference) {
            return self.recipe(id).await;
        }
        let (name, version) = split_version("recipe", reference)?;
        sqlx::query_as::<_, RecipeRow>(concat!(
            select_recipes!(),
            " WHERE r.name = $1 AND ($2::int4 IS NULL OR r.version = $2)
              ORDER BY r.version DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no recipe is {reference:?}: `heirloom recipe list` shows them"
            ))
        })?
        .try_into()
    }

    pub async fn recipes(&self) -> Result<Vec<RecipeRecord>> {
        let rows: Vec<RecipeRow> =
            sqlx::query_as(concat!(select_recipes!(), " ORDER BY r.name, r.version"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(RecipeRecord::try_from).collect()
    }

    /// The recipe and every recipe derived from it, at any depth, with that depth.
    pub async fn recipe_family(&self, id: Uuid) -> Result<Vec<(RecipeRecord, u32)>> {
        let found: Vec<(Uuid, i32)> = sqlx::query_as(
            "WITH RECURSIVE family (id, depth) AS (
                 SELECT id, 0 FROM recipes WHERE id = $1
                 UNION ALL
                 SELECT r.id, f.depth + 1 FROM recipes r JOIN family f ON r.parent_id = f.id
             )
             SELECT id, depth FROM family ORDER BY depth, id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut family = Vec::with_capacity(found.len());
        for (id, depth) in found {
            family.push((self.recipe(id).await?, depth as u32));
        }
        Ok(family)
    }

    /// The models made with any of these recipes, oldest first.
    pub async fn models_made_with(&self, recipe_ids: &[Uuid]) -> Result<Vec<Model>> {
        let rows: Vec<ModelRow> = sqlx::query_as(concat!(
            super::models::select_models!(),
            " WHERE m.recipe_id = ANY($1) ORDER BY m.created_at, m.id"
        ))
        .bind(recipe_ids)
        .fetch_all(&self.pool)
        .await?;
        self.with_parents(rows).await
    }
}
