//! The lineage graph around a model as an SVG: generations as rows (a parent above its
//! children), each row ordered to keep edges short, edges coloured and labelled by
//! relation, every node a link to its model.

use super::html::esc;
use crate::domain::Relation;
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
pub fn relation_colour(relation: Relation) -> &'static str {
    match relation {
        Relation::Finetune => "#d97706",
        Relation::Transfer => "#2563eb",
        Relation::Direct => "#7c3aed",
        Relation::Module => "#059669",
    }
}

/// The colour of an edge whose relation this build does not know.
const UNKNOWN_RELATION_COLOUR: &str = "#6b7280";

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

/// Where everything goes: each model's box (centre x, top y), and for each edge that
/// spans more than one generation the points it passes through in the rows between, so
/// that it runs in a lane of its own instead of behind the models of those rows.
struct Layout {
    boxes: HashMap<Uuid, (f64, f64)>,
    /// By edge index: (x, top y) of each row the edge crosses.
    waypoints: HashMap<usize, Vec<(f64, f64)>>,
    width: f64,
    height: f64,
}

/// A slot in a row: a model, or a lane of a long edge (edge index, which crossing).
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Model(Uuid),
    Lane(usize),
}

fn layout(nodes: &[Node], edges: &[Edge]) -> Layout {
    let generation = generations(nodes, edges);
    let rows = generation.values().max().map_or(0, |g| g + 1);
    let mut row_slots: Vec<Vec<Slot>> = vec![Vec::new(); rows];
    for node in nodes {
        row_slots[generation[&node.id]].push(Slot::Model(node.id));
    }
    // Each slot's links to the row above: a model's parents (or the lanes leading to it),
    // a lane's previous point.
    let mut above: Vec<(Slot, Slot)> = Vec::new();
    for (index, edge) in edges.iter().enumerate() {
        let (Some(&from), Some(&to)) = (generation.get(&edge.parent), generation.get(&edge.child))
        else {
            continue;
        };
        let mut previous = Slot::Model(edge.parent);
        for slots in &mut row_slots[from + 1..to] {
            slots.push(Slot::Lane(index));
            above.push((Slot::Lane(index), previous));
            previous = Slot::Lane(index);
        }
        above.push((Slot::Model(edge.child), previous));
    }
    // Order each row by the mean position of what links it to the row above (a
    // barycentre sweep), twice.
    let position_in_row = |rows: &[Vec<Slot>], row: usize, slot: Slot| {
        rows[row].iter().position(|s| *s == slot).map(|i| i as f64)
    };
    for _ in 0..2 {
        for row in 1..rows {
            let mut keyed: Vec<(f64, Slot)> = row_slots[row]
                .iter()
                .enumerate()
                .map(|(i, slot)| {
                    let linked: Vec<f64> = above
                        .iter()
                        .filter(|(below, _)| below == slot)
                        .filter_map(|(_, up)| position_in_row(&row_slots, row - 1, *up))
                        .collect();
                    let key = if linked.is_empty() {
                        i as f64
                    } else {
                        linked.iter().sum::<f64>() / linked.len() as f64
                    };
                    (key, *slot)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            row_slots[row] = keyed.into_iter().map(|(_, slot)| slot).collect();
        }
    }
    // Models take a box's width, lanes a narrow one; each row is centred.
    let slot_width = |slot: &Slot| match slot {
        Slot::Model(_) => WIDTH + GAP_X,
        Slot::Lane(_) => GAP_X,
    };
    let row_width = |slots: &[Slot]| slots.iter().map(slot_width).sum::<f64>();
    let widest = row_slots.iter().map(|r| row_width(r)).fold(0.0, f64::max);
    let mut layout = Layout {
        boxes: HashMap::new(),
        waypoints: HashMap::new(),
        width: widest + GAP_X,
        height: rows as f64 * (HEIGHT + GAP_Y) + 20.0,
    };
    for (row, slots) in row_slots.iter().enumerate() {
        let mut left = (widest - row_width(slots)) / 2.0 + GAP_X / 2.0;
        let y = row as f64 * (HEIGHT + GAP_Y) + 20.0;
        for slot in slots {
            let x = left + slot_width(slot) / 2.0;
            match slot {
                Slot::Model(id) => {
                    layout.boxes.insert(*id, (x, y));
                }
                Slot::Lane(edge) => layout.waypoints.entry(*edge).or_default().push((x, y)),
            }
            left += slot_width(slot);
        }
    }
    layout
}

/// The graph as an SVG element; `focus` is drawn highlighted.
pub fn svg(nodes: &[Node], edges: &[Edge], focus: Uuid) -> String {
    let layout = layout(nodes, edges);
    let (width, height) = (layout.width, layout.height);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg id=\"lineage\" class=\"lineage\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"lineage graph\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" \
         fill=\"context-stroke\"/></marker></defs><g class=\"viewport\">"
    );
    for (index, edge) in edges.iter().enumerate() {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (
            layout.boxes.get(&edge.parent),
            layout.boxes.get(&edge.child),
        ) else {
            continue;
        };
        // From the parent's bottom, through each lane (down its row's height), to the
        // child's top; a curve between rows, straight within one.
        let mut points = vec![(x1, y1 + HEIGHT)];
        for &(x, y) in layout.waypoints.get(&index).into_iter().flatten() {
            points.push((x, y));
            points.push((x, y + HEIGHT));
        }
        points.push((x2, y2));
        let mut path = format!("M {:.1} {:.1}", points[0].0, points[0].1);
        for pair in points.windows(2) {
            let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
            if ax == bx {
                let _ = write!(path, " L {bx:.1} {by:.1}");
            } else {
                let middle = (ay + by) / 2.0;
                let _ = write!(
                    path,
                    " C {ax:.1} {middle:.1}, {bx:.1} {middle:.1}, {bx:.1} {by:.1}"
                );
            }
        }
        // The label sits halfway down the first stretch, beside it.
        let ((ax, ay), (bx, by)) = (points[0], points[1]);
        let colour =
            Relation::parse(&edge.relation).map_or(UNKNOWN_RELATION_COLOUR, relation_colour);
        let _ = write!(
            out,
            "<g class=\"edge\" data-relation=\"{relation}\" data-parent=\"{}\" data-child=\"{}\">\
             <path d=\"{path}\" stroke=\"{colour}\" fill=\"none\" stroke-width=\"2\" marker-end=\"url(#arrow)\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" class=\"edge-label\">{relation}</text></g>",
            edge.parent,
            edge.child,
            (ax + bx) / 2.0 + 4.0,
            (ay + by) / 2.0 - 4.0,
            relation = esc(&edge.relation),
        );
    }
    for node in nodes {
        let Some(&(x, y)) = layout.boxes.get(&node.id) else {
            continue;
        };
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
        let layout = layout(&nodes, &edges);
        let positions = &layout.boxes;
        assert!(positions[&ids.0].1 < positions[&ids.1].1);
        assert_eq!(positions[&ids.1].1, positions[&ids.2].1);
        assert!(positions[&ids.1].1 < positions[&ids.3].1);
        // a → d skips a generation: it runs through a lane in b and c's row, beside them.
        let lane = &layout.waypoints[&4];
        assert_eq!(lane.len(), 1);
        assert_eq!(lane[0].1, positions[&ids.1].1);
        for model in [ids.1, ids.2] {
            assert!(
                (lane[0].0 - positions[&model].0).abs() >= WIDTH / 2.0,
                "clear of the boxes"
            );
        }
        let svg = svg(&nodes, &edges, ids.0);
        assert_eq!(svg.matches("<a href=\"/models/").count(), 4);
        assert_eq!(svg.matches("class=\"edge\"").count(), 5);
        assert!(svg.contains("node focus"));
    }
}
