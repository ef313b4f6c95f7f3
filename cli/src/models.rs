use crate::output::Output;
use crate::tree;
use anyhow::Context;
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
            let file = bytes::Bytes::from(
                std::fs::read(&weights)
                    .with_context(|| format!("reading {}", weights.display()))?,
            );
            // Tensor by tensor, only those the store lacks, then imported by manifest:
            // no size limit, and a model sharing tensors with others uploads less.
            let tensors = heirloom_core::tensor_hashes("weights", &file)?;
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
                        Some(path) => std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                        None => Vec::new(),
                    },
                    tensors: manifest,
                })
                .await?
                .into_inner()
                .model
                .unwrap_or_default();
            output.print(&model, || {
                println!(
                    "imported model {} ({}); uploaded {sent} of {tensor_bytes} tensor bytes \
                     (the store had the rest)",
                    model.name, model.id
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
                    println!("{}", tree::summary(model));
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
                print!(
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
        std::fs::read_to_string(text).with_context(|| format!("reading {text}"))?
    };
    serde_json::from_str(&json).with_context(|| {
        "--arch: expected JSON such as {\"mlp\": {\"input_features\": 64, \"hidden\": [64], \"num_classes\": 10}}"
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
        println!(
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
    println!("{}", tree::summary(model));
    println!("  id              {}", model.id);
    println!("  source          {}", model.source);
    println!(
        "  weights sha256  {} ({} bytes)",
        model.weights_sha256, model.weights_bytes
    );
    if let Some(architecture) = &model.architecture
        && let Ok(architecture) = architecture.to_core("architecture")
    {
        println!(
            "  architecture    {}",
            serde_json::to_string(&architecture).unwrap_or_default()
        );
    }
    if let Some(dataset) = &model.dataset {
        println!(
            "  dataset         {}@{} ({}, sha256 {}, {})",
            dataset.name, dataset.version, dataset.id, dataset.sha256, dataset.role
        );
    }
    if !model.job_id.is_empty() {
        println!("  job             {}", model.job_id);
    }
    for parent in &model.parents {
        println!(
            "  parent          {} ({}) via {}: {}",
            parent.parent_name,
            parent.parent_id,
            tree::relation(parent.relation()),
            parent.details_json
        );
    }
}
