//! Lineage questions, each answered by one recursive query over `model_parents` (or, for
//! blame, over `model_tensors`' origins) — never one round trip per hop.
//!
//! Indexes the walks rely on: `model_parents`' primary key (child_id, parent_id) takes a
//! step up, `model_parents_by_parent` a step down, `model_datasets_by_dataset` finds the
//! models trained on a dataset, and `model_tensors`' primary key (model_id, name) follows
//! a tensor to its origin. Every walk keeps each (model, depth) pair once (`UNION`), so a
//! diamond is not walked twice at the same depth; the graph is acyclic by construction,
//! so every walk ends. Never builds a prost message; pages and graphs become messages in
//! `grpc/convert.rs`.

use super::Db;
use crate::domain::Model;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use heirloom_core::TensorStatus;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// One page of a lineage walk: what each model is called and how far away it is; the
/// whole models come from `Db::models_with_ids` when they are wanted.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Reached>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<u64>,
}

/// A model a walk reached, at its shortest distance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reached {
    pub id: Uuid,
    pub name: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub depth: i32,
}

/// The graph around a model: its nodes and the edges among them.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Model>,
    /// (parent, child, relation)
    pub edges: Vec<(Uuid, Uuid, String)>,
}

/// One hop of a tensor's provenance.
#[derive(Debug, Clone)]
pub struct BlameStep {
    pub model_id: Uuid,
    pub model_name: String,
    pub tensor: String,
    pub status: TensorStatus,
    pub sha256: String,
}

/// The first depth bound of an iteratively deepened walk.
const FIRST_BOUND: u32 = 4;

/// Which way a walk goes.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// The recursive walk from `$1` (model) to depth `$2` (0: no limit) along edges whose
/// relation is in `$3` (NULL: any), as `reached(id, depth)` with each model's shortest
/// distance.
fn walk_sql(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => {
            "WITH RECURSIVE walk(id, depth) AS (
                 SELECT parent_id, 1 FROM model_parents
                  WHERE child_id = $1 AND ($3::text[] IS NULL OR relation = ANY($3))
                 UNION
                 SELECT e.parent_id, w.depth + 1 FROM model_parents e JOIN walk w ON e.child_id = w.id
                  WHERE ($2 = 0 OR w.depth < $2) AND ($3::text[] IS NULL OR e.relation = ANY($3))),
             reached AS (SELECT id, min(depth) AS depth FROM walk GROUP BY id)"
        }
        Direction::Down => {
            "WITH RECURSIVE walk(id, depth) AS (
                 SELECT child_id, 1 FROM model_parents
                  WHERE parent_id = $1 AND ($3::text[] IS NULL OR relation = ANY($3))
                 UNION
                 SELECT e.child_id, w.depth + 1 FROM model_parents e JOIN walk w ON e.parent_id = w.id
                  WHERE ($2 = 0 OR w.depth < $2) AND ($3::text[] IS NULL OR e.relation = ANY($3))),
             reached AS (SELECT id, min(depth) AS depth FROM walk GROUP BY id)"
        }
    }
}

/// Depths past this are "no limit" in practice, and stay in SQL's int4.
const MAX_DEPTH: u32 = 1 << 20;
/// The most models one LineageGraph answer carries.
const MAX_GRAPH_MODELS: usize = 10_000;

impl Db {
    /// Ancestors, nearest first, one page of `limit` from `offset`.
    pub async fn ancestors(
        &self,
        id: Uuid,
        max_depth: u32,
        relations: Option<&[String]>,
        offset: u64,
        limit: u32,
    ) -> Result<Page> {
        self.walk(Direction::Up, id, max_depth, relations, offset, limit)
            .await
    }

    /// Descendants, nearest first, one page of `limit` from `offset`.
    pub async fn descendants(
        &self,
        id: Uuid,
        max_depth: u32,
        relations: Option<&[String]>,
        offset: u64,
        limit: u32,
    ) -> Result<Page> {
        self.walk(Direction::Down, id, max_depth, relations, offset, limit)
            .await
    }

    /// One page of a walk; downward by iterative deepening: the walk is bounded at 4 generations,
    /// then 8, 16, … until it holds more models than the page needs (every model within
    /// the bound has its true shortest distance, so the first `offset + limit` in order are
    /// exact), or reaches the caller's depth limit, or runs out of graph. A page near a
    /// bushy DAG's root then costs a few thousand rows, not the whole subgraph.
    async fn walk(
        &self,
        direction: Direction,
        id: Uuid,
        max_depth: u32,
        relations: Option<&[String]>,
        offset: u64,
        limit: u32,
    ) -> Result<Page> {
        let max_depth = max_depth.min(MAX_DEPTH);
        // One row more than asked for says whether another page follows; the window
        // functions say how much the bounded walk found and how deep it got.
        let sql = format!(
            "{} SELECT r.id, m.name, m.source, m.created_at, r.depth::int4,
                       count(*) OVER () AS found, max(r.depth) OVER ()::int4 AS deepest
                  FROM reached r JOIN models m ON m.id = r.id
                 ORDER BY r.depth, m.created_at, m.id LIMIT $4 OFFSET $5",
            walk_sql(direction)
        );
        let wanted = offset + u64::from(limit);
        // Upward, models have a parent or two: the whole walk is small, deepening would
        // only repeat it. Downward, fan-out makes it pay.
        let mut bound = match direction {
            Direction::Up => u32::MAX,
            Direction::Down => FIRST_BOUND,
        };
        loop {
            let capped = max_depth != 0 && bound >= max_depth;
            let depth = if capped { max_depth } else { bound };
            let unbounded = depth == u32::MAX;
            let rows: Vec<BoundedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .bind(if unbounded { 0 } else { depth as i32 })
                .bind(relations)
                .bind(i64::from(limit) + 1)
                .bind(offset as i64)
                .fetch_all(&self.pool)
                .await?;
            let (found, deepest) = rows.first().map_or((0, 0), |row| (row.found, row.deepest));
            let exhausted = unbounded || (deepest as u32) < depth;
            if capped || exhausted || found as u64 > wanted {
                let reached = rows.into_iter().map(|row| row.reached).collect();
                return Ok(page(reached, offset, limit));
            }
            bound = bound.saturating_mul(2);
        }
    }

    /// A shortest line of descent from `ancestor` to `descendant` (both included), with
    /// the relation of each edge taken; `None` when `ancestor` is not one.
    pub async fn path(
        &self,
        ancestor: Uuid,
        descendant: Uuid,
    ) -> Result<Option<Vec<(Uuid, Option<String>)>>> {
        if ancestor == descendant {
            return Ok(Some(vec![(ancestor, None)]));
        }
        // The models on some line of descent: below the ancestor and above the
        // descendant, each with its distance from the ancestor.
        let between: Vec<(Uuid, i32)> = sqlx::query_as(
            "WITH RECURSIVE down(id, depth) AS (
                 SELECT $1::uuid, 0
                 UNION
                 SELECT e.child_id, d.depth + 1 FROM model_parents e JOIN down d ON e.parent_id = d.id),
             up(id) AS (
                 SELECT $2::uuid
                 UNION
                 SELECT e.parent_id FROM model_parents e JOIN up u ON e.child_id = u.id)
             SELECT d.id, min(d.depth)::int4 FROM down d JOIN up u ON u.id = d.id GROUP BY d.id",
        )
        .bind(ancestor)
        .bind(descendant)
        .fetch_all(&self.pool)
        .await?;
        let depth: HashMap<Uuid, i32> = between.iter().copied().collect();
        if !depth.contains_key(&descendant) {
            return Ok(None);
        }
        let ids: Vec<Uuid> = between.iter().map(|(id, _)| *id).collect();
        let edges: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT parent_id, child_id, relation FROM model_parents
              WHERE child_id = ANY($1) AND parent_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        // Back from the descendant, always to a parent one step nearer the ancestor; each
        // model is noted with the relation of the edge that leads into it.
        let mut steps = Vec::new();
        let mut at = descendant;
        while at != ancestor {
            let (parent, _, relation) = edges
                .iter()
                .filter(|(parent, child, _)| *child == at && depth[parent] == depth[&at] - 1)
                .min_by_key(|(parent, _, _)| *parent)
                .ok_or_else(|| Error::Internal("a line of descent broke".into()))?;
            steps.push((at, Some(relation.clone())));
            at = *parent;
        }
        steps.push((ancestor, None));
        steps.reverse();
        Ok(Some(steps))
    }

    /// The nearest common ancestors of `a` and `b` (each counts as its own ancestor):
    /// (model, distance from a, distance from b), nearest first.
    pub async fn common_ancestors(&self, a: Uuid, b: Uuid) -> Result<Vec<(Uuid, u32, u32)>> {
        let rows: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "WITH RECURSIVE from_a(id, depth) AS (
                 SELECT $1::uuid, 0
                 UNION
                 SELECT e.parent_id, w.depth + 1 FROM model_parents e JOIN from_a w ON e.child_id = w.id),
             from_b(id, depth) AS (
                 SELECT $2::uuid, 0
                 UNION
                 SELECT e.parent_id, w.depth + 1 FROM model_parents e JOIN from_b w ON e.child_id = w.id),
             common AS (
                 SELECT a.id, min(a.depth) AS da, min(b.depth) AS db
                   FROM from_a a JOIN from_b b ON b.id = a.id GROUP BY a.id)
             -- Nearest: no child of it is a common ancestor too.
             SELECT c.id, c.da::int4, c.db::int4 FROM common c JOIN models m ON m.id = c.id
              WHERE NOT EXISTS (SELECT 1 FROM model_parents e JOIN common below ON below.id = e.child_id
                                 WHERE e.parent_id = c.id)
              ORDER BY c.da + c.db, m.created_at, m.id",
        )
        .bind(a)
        .bind(b)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, da, db)| (id, da as u32, db as u32))
            .collect())
    }

    /// The model, its ancestors to `up` generations and its descendants to `down` (0: all),
    /// and every edge among them.
    pub async fn graph(&self, id: Uuid, up: u32, down: u32) -> Result<Graph> {
        let sql = |direction| {
            format!(
                "{} SELECT id, depth::int4 FROM reached",
                walk_sql(direction)
            )
        };
        let mut ids: HashSet<Uuid> = HashSet::from([id]);
        for (direction, depth) in [(Direction::Up, up), (Direction::Down, down)] {
            let reached: Vec<(Uuid, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(sql(direction)))
                .bind(id)
                .bind(depth.min(MAX_DEPTH) as i32)
                .bind(None::<Vec<String>>)
                .fetch_all(&self.pool)
                .await?;
            ids.extend(reached.into_iter().map(|(id, _)| id));
        }
        if ids.len() > MAX_GRAPH_MODELS {
            return Err(crate::Error::InvalidArgument(format!(
                "the graph around model {id} holds {} models, more than the {MAX_GRAPH_MODELS} \
                 one answer may carry: set ancestors_depth and descendants_depth lower, or \
                 page with ListAncestors and ListDescendants",
                ids.len()
            )));
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let edges: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT parent_id, child_id, relation FROM model_parents
              WHERE child_id = ANY($1) AND parent_id = ANY($1)
              ORDER BY parent_id, child_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut nodes: Vec<Model> = self.models_with_ids(&ids).await?.into_values().collect();
        nodes.sort_by_key(|model| (model.created_at, model.id));
        Ok(Graph { nodes, edges })
    }

    /// The tensor's provenance from the model back through every inherited hop; the last
    /// step is where it last changed. Empty when the model has no such tensor.
    pub async fn blame(&self, model_id: Uuid, tensor: &str) -> Result<Vec<BlameStep>> {
        let rows: Vec<(Uuid, String, String, String, String)> = sqlx::query_as(
            "WITH RECURSIVE chain(model_id, tensor, status, sha256, origin_model_id, origin_tensor, hop) AS (
                 SELECT model_id, name, status, sha256, origin_model_id, origin_tensor, 0
                   FROM model_tensors WHERE model_id = $1 AND name = $2
                 UNION ALL
                 SELECT t.model_id, t.name, t.status, t.sha256, t.origin_model_id, t.origin_tensor, c.hop + 1
                   FROM chain c
                   JOIN model_tensors t ON t.model_id = c.origin_model_id AND t.name = c.origin_tensor
                  WHERE c.status = 'inherited')
             SELECT c.model_id, m.name, c.tensor, c.status, c.sha256
               FROM chain c JOIN models m ON m.id = c.model_id ORDER BY c.hop",
        )
        .bind(model_id)
        .bind(tensor)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(model_id, model_name, tensor, status, sha256)| {
                Ok(BlameStep {
                    model_id,
                    model_name,
                    tensor,
                    status: TensorStatus::parse(&status).ok_or_else(|| {
                        Error::Internal(format!("unknown tensor status {status:?}"))
                    })?,
                    sha256,
                })
            })
            .collect()
    }

    /// The models trained on a dataset (depth 0) and all their descendants, nearest first,
    /// one page of `limit` from `offset`.
    pub async fn dataset_impact(&self, dataset_id: Uuid, offset: u64, limit: u32) -> Result<Page> {
        let reached: Vec<Reached> = sqlx::query_as(
            "WITH RECURSIVE walk(id, depth) AS (
                 SELECT model_id, 0 FROM model_datasets WHERE dataset_id = $1 AND role = 'train'
                 UNION
                 SELECT e.child_id, w.depth + 1 FROM model_parents e JOIN walk w ON e.parent_id = w.id),
             reached AS (SELECT id, min(depth) AS depth FROM walk GROUP BY id)
             SELECT r.id, m.name, m.source, m.created_at, r.depth::int4
               FROM reached r JOIN models m ON m.id = r.id
              ORDER BY r.depth, m.created_at, m.id LIMIT $2 OFFSET $3",
        )
        .bind(dataset_id)
        .bind(i64::from(limit) + 1)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(reached, offset, limit))
    }
}

/// A bounded walk's row: what it reached, and how much and how deep the walk got.
#[derive(sqlx::FromRow)]
struct BoundedRow {
    #[sqlx(flatten)]
    reached: Reached,
    found: i64,
    deepest: i32,
}

/// Rows fetched one beyond `limit` (if another page follows) as a page.
fn page(mut reached: Vec<Reached>, offset: u64, limit: u32) -> Page {
    let more = reached.len() > limit as usize;
    reached.truncate(limit as usize);
    Page {
        next: more.then(|| offset + reached.len() as u64),
        entries: reached,
    }
}
