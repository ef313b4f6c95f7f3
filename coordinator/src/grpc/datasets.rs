//! DatasetService: registers a dataset sent inline or uploaded first, checking its hash,
//! its format and that `x` is finite, and reading its statistics, or a token dataset of
//! uploaded shards, reading every token id of every shard, all before anything is
//! stored or written; and lists datasets. Never builds a message but its own
//! `*Response` (`convert.rs` does); never speaks SQL.

use super::convert;
use crate::Services;
use crate::artifacts::check_sha256;
use crate::domain::{Dataset, TokenData, TokenManifest, check_name};
use crate::error::{Error, Result};
use heirloom_core::{
    Invalid, MAX_SHARDS, TokenShard, limits, read_dataset_info, read_token_shard, sha256_hex,
    token_manifest_sha256,
};
use heirloom_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct DatasetApi(pub Services);

#[tonic::async_trait]
impl pb::dataset_service_server::DatasetService for DatasetApi {
    async fn register_dataset(
        &self,
        request: Request<pb::RegisterDatasetRequest>,
    ) -> Result<Response<pb::RegisterDatasetResponse>, Status> {
        let request = request.into_inner();
        check_name("name", &request.name).map_err(Error::from)?;
        if let Some(manifest) = request.tokens.as_ref().map(convert::token_manifest) {
            if !request.content.is_empty() || !request.sha256.is_empty() {
                return Err(Error::from(Invalid::new(
                    "tokens",
                    "a token dataset is its shards: leave content and sha256 empty",
                ))
                .into());
            }
            let dataset = self.register_tokens(&request.name, &manifest).await?;
            return Ok(Response::new(pb::RegisterDatasetResponse {
                dataset: Some(convert::dataset_to_proto(&dataset)),
            }));
        }
        // The file comes inline, or was uploaded first and is named by its sha256.
        let content = if request.content.is_empty() {
            check_sha256("sha256", &request.sha256)?;
            match self.0.artifacts.len(&request.sha256).await? {
                None => {
                    return Err(Error::from(Invalid::new(
                        "content",
                        format!(
                            "is empty and no blob {} was uploaded: send the file, or upload it first",
                            request.sha256
                        ),
                    ))
                    .into());
                }
                Some(bytes) if bytes > limits::MAX_DATASET_BYTES => {
                    return Err(Error::from(Invalid::new(
                        "sha256",
                        format!(
                            "the uploaded dataset is {bytes} bytes; a dataset may have at most {}",
                            limits::MAX_DATASET_BYTES
                        ),
                    ))
                    .into());
                }
                Some(_) => {}
            }
            self.0.artifacts.read(&request.sha256).await?
        } else {
            request.content
        };
        let sha256 = sha256_hex(&content);
        if request.sha256 != sha256 {
            return Err(Error::from(Invalid::new(
                "sha256",
                format!(
                    "the content hashes to {sha256}, not {:?}: the file changed or was cut short",
                    request.sha256
                ),
            ))
            .into());
        }
        // Every check (NaN and ±inf too) comes before the first write: a refusal leaves
        // no row, and no blob unless the client uploaded one (garbage collection's).
        let info = read_dataset_info("content", &content).map_err(Error::from)?;
        self.0.artifacts.put(&sha256, content.clone()).await?;
        let dataset = Dataset {
            id: Uuid::new_v4(),
            name: request.name,
            version: 0, // the database assigns it
            sha256,
            size_bytes: content.len() as u64,
            num_examples: info.num_examples,
            num_features: info.num_features,
            num_classes: info.num_classes,
            created_at: chrono::Utc::now(),
            statistics: Some(info.statistics),
            tokens: None,
        };
        let dataset = self.0.db.insert_dataset(&dataset).await?;
        tracing::info!(dataset_id = %dataset.id, name = %dataset.name, "dataset registered");
        Ok(Response::new(pb::RegisterDatasetResponse {
            dataset: Some(convert::dataset_to_proto(&dataset)),
        }))
    }

    async fn list_datasets(
        &self,
        _request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let datasets = self.0.db.datasets().await?;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: datasets.iter().map(convert::dataset_to_proto).collect(),
        }))
    }
}

impl DatasetApi {
    /// Registers a token dataset: every shard was uploaded and is read once here, its
    /// every token id checked against the vocabulary, before the one row is written.
    async fn register_tokens(&self, name: &str, manifest: &TokenManifest) -> Result<Dataset> {
        let vocab_size = manifest.vocab_size;
        if vocab_size == 0 || vocab_size > heirloom_core::MAX_VOCABULARY {
            return Err(Invalid::new(
                "tokens.vocab_size",
                format!(
                    "must be from 1 to {}, got {vocab_size}",
                    heirloom_core::MAX_VOCABULARY
                ),
            )
            .into());
        }
        if let Some(pad) = manifest.pad_token_id
            && pad >= vocab_size
        {
            return Err(Invalid::new(
                "tokens.pad_token_id",
                format!(
                    "{pad} is outside the vocabulary (ids 0 to {})",
                    vocab_size - 1
                ),
            )
            .into());
        }
        let shards = &manifest.shard_sha256;
        if shards.is_empty() {
            return Err(Invalid::new(
                "tokens.shard_sha256",
                "lists no shard: upload each shard with UploadBlobs and list their hashes",
            )
            .into());
        }
        limits::check_count("tokens.shard_sha256", shards.len(), MAX_SHARDS)?;
        let mut checked = Vec::with_capacity(shards.len());
        let mut sequence_length = None;
        for (i, sha256) in shards.iter().enumerate() {
            let field = format!("tokens.shard_sha256[{i}]");
            check_sha256(&field, sha256)?;
            let Some(size_bytes) = self.0.artifacts.len(sha256).await? else {
                return Err(Invalid::new(
                    field,
                    format!("no blob {sha256} was uploaded: upload the shard first"),
                )
                .into());
            };
            let bytes = self.0.artifacts.read(sha256).await?;
            let info = read_token_shard(&field, &bytes, vocab_size)?;
            match sequence_length {
                None => sequence_length = Some(info.sequence_length),
                Some(length) if length != info.sequence_length => {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "its sequences are {} tokens long, shard 0's {length}: every shard \
                             of a dataset has one length",
                            info.sequence_length
                        ),
                    )
                    .into());
                }
                Some(_) => {}
            }
            checked.push(TokenShard {
                sha256: sha256.clone(),
                sequences: info.sequences,
                size_bytes,
            });
        }
        let dataset = Dataset {
            id: Uuid::new_v4(),
            name: name.to_string(),
            version: 0, // the database assigns it
            sha256: token_manifest_sha256(shards, vocab_size, manifest.pad_token_id),
            size_bytes: checked.iter().map(|shard| shard.size_bytes).sum(),
            num_examples: checked.iter().map(|shard| shard.sequences).sum(),
            num_features: sequence_length.unwrap_or_default(),
            num_classes: vocab_size,
            created_at: chrono::Utc::now(),
            statistics: None,
            tokens: Some(TokenData {
                shards: checked,
                pad_token_id: manifest.pad_token_id,
            }),
        };
        let dataset = self.0.db.insert_dataset(&dataset).await?;
        tracing::info!(
            dataset_id = %dataset.id,
            name = %dataset.name,
            shards = shards.len(),
            "token dataset registered"
        );
        Ok(dataset)
    }
}
