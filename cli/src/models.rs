use crate::output::{Output, out, outln};
use crate::tree;
use clap::Subcommand;
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Command {
    /// Import existing weights (safetensors) with their architecture as a root model.
    Import {
        name: String,
        /// The architecture as JSON, or a JSON file: {"mlp": {"input_features": 64, "hidden": [64], "num_classes": 10}}
        #[arg(long)]
        arch: String,
        #[arg(long)]
        weights: PathBuf,
        /// For a torchscript architecture: the module file torch.jit.save wrote.
        #[arg(long)]
        program: Option<PathBuf>,
    },
    /// Show one model: weights, metrics and parents.
    Show { model: String },
    /// List every model.
    List,
    /// Every tensor of a model: its status, origin and hash.
    Tensors { model: String },
    /// Write a model's weights as a safetensors file (byte for byte what was trained).
    Export {
        model: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a model's ancestors and its descendants as a tree, with accuracies.
    Tree {
        model: String,
        /// How many generations to walk each way (0 = all).
        #[arg(long, default_value_t = 0)]
        depth: u32,
    },
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = ModelServiceClient::new(channel.clone())
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
    match command {
        Command::Import {
            name,
            arch,
            weights,
            program,
        } => {
            let architecture = parse_architecture(&arch)?;
            let file =
                bytes::Bytes::from(std::fs::read(&weights).map_err(|err| {
                    crate::usage(format!("--weights {}: {err}", weights.display()))
                })?);
            // Tensor by tensor, only those the store lacks, then imported by manifest:
            // no size limit, and a model sharing tensors with others uploads less.
            let tensors = heirloom_core::tensor_hashes("weights", &file)?;
            let max_blob_bytes = crate::upload::max_blob_bytes(channel.clone()).await?;
            for tensor in &tensors {
                let what = format!("{}: tensor {}", weights.display(), tensor.info.name);
                let size = tensor.range.len() as u64;
                crate::upload::check_fits(&what, size, max_blob_bytes)?;
            }
            let blobs: Vec<(String, bytes::Bytes)> = tensors
                .iter()
                .map(|t| (t.sha256.clone(), file.slice(t.range.clone())))
                .collect();
            let tensor_bytes: usize = blobs.iter().map(|(_, data)| data.len()).sum();
            let sent = crate::upload::upload(channel.clone(), &blobs).await?;
            let manifest = tensors.into_iter().map(pb::ManifestTensor::from).collect();
            let model = client
                .import_model(pb::ImportModelRequest {
                    name,
                    architecture: Some((&architecture).into()),
                    weights: bytes::Bytes::new(),
                    program: match program {
                        Some(path) => std::fs::read(&path).map_err(|err| {
                            crate::usage(format!("--program {}: {err}", path.display()))
                        })?,
                        None => Vec::new(),
                    },
                    tensors: manifest,
                })
                .await?
                .into_inner()
                .model
                .unwrap_or_default();
            output.print(&model, || {
                outln!(
                    "imported model {} ({}); uploaded {sent} of {tensor_bytes} tensor bytes \
                     (the store had the rest)",
                    model.name,
                    model.id
                )
            })?;
        }
        Command::Show { model } => {
            let model = get(&mut client, &model).await?;
            output.print(&model, || print_model(&model))?;
        }
        Command::List => {
            let listed = client
                .list_models(pb::ListModelsRequest {})
                .await?
                .into_inner();
            output.print(&listed, || {
                for model in &listed.models {
                    outln!("{}", tree::summary(model));
                }
            })?;
        }
        Command::Export { model, out } => {
            let exported = crate::export::run(channel, &model, &out).await?;
            output.print(&exported, || {})?;
        }
        Command::Tensors { model } => {
            let listed = client
                .list_model_tensors(pb::ListModelTensorsRequest { model })
                .await?
                .into_inner();
            output.print(&listed, || print_tensors(&listed.tensors))?;
        }
        Command::Tree { model, depth } => {
            let root = get(&mut client, &model).await?;
            let ancestors = client
                .list_ancestors(pb::ListAncestorsRequest {
                    model: root.id.clone(),
                    max_depth: depth,
                    page_size: 10_000,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .entries;
            let descendants = client
                .list_descendants(pb::ListDescendantsRequest {
                    model: root.id.clone(),
                    max_depth: depth,
                    page_size: 10_000,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .entries;
            let mut provenance = std::collections::HashMap::new();
            let everyone = ancestors
                .iter()
                .chain(&descendants)
                .filter_map(|e| e.model.as_ref());
            for model in everyone.chain(std::iter::once(&root)) {
                let tensors = client
                    .list_model_tensors(pb::ListModelTensorsRequest {
                        model: model.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .tensors;
                provenance.insert(model.id.clone(), tree::provenance(&tensors));
            }
            let family = serde_json::json!({
                "model": root,
                "ancestors": ancestors,
                "descendants": descendants,
            });
            output.print(&family, || {
                out!(
                    "{}",
                    tree::render(&root, &ancestors, &descendants, &provenance)
                )
            })?;
        }
    }
    Ok(())
}

pub async fn get(
    client: &mut ModelServiceClient<Connection>,
    model: &str,
) -> anyhow::Result<pb::Model> {
    Ok(client
        .get_model(pb::GetModelRequest {
            model: model.to_string(),
        })
        .await?
        .into_inner()
        .model
        .unwrap_or_default())
}

/// An architecture from inline JSON or a JSON file.
pub fn parse_architecture(text: &str) -> anyhow::Result<heirloom_core::Architecture> {
    let json = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        std::fs::read_to_string(text)
            .map_err(|err| crate::usage(format!("--arch: reading {text}: {err}")))?
    };
    serde_json::from_str(&json).map_err(|err| {
        crate::usage(format!(
            "--arch: expected JSON such as {{\"mlp\": {{\"input_features\": 64, \"hidden\": [64], \"num_classes\": 10}}}}: {err}"
        ))
    })
}

/// One line per tensor, columns aligned to the longest entry.
fn print_tensors(tensors: &[pb::TensorProvenance]) {
    let origins: Vec<String> = tensors
        .iter()
        .map(|tensor| match tensor.origin_model_name.as_str() {
            "" => "-".to_string(),
            model => format!("{model}.{}", tensor.origin_tensor),
        })
        .collect();
    let name_width = tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let origin_width = origins.iter().map(String::len).max().unwrap_or(0);
    for (tensor, origin) in tensors.iter().zip(&origins) {
        outln!(
            "{:<name_width$}  {:<12} {:<origin_width$}  {:<16} {}",
            tensor.name,
            tree::status(tensor.status()),
            origin,
            format!("{:?}", tensor.shape),
            &tensor.sha256[..12.min(tensor.sha256.len())]
        );
    }
}

fn print_model(model: &pb::Model) {
    outln!("{}", tree::summary(model));
    outln!("  id              {}", model.id);
    outln!("  source          {}", model.source);
    outln!(
        "  weights sha256  {} ({} bytes)",
        model.weights_sha256,
        model.weights_bytes
    );
    if let Some(architecture) = &model.architecture
        && let Ok(architecture) = architecture.to_core("architecture")
    {
        outln!(
            "  architecture    {}",
            serde_json::to_string(&architecture).unwrap_or_default()
        );
    }
    if let Some(dataset) = &model.dataset {
        outln!(
            "  dataset         {}@{} ({}, sha256 {}, {})",
            dataset.name,
            dataset.version,
            dataset.id,
            dataset.sha256,
            dataset.role
        );
    }
    if !model.job_id.is_empty() {
        outln!("  job             {}", model.job_id);
    }
    for parent in &model.parents {
        outln!(
            "  parent          {} ({}) via {}: {}",
            parent.parent_name,
            parent.parent_id,
            tree::relation(parent.relation()),
            parent.details_json
        );
    }
    if let Some(metrics) = &model.metrics {
        if let (Some(loss), Some(perplexity)) = (metrics.holdout_loss, metrics.holdout_perplexity) {
            outln!("  perplexity      {perplexity:.3} held out (next-token loss {loss:.4})");
        }
        outln!(
            "  accuracy        {:.3} held out, {:.3} while training",
            metrics.holdout_accuracy,
            metrics.train_accuracy
        );
        if let Some(note) = accuracy_gap_note(metrics) {
            outln!("  note            {note}");
        }
    }
}

/// How far training accuracy may lie above held-out accuracy before the gap needs saying.
const NOTABLE_ACCURACY_GAP: f64 = 0.2;

/// Why the two accuracies can differ this much, when they do: they measure different
/// things, and a user seeing 1.000 beside 0.488 deserves to know which to believe.
fn accuracy_gap_note(metrics: &pb::Metrics) -> Option<String> {
    let gap = metrics.train_accuracy - metrics.holdout_accuracy;
    (gap > NOTABLE_ACCURACY_GAP).then(|| {
        format!(
            "training accuracy runs {gap:.3} above held-out accuracy. Training accuracy is \
             measured as it trained, on its own rows, with batch norms in training mode \
             (each batch normalised by its own statistics); held-out accuracy is the model \
             as it will be used, in evaluation mode with the running statistics, on rows no \
             model trained on. A gap this large is overfitting, or running statistics that \
             have not caught up with the data (a norm whose statistics train moves them by \
             a tenth per step; frozen ones keep the parent's): trust the held-out figure, \
             and train longer, train the norms too, or hold more rows out"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_gap_between_the_accuracies_is_explained() {
        let metrics = |train_accuracy, holdout_accuracy| pb::Metrics {
            train_accuracy,
            holdout_accuracy,
            ..Default::default()
        };
        let note = accuracy_gap_note(&metrics(1.0, 0.488)).expect("a gap of 0.512");
        assert!(
            note.starts_with("training accuracy runs 0.512 above"),
            "{note}"
        );
        assert_eq!(accuracy_gap_note(&metrics(0.99, 0.95)), None);
        assert_eq!(accuracy_gap_note(&metrics(0.5, 0.9)), None);
    }
}
