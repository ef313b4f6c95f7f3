//! The lineage graph around a model as an SVG: generations as rows (a parent above its
//! children), each row ordered to keep edges short, edges coloured and labelled by
//! relation, every node a link to its model.

use super::html::esc;
use std::collections::HashMap;
use std::fmt::Write;
use uuid::Uuid;

pub struct Node {
    pub id: Uuid,
    pub name: String,
    /// Shown under the name: the job kind and the held-out accuracy.
    pub detail: String,
}

pub struct Edge {
    pub parent: Uuid,
    pub child: Uuid,
    pub relation: String,
}

const WIDTH: f64 = 190.0;
const HEIGHT: f64 = 46.0;
const GAP_X: f64 = 40.0;
const GAP_Y: f64 = 70.0;

/// The colour of each relation, also used by the legend and the stylesheet.
pub fn relation_colour(relation: &str) -> &'static str {
    match relation {
        "finetune" => "#d97706",
        "transfer" => "#2563eb",
        "direct" => "#7c3aed",
        "module" => "#059669",
        _ => "#6b7280",
    }
}

/// Rows by longest path from the roots of the drawn subgraph.
fn generations(nodes: &[Node], edges: &[Edge]) -> HashMap<Uuid, usize> {
    let mut generation: HashMap<Uuid, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
    // Relax edges until nothing moves: a DAG of n nodes settles within n passes.
    for _ in 0..nodes.len() {
        let mut moved = false;
        for edge in edges {
            let (Some(&parent), Some(&child)) =
                (generation.get(&edge.parent), generation.get(&edge.child))
            else {
                continue;
            };
            if child < parent + 1 {
                generation.insert(edge.child, parent + 1);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    generation
}

/// Positions (centre x, top y) of every node.
fn layout(nodes: &[Node], edges: &[Edge]) -> HashMap<Uuid, (f64, f64)> {
    let generation = generations(nodes, edges);
    let rows = generation.values().max().map_or(0, |g| g + 1);
    let mut row_members: Vec<Vec<Uuid>> = vec![Vec::new(); rows];
    for node in nodes {
        row_members[generation[&node.id]].push(node.id);
    }
    // Order each row by the mean position of its parents (a barycentre sweep), twice.
    let mut order: HashMap<Uuid, f64> = HashMap::new();
    for members in &row_members {
        for (i, id) in members.iter().enumerate() {
            order.insert(*id, i as f64);
        }
    }
    for _ in 0..2 {
        for members in row_members.iter_mut().skip(1) {
            let mut keyed: Vec<(f64, Uuid)> = members
                .iter()
                .map(|id| {
                    let parents: Vec<f64> = edges
                        .iter()
                        .filter(|e| e.child == *id)
                        .filter_map(|e| order.get(&e.parent).copied())
                        .collect();
                    let key = if parents.is_empty() {
                        order[id]
                    } else {
                        parents.iter().sum::<f64>() / parents.len() as f64
                    };
                    (key, *id)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            *members = keyed.into_iter().map(|(_, id)| id).collect();
            for (i, id) in members.iter().enumerate() {
                order.insert(*id, i as f64);
            }
        }
    }
    let widest = row_members.iter().map(Vec::len).max().unwrap_or(1) as f64;
    let mut positions = HashMap::new();
    for (row, members) in row_members.iter().enumerate() {
        // Centre each row under the widest one.
        let offset = (widest - members.len() as f64) * (WIDTH + GAP_X) / 2.0;
        for (i, id) in members.iter().enumerate() {
            let x = offset + i as f64 * (WIDTH + GAP_X) + WIDTH / 2.0 + GAP_X / 2.0;
            let y = row as f64 * (HEIGHT + GAP_Y) + 20.0;
            positions.insert(*id, (x, y));
        }
    }
    positions
}

/// The graph as an SVG element; `focus` is drawn highlighted.
pub fn svg(nodes: &[Node], edges: &[Edge], focus: Uuid) -> String {
    let positions = layout(nodes, edges);
    let width = positions.values().map(|p| p.0).fold(0.0, f64::max) + WIDTH / 2.0 + GAP_X;
    let height = positions.values().map(|p| p.1).fold(0.0, f64::max) + HEIGHT + 30.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg id=\"lineage\" class=\"lineage\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"lineage graph\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" \
         fill=\"context-stroke\"/></marker></defs><g class=\"viewport\">"
    );
    for edge in edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) =
            (positions.get(&edge.parent), positions.get(&edge.child))
        else {
            continue;
        };
        let (top, bottom) = (y1 + HEIGHT, y2);
        let middle = (top + bottom) / 2.0;
        let colour = relation_colour(&edge.relation);
        let _ = write!(
            out,
            "<g class=\"edge\" data-relation=\"{relation}\" data-parent=\"{}\" data-child=\"{}\">\
             <path d=\"M {x1:.1} {top:.1} C {x1:.1} {middle:.1}, {x2:.1} {middle:.1}, {x2:.1} {bottom:.1}\" \
             stroke=\"{colour}\" fill=\"none\" stroke-width=\"2\" marker-end=\"url(#arrow)\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" class=\"edge-label\">{relation}</text></g>",
            edge.parent,
            edge.child,
            (x1 + x2) / 2.0 + 4.0,
            middle - 4.0,
            relation = esc(&edge.relation),
        );
    }
    for node in nodes {
        let (x, y) = positions[&node.id];
        let class = if node.id == focus {
            "node focus"
        } else {
            "node"
        };
        let _ = write!(
            out,
            "<a href=\"/models/{id}\" class=\"{class}\" data-model=\"{name}\">\
             <rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"8\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" class=\"name\">{name}</text>\
             <text x=\"{x:.1}\" y=\"{:.1}\" class=\"detail\">{detail}</text></a>",
            x - WIDTH / 2.0,
            y + 19.0,
            y + 36.0,
            id = node.id,
            name = esc(&node.name),
            detail = esc(&node.detail),
        );
    }
    out.push_str("</g></svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            id: Uuid::new_v4(),
            name: name.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_child_is_drawn_below_every_parent() {
        let (a, b, c, d) = (node("a"), node("b"), node("c"), node("d"));
        let edge = |p: &Node, c: &Node| Edge {
            parent: p.id,
            child: c.id,
            relation: "finetune".into(),
        };
        // a → b → d and a → c → d, plus a → d directly: d sits two rows below a.
        let edges = vec![
            edge(&a, &b),
            edge(&a, &c),
            edge(&b, &d),
            edge(&c, &d),
            edge(&a, &d),
        ];
        let (ids, nodes) = ((a.id, b.id, c.id, d.id), vec![a, b, c, d]);
        let positions = layout(&nodes, &edges);
        assert!(positions[&ids.0].1 < positions[&ids.1].1);
        assert_eq!(positions[&ids.1].1, positions[&ids.2].1);
        assert!(positions[&ids.1].1 < positions[&ids.3].1);
        let svg = svg(&nodes, &edges, ids.0);
        assert_eq!(svg.matches("<a href=\"/models/").count(), 4);
        assert_eq!(svg.matches("class=\"edge\"").count(), 5);
        assert!(svg.contains("node focus"));
    }
}
