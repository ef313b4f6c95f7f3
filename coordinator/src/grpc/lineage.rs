//! What the lineage RPCs share that is not protobuf: page tokens and sizes, relation
//! filters, which models a page needs, and the graph written as JSON, Graphviz DOT or
//! Mermaid. Owns no message: `convert.rs` turns requests into the enums here and pages
//! and graphs into messages. Never builds or reads a prost message; never speaks SQL
//! (it asks `Db`).

use crate::db::{Db, Graph, Page};
use crate::domain::{Model, Relation};
use crate::error::{Error, Result};
use heirloom_core::Invalid;
use std::collections::HashMap;
use uuid::Uuid;

const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;
/// Offsets beyond any real graph; keeps `offset + limit` and the SQL's bigint in range.
const MAX_OFFSET: u64 = 1 << 40;

/// (offset, page size) from a request's token and size.
pub fn paging(page_token: &str, page_size: u32) -> Result<(u64, u32)> {
    let offset = match page_token {
        "" => 0,
        token => token.parse().map_err(|_| {
            Error::from(Invalid::new(
                "page_token",
                "is not a token a previous page returned; leave it empty for the first page",
            ))
        })?,
    };
    if offset > MAX_OFFSET {
        return Err(Invalid::new("page_token", "is past any page there can be").into());
    }
    let size = match page_size {
        0 => DEFAULT_PAGE,
        size => size.min(MAX_PAGE),
    };
    Ok((offset, size))
}

pub fn next_token(next: Option<u64>) -> String {
    next.map(|offset| offset.to_string()).unwrap_or_default()
}

/// The relations to follow (`None`: all), each checked.
pub fn relations(relations: &[String]) -> Result<Option<Vec<String>>> {
    for (i, relation) in relations.iter().enumerate() {
        if Relation::parse(relation).is_none() {
            return Err(Invalid::new(
                format!("relations[{i}]"),
                format!("{relation:?} is not a relation: use finetune, transfer, direct or module"),
            )
            .into());
        }
    }
    Ok((!relations.is_empty()).then(|| relations.to_vec()))
}

/// How LineageGraph writes the graph out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Json,
    Dot,
    Mermaid,
}

/// How much of each model a lineage page carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The whole model.
    Full,
    /// Only its id, name, source and creation time.
    Basic,
}

/// The graph in the asked-for format; `focus` is drawn bold.
pub fn render(format: GraphFormat, graph: &Graph, focus: Uuid) -> String {
    let accuracy = |model: &Model| model.metrics.as_ref().map(|m| m.holdout_accuracy);
    let label = |model: &Model| match accuracy(model) {
        Some(accuracy) => format!("{}\\n{} · {accuracy:.3}", model.name, model.source),
        None => format!("{}\\n{}", model.name, model.source),
    };
    match format {
        GraphFormat::Dot => {
            let mut out = String::from("digraph lineage {\n  rankdir=TB;\n  node [shape=box];\n");
            for model in &graph.nodes {
                let style = if model.id == focus {
                    ", style=bold"
                } else {
                    ""
                };
                out += &format!(
                    "  \"{}\" [label=\"{}\"{style}];\n",
                    model.id,
                    label(model).replace('"', "\\\"")
                );
            }
            for (parent, child, relation) in &graph.edges {
                out += &format!("  \"{parent}\" -> \"{child}\" [label=\"{relation}\"];\n");
            }
            out + "}\n"
        }
        GraphFormat::Mermaid => {
            // Mermaid ids may not contain dashes reliably: n0, n1, … in node order.
            let index = |id: &Uuid| {
                graph
                    .nodes
                    .iter()
                    .position(|model| model.id == *id)
                    .unwrap_or(usize::MAX)
            };
            let mut out = String::from("graph TD\n");
            for (i, model) in graph.nodes.iter().enumerate() {
                let text = label(model).replace("\\n", "<br/>").replace('"', "#quot;");
                out += &format!("  n{i}[\"{text}\"]\n");
            }
            for (parent, child, relation) in &graph.edges {
                out += &format!("  n{} -->|{relation}| n{}\n", index(parent), index(child));
            }
            out
        }
        GraphFormat::Json => {
            let nodes: Vec<serde_json::Value> = graph
                .nodes
                .iter()
                .map(|model| {
                    serde_json::json!({
                        "id": model.id.to_string(), "name": model.name, "source": model.source,
                        "holdout_accuracy": accuracy(model), "focus": model.id == focus,
                    })
                })
                .collect();
            let edges: Vec<serde_json::Value> = graph
                .edges
                .iter()
                .map(|(parent, child, relation)| {
                    serde_json::json!({
                        "parent": parent.to_string(), "child": child.to_string(), "relation": relation,
                    })
                })
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({"nodes": nodes, "edges": edges}))
                .expect("JSON values serialize")
        }
    }
}

/// The whole models a page's entries need: none for the basic view.
pub async fn page_models(db: &Db, page: &Page, view: View) -> Result<HashMap<Uuid, Model>> {
    Ok(match view {
        View::Basic => Default::default(),
        View::Full => {
            let ids: Vec<Uuid> = page.entries.iter().map(|entry| entry.id).collect();
            db.models_with_ids(&ids).await?
        }
    })
}

/// Which way a lineage walk goes from its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ancestors.
    Up,
    /// Descendants.
    Down,
}

/// One page of a walk up or down from a model, as ListAncestors and ListDescendants ask
/// for it.
pub struct Walk<'a> {
    pub direction: Direction,
    pub model: &'a str,
    pub max_depth: u32,
    pub relations: &'a [String],
    pub page_token: &'a str,
    pub page_size: u32,
    pub view: View,
}

impl Walk<'_> {
    /// The page, and the models its entries show in full (none in the basic view).
    pub async fn page(&self, db: &Db) -> Result<(Page, HashMap<Uuid, Model>)> {
        let relations = relations(self.relations)?;
        let (offset, size) = paging(self.page_token, self.page_size)?;
        let model = db.find_model(self.model).await?;
        let (id, depth, relations) = (model.id, self.max_depth, relations.as_deref());
        let page = match self.direction {
            Direction::Up => db.ancestors(id, depth, relations, offset, size).await?,
            Direction::Down => db.descendants(id, depth, relations, offset, size).await?,
        };
        let models = page_models(db, &page, self.view).await?;
        Ok((page, models))
    }
}
