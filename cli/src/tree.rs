//! Lineage as text: one line per model, and trees drawn with box characters.

use heirloom_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A relation's name, from the core's one table.
pub fn relation(relation: pb::Relation) -> &'static str {
    relation.to_core().map_or("?", |relation| relation.as_str())
}

/// A job kind's name, from the core's one table.
pub fn kind(kind: pb::JobKind) -> &'static str {
    kind.to_core().map_or("?", |kind| kind.as_str())
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

/// Which modules a model inherited, interpolated, trained or added, naming each module at
/// the coarsest level where all its tensors agree: `inherited hidden.0; trained hidden.1;
/// new fc`.
pub fn provenance(tensors: &[pb::TensorProvenance]) -> String {
    let entries: Vec<(Vec<&str>, &'static str)> = tensors
        .iter()
        .map(|t| (t.name.split('.').collect(), status(t.status())))
        .collect();
    let mut groups: Vec<(&'static str, String)> = Vec::new();
    group(&entries, 0, &mut groups);
    ["inherited", "interpolated", "trained", "new"]
        .iter()
        .filter_map(|wanted| {
            let modules: Vec<&str> = groups
                .iter()
                .filter(|(status, _)| status == wanted)
                .map(|(_, module)| module.as_str())
                .collect();
            (!modules.is_empty()).then(|| format!("{wanted} {}", modules.join(", ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adds (status, module) for `entries`, which share their first `depth` name parts.
fn group(
    entries: &[(Vec<&str>, &'static str)],
    depth: usize,
    out: &mut Vec<(&'static str, String)>,
) {
    let Some((first, status)) = entries.first() else {
        return;
    };
    if entries.iter().all(|(_, s)| s == status) {
        let module = if depth == 0 {
            "all".to_string()
        } else {
            first[..depth].join(".")
        };
        out.push((status, module));
        return;
    }
    let mut parts: Vec<&str> = Vec::new();
    for (name, _) in entries {
        if let Some(part) = name.get(depth)
            && !parts.contains(part)
        {
            parts.push(part);
        }
    }
    for part in parts {
        let inside: Vec<(Vec<&str>, &'static str)> = entries
            .iter()
            .filter(|(name, _)| name.get(depth) == Some(&part))
            .cloned()
            .collect();
        group(&inside, depth + 1, out);
    }
}

/// `name  [source]  accuracy 0.973  mlp 64→64→5`
pub fn summary(model: &pb::Model) -> String {
    let accuracy = match &model.metrics {
        Some(pb::Metrics {
            holdout_perplexity: Some(perplexity),
            ..
        }) => format!("holdout perplexity {perplexity:.2}"),
        Some(metrics) => format!("holdout accuracy {:.3}", metrics.holdout_accuracy),
        None => "holdout accuracy -".to_string(),
    };
    let shape = model
        .architecture
        .as_ref()
        .and_then(|a| a.to_core("architecture").ok())
        .map(|a| shape(&a))
        .unwrap_or_default();
    format!(
        "{}  [{}]  {}  {}",
        model.name, model.source, accuracy, shape
    )
}

fn shape(architecture: &heirloom_core::Architecture) -> String {
    use heirloom_core::Architecture;
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
        Architecture::Llama(l) => format!(
            "llama {} layers × {} (heads {}/{}), vocab {}, {} positions, {}",
            l.num_hidden_layers,
            l.hidden_size,
            l.num_attention_heads,
            l.key_value_heads(),
            l.vocab_size,
            l.max_position_embeddings,
            l.dtype.as_str()
        ),
        Architecture::Gpt2(g) => format!(
            "gpt2 {} layers × {} (heads {}), vocab {}, {} positions, {}",
            g.n_layer,
            g.n_embd,
            g.n_head,
            g.vocab_size,
            g.n_positions,
            g.dtype.as_str()
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
    fn provenance_names_modules_at_the_coarsest_agreeing_level() {
        let tensor = |name: &str, status: pb::TensorStatus| pb::TensorProvenance {
            name: name.into(),
            status: status as i32,
            ..Default::default()
        };
        use pb::TensorStatus::{Inherited, New, Trained};
        let tensors = [
            tensor("hidden.0.weight", Inherited),
            tensor("hidden.0.bias", Inherited),
            tensor("hidden.1.weight", Trained),
            tensor("hidden.1.bias", Trained),
            tensor("fc.weight", New),
            tensor("fc.bias", New),
        ];
        assert_eq!(
            provenance(&tensors),
            "inherited hidden.0; trained hidden.1; new fc"
        );
        assert_eq!(provenance(&tensors[..2]), "inherited all");
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
