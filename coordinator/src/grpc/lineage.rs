//! What the lineage RPCs share: page tokens and sizes, relation filters, and the graph
//! written as JSON, Graphviz DOT or Mermaid.

use super::convert;
use crate::db::{Db, Graph, Page};
use crate::domain::Relation;
use crate::error::{Error, Result};
use heirloom_proto::v1 as pb;
use heirloom_spec::Invalid;

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

pub fn nodes_and_edges(
    graph: &Graph,
    focus: uuid::Uuid,
) -> (Vec<pb::GraphNode>, Vec<pb::GraphEdge>) {
    let nodes = graph
        .nodes
        .iter()
        .map(|model| pb::GraphNode {
            id: model.id.to_string(),
            name: model.name.clone(),
            source: model.source.clone(),
            holdout_accuracy: model.metrics.as_ref().map(|m| m.holdout_accuracy),
            focus: model.id == focus,
        })
        .collect();
    let edges = graph
        .edges
        .iter()
        .map(|(parent, child, relation)| pb::GraphEdge {
            parent_id: parent.to_string(),
            child_id: child.to_string(),
            relation: relation.clone(),
        })
        .collect();
    (nodes, edges)
}

/// The graph in the asked-for format.
pub fn render(format: pb::GraphFormat, nodes: &[pb::GraphNode], edges: &[pb::GraphEdge]) -> String {
    let label = |node: &pb::GraphNode| match node.holdout_accuracy {
        Some(accuracy) => format!("{}\\n{} · {accuracy:.3}", node.name, node.source),
        None => format!("{}\\n{}", node.name, node.source),
    };
    match format {
        pb::GraphFormat::Dot => {
            let mut out = String::from("digraph lineage {\n  rankdir=TB;\n  node [shape=box];\n");
            for node in nodes {
                let style = if node.focus { ", style=bold" } else { "" };
                out += &format!(
                    "  \"{}\" [label=\"{}\"{style}];\n",
                    node.id,
                    label(node).replace('"', "\\\"")
                );
            }
            for edge in edges {
                out += &format!(
                    "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                    edge.parent_id, edge.child_id, edge.relation
                );
            }
            out + "}\n"
        }
        pb::GraphFormat::Mermaid => {
            // Mermaid ids may not contain dashes reliably: n0, n1, … in node order.
            let index = |id: &str| nodes.iter().position(|n| n.id == id).unwrap_or(usize::MAX);
            let mut out = String::from("graph TD\n");
            for (i, node) in nodes.iter().enumerate() {
                let text = label(node).replace("\\n", "<br/>").replace('"', "#quot;");
                out += &format!("  n{i}[\"{text}\"]\n");
            }
            for edge in edges {
                out += &format!(
                    "  n{} -->|{}| n{}\n",
                    index(&edge.parent_id),
                    edge.relation,
                    index(&edge.child_id)
                );
            }
            out
        }
        pb::GraphFormat::Json | pb::GraphFormat::Unspecified => {
            let nodes: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.id, "name": n.name, "source": n.source,
                        "holdout_accuracy": n.holdout_accuracy, "focus": n.focus,
                    })
                })
                .collect();
            let edges: Vec<serde_json::Value> = edges
                .iter()
                .map(|e| serde_json::json!({"parent": e.parent_id, "child": e.child_id, "relation": e.relation}))
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({"nodes": nodes, "edges": edges}))
                .expect("JSON values serialize")
        }
    }
}

/// A page's entries as messages: whole models, or (the basic view) only their names.
pub async fn entries(db: &Db, page: &Page, view: i32) -> Result<Vec<pb::LineageEntry>> {
    let view = pb::LineageView::try_from(view)
        .map_err(|_| Error::from(Invalid::new("view", "use full or basic")))?;
    let mut models = match view {
        pb::LineageView::Basic => Default::default(),
        pb::LineageView::Full | pb::LineageView::Unspecified => {
            let ids: Vec<uuid::Uuid> = page.entries.iter().map(|entry| entry.id).collect();
            db.models_with_ids(&ids).await?
        }
    };
    Ok(page
        .entries
        .iter()
        .map(|entry| pb::LineageEntry {
            model: Some(match models.remove(&entry.id) {
                Some(model) => convert::model_to_proto(&model),
                None => pb::Model {
                    id: entry.id.to_string(),
                    name: entry.name.clone(),
                    source: entry.source.clone(),
                    created_at: convert::timestamp(entry.created_at),
                    ..Default::default()
                },
            }),
            depth: entry.depth as u32,
        })
        .collect())
}
