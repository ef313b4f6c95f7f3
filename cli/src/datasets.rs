use crate::output::{Output, outln};
use clap::Subcommand;
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::dataset_service_client::DatasetServiceClient;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Command {
    /// Register a dataset file: safetensors with `x` float32 [N, F] and `y` int64 [N].
    Register { name: String, file: PathBuf },
    /// Register a token dataset for language models from its shard files, in order: each
    /// safetensors with `tokens` int32 or int64 [sequences, length], one length for all.
    RegisterTokens {
        name: String,
        /// Every token id must be below it.
        #[arg(long)]
        vocab_size: u32,
        /// The padding token: no loss is taken on it and nothing attends to it.
        #[arg(long)]
        pad_token_id: Option<u32>,
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// List datasets.
    List,
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = DatasetServiceClient::new(channel.clone());
    match command {
        Command::Register { name, file } => {
            // Checked against the coordinator's limits before a byte is read or sent.
            let size = std::fs::metadata(&file)
                .map_err(|err| crate::usage(format!("{}: {err}", file.display())))?
                .len();
            let max_blob_bytes = crate::upload::max_blob_bytes(channel.clone()).await?;
            crate::upload::check_fits(&file.display().to_string(), size, max_blob_bytes)?;
            let max = heirloom_core::limits::MAX_DATASET_BYTES;
            if size > max {
                anyhow::bail!(
                    "{} is {}; the coordinator registers datasets of at most {} ({max} bytes)",
                    file.display(),
                    heirloom_client::display::bytes(size),
                    heirloom_client::display::bytes(max),
                );
            }
            let content = bytes::Bytes::from(
                std::fs::read(&file)
                    .map_err(|err| crate::usage(format!("{}: {err}", file.display())))?,
            );
            let sha256 = hex::encode(Sha256::digest(&content));
            // Uploaded first in chunks (unless stored already), then registered by hash.
            crate::upload::upload(channel.clone(), &[(sha256.clone(), content)]).await?;
            let dataset = client
                .register_dataset(pb::RegisterDatasetRequest {
                    name,
                    content: bytes::Bytes::new(),
                    sha256,
                    tokens: None,
                })
                .await?
                .into_inner()
                .dataset
                .unwrap_or_default();
            output.print(&dataset, || {
                outln!(
                    "registered dataset {} version {} ({})",
                    dataset.name,
                    dataset.version,
                    dataset.id
                );
                print_dataset(&dataset);
            })?;
        }
        Command::RegisterTokens {
            name,
            vocab_size,
            pad_token_id,
            shards,
        } => {
            let max_blob_bytes = crate::upload::max_blob_bytes(channel.clone()).await?;
            let mut hashes = Vec::with_capacity(shards.len());
            // One shard in memory at a time: uploaded (unless stored already), then dropped.
            for shard in &shards {
                let size = std::fs::metadata(shard)
                    .map_err(|err| crate::usage(format!("{}: {err}", shard.display())))?
                    .len();
                crate::upload::check_fits(&shard.display().to_string(), size, max_blob_bytes)?;
                let content = bytes::Bytes::from(
                    std::fs::read(shard)
                        .map_err(|err| crate::usage(format!("{}: {err}", shard.display())))?,
                );
                let sha256 = hex::encode(Sha256::digest(&content));
                crate::upload::upload(channel.clone(), &[(sha256.clone(), content)]).await?;
                hashes.push(sha256);
            }
            let dataset = client
                .register_dataset(pb::RegisterDatasetRequest {
                    name,
                    tokens: Some(pb::TokenDatasetManifest {
                        shard_sha256: hashes,
                        vocab_size,
                        pad_token_id,
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .dataset
                .unwrap_or_default();
            output.print(&dataset, || {
                outln!(
                    "registered token dataset {} version {} ({}), {} shards",
                    dataset.name,
                    dataset.version,
                    dataset.id,
                    dataset.token_shards.len()
                );
                print_dataset(&dataset);
            })?;
        }
        Command::List => {
            let listed = client
                .list_datasets(pb::ListDatasetsRequest {})
                .await?
                .into_inner();
            output.print(&listed, || listed.datasets.iter().for_each(print_dataset))?;
        }
    }
    Ok(())
}

fn print_dataset(dataset: &pb::Dataset) {
    if !dataset.token_shards.is_empty() {
        return outln!(
            "{:<24} {}  {} sequences x {} tokens in {} shards, vocabulary {}, sha256 {}",
            format!("{}@{}", dataset.name, dataset.version),
            dataset.id,
            dataset.num_examples,
            dataset.num_features,
            dataset.token_shards.len(),
            dataset.num_classes,
            &dataset.sha256[..12.min(dataset.sha256.len())]
        );
    }
    outln!(
        "{:<24} {}  {} examples x {} features, {} classes, sha256 {}",
        format!("{}@{}", dataset.name, dataset.version),
        dataset.id,
        dataset.num_examples,
        dataset.num_features,
        dataset.num_classes,
        &dataset.sha256[..12.min(dataset.sha256.len())]
    );
}
