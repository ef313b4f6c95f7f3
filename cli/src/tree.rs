//! Lineage as text: one line per model, and trees drawn with box characters.

use heirloom_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};

pub fn relation(relation: pb::Relation) -> &'static str {
    match relation {
        pb::Relation::Finetune => "finetune",
        pb::Relation::Transfer => "transfer",
        pb::Relation::Direct => "direct",
        pb::Relation::Module => "module",
        pb::Relation::Unspecified => "?",
    }
}

pub fn status(status: pb::TensorStatus) -> &'static str {
    match status {
        pb::TensorStatus::Inherited => "inherited",
        pb::TensorStatus::Trained => "trained",
        pb::TensorStatus::New => "new",
        pb::TensorStatus::Interpolated => "interpolated",
        pb::TensorStatus::Unspecified => "?",
    }
}

/// `4 inherited, 2 new`: how many tensors a model took from where.
pub fn provenance(tensors: &[pb::TensorProvenance]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for tensor in tensors {
        let name = status(tensor.status());
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort();
    counts
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name  [source]  accuracy 0.973  mlp 64→64→5`
pub fn summary(model: &pb::Model) -> String {
    let accuracy = match &model.metrics {
        Some(metrics) => format!("holdout accuracy {:.3}", metrics.holdout_accuracy),
        None => "holdout accuracy -".to_string(),
    };
    let shape = model
        .architecture
        .as_ref()
        .and_then(|a| a.to_spec("architecture").ok())
        .map(|a| shape(&a))
        .unwrap_or_default();
    format!(
        "{}  [{}]  {}  {}",
        model.name, model.source, accuracy, shape
    )
}

fn shape(architecture: &heirloom_spec::Architecture) -> String {
    use heirloom_spec::Architecture;
    let widths = |first: u64, middle: &[u32], last: u32| {
        std::iter::once(first)
            .chain(middle.iter().map(|&w| u64::from(w)))
            .chain(std::iter::once(u64::from(last)))
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("→")
    };
    match architecture {
        Architecture::Mlp(mlp) => format!(
            "mlp {}",
            widths(mlp.input_features.into(), &mlp.hidden, mlp.num_classes)
        ),
        Architecture::SmallCnn(cnn) => format!(
            "small_cnn {}x{}x{} {}",
            cnn.in_channels,
            cnn.height,
            cnn.width,
            widths(cnn.in_channels.into(), &cnn.channels, cnn.num_classes)
        ),
        Architecture::Resnet(r) => format!(
            "resnet{} {}x{}x{}→{}",
            r.depth, r.in_channels, r.height, r.width, r.num_classes
        ),
        Architecture::Vgg(v) => format!(
            "vgg{}{} {}x{}x{}→{}",
            v.depth,
            if v.batch_norm { "_bn" } else { "" },
            v.in_channels,
            v.height,
            v.width,
            v.num_classes
        ),
        Architecture::Torchscript(t) => format!(
            "torchscript {:?}→{}{}",
            t.input_shape,
            t.output_size,
            t.head.map(|h| format!("→head {h}")).unwrap_or_default()
        ),
    }
}

/// The ancestors (nearest last, just above the model) and the descendants as a tree
/// under it. A model with two parents in the subtree appears under each.
pub fn render(
    root: &pb::Model,
    ancestors: &[pb::LineageEntry],
    descendants: &[pb::LineageEntry],
    provenance: &HashMap<String, String>,
) -> String {
    let line = |model: &pb::Model| match provenance.get(&model.id) {
        Some(counts) if !counts.is_empty() => format!("{}  ({counts})", summary(model)),
        _ => summary(model),
    };
    let mut out = String::new();
    let mut ancestors: Vec<&pb::LineageEntry> = ancestors.iter().collect();
    ancestors.sort_by_key(|entry| std::cmp::Reverse(entry.depth));
    for entry in &ancestors {
        if let Some(model) = &entry.model {
            out.push_str(&format!("{} (ancestor, {} up)\n", line(model), entry.depth));
        }
    }
    out.push_str(&line(root));
    out.push('\n');
    let models: Vec<&pb::Model> = descendants
        .iter()
        .filter_map(|entry| entry.model.as_ref())
        .collect();
    let mut children: BTreeMap<&str, Vec<(&pb::Model, &pb::ParentEdge)>> = BTreeMap::new();
    for model in &models {
        for edge in &model.parents {
            children
                .entry(edge.parent_id.as_str())
                .or_default()
                .push((model, edge));
        }
    }
    let mut on_path = HashSet::new();
    draw(&mut out, &root.id, "", &children, &mut on_path, &line);
    out
}

fn draw<'a>(
    out: &mut String,
    id: &'a str,
    indent: &str,
    children: &BTreeMap<&'a str, Vec<(&'a pb::Model, &'a pb::ParentEdge)>>,
    on_path: &mut HashSet<&'a str>,
    line: &dyn Fn(&pb::Model) -> String,
) {
    let Some(kids) = children.get(id) else {
        return;
    };
    if !on_path.insert(id) {
        return; // lineage is acyclic, but never loop on bad data
    }
    for (i, (model, edge)) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let branch = if last { "└── " } else { "├── " };
        out.push_str(&format!(
            "{indent}{branch}{} via {}\n",
            line(model),
            relation(edge.relation())
        ));
        let deeper = format!("{indent}{}", if last { "    " } else { "│   " });
        draw(out, &model.id, &deeper, children, on_path, line);
    }
    on_path.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, parents: &[&str]) -> pb::Model {
        pb::Model {
            id: id.into(),
            name: id.into(),
            source: "train".into(),
            parents: parents
                .iter()
                .map(|p| pb::ParentEdge {
                    parent_id: p.to_string(),
                    relation: pb::Relation::Finetune as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn draws_children_under_their_parents() {
        let entry = |m: pb::Model, depth| pb::LineageEntry {
            model: Some(m),
            depth,
        };
        let text = render(
            &model("base", &[]),
            &[],
            &[
                entry(model("a", &["base"]), 1),
                entry(model("b", &["base"]), 1),
                entry(model("c", &["a"]), 2),
            ],
            &HashMap::new(),
        );
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split("  [").next().unwrap())
            .collect();
        assert_eq!(lines, ["base", "├── a", "│   └── c", "└── b"]);
    }
}
