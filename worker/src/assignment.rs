//! What an assignment means to this worker, and what it sends back: a `pb::Assignment`
//! becomes a `TrainingJob` with every blob it needs fetched into the local cache, and a
//! file training wrote (the weights, or a checkpoint) becomes uploaded blobs and the
//! message that describes them, each output tensor with its provenance claim. Weights
//! that are not finite are never uploaded.
//!
//! It never calls the coordinator's job RPCs (`client.rs` does) and never touches
//! libtorch (`train/` does).

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::train::{
    self, Blob, DataSource, Position, Resume, TokenShardRef, TokenSource, TrainingJob, Weights,
};
use heirloom_core::{Architecture, HashedTensor, Origin, TensorPlan, check_finite, tensor_hashes};
use heirloom_proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;

/// The worker's view of an assignment, with every blob it needs in the local cache;
/// refuses one it cannot run.
pub(crate) async fn training_job(
    cache: &Cache,
    assignment: &pb::Assignment,
) -> Result<TrainingJob> {
    let invalid = |what: &str| Error::InvalidJob(format!("assignment: {what}"));
    let spec = assignment.spec.as_ref().ok_or_else(|| invalid("no spec"))?;
    let architecture = assignment
        .architecture
        .as_ref()
        .ok_or_else(|| invalid("no architecture"))?
        .to_core("architecture")
        .map_err(|err| invalid(&err.to_string()))?;
    let hyperparameters = spec
        .hyperparameters
        .unwrap_or_default()
        .resolve("hyperparameters")
        .map_err(|err| invalid(&err.to_string()))?;
    let tensors = assignment
        .tensors
        .iter()
        .map(|tensor| {
            let origin = usize::try_from(tensor.parent_index)
                .ok()
                .map(|parent| Origin {
                    parent,
                    tensor: tensor.source_name.clone(),
                });
            TensorPlan {
                name: tensor.name.clone(),
                origin,
                trainable: tensor.trainable,
            }
        })
        .collect();
    let adjustment = assignment
        .adjustment
        .as_ref()
        .and_then(pb::Adjustment::to_core);
    let mut parents = Vec::new();
    for parent in &assignment.parents {
        parents.push(fetch_weights(cache, &parent.tensors).await?);
    }
    let dataset = match assignment.dataset_sha256.as_str() {
        "" if assignment.dataset_shards.is_empty() => None,
        // A token dataset is streamed: each shard is fetched when training nears it,
        // from the training thread (or the one fetching ahead), through this runtime.
        "" => {
            let (runtime, cache) = (tokio::runtime::Handle::current(), cache.clone());
            Some(DataSource::Tokens(TokenSource {
                shards: assignment
                    .dataset_shards
                    .iter()
                    .map(|shard| TokenShardRef {
                        sha256: shard.sha256.clone(),
                        sequences: shard.sequences,
                    })
                    .collect(),
                pad_token_id: assignment.pad_token_id,
                fetch: Arc::new(move |sha256: &str| runtime.block_on(cache.fetch(sha256))),
            }))
        }
        sha256 => Some(DataSource::Classes(cache.fetch(sha256).await?)),
    };
    let program = match &architecture {
        Architecture::Torchscript(script) => Some(cache.fetch(&script.program_sha256).await?),
        _ => None,
    };
    let resume = match &assignment.checkpoint {
        Some(checkpoint) => Some(Resume {
            weights: fetch_weights(cache, &checkpoint.tensors).await?,
            position: Position {
                step: checkpoint.step,
                loss_sum: checkpoint.loss_sum,
                correct: checkpoint.correct,
            },
        }),
        None => None,
    };
    Ok(TrainingJob {
        architecture,
        hyperparameters,
        tensors,
        parents,
        adjustment,
        dataset,
        program,
        resume,
        checkpoint_every: assignment.checkpoint_every,
        ranks: None,
    })
}

/// Weights tensor by tensor, every blob in the local cache.
async fn fetch_weights(cache: &Cache, tensors: &[pb::ManifestTensor]) -> Result<Weights> {
    let mut blobs = Vec::new();
    for tensor in tensors {
        blobs.push(Blob {
            name: tensor.name.clone(),
            dtype: tensor.dtype.clone(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            sha256: tensor.sha256.clone(),
            path: cache.fetch(&tensor.sha256).await?,
        });
    }
    Ok(Weights::Blobs(blobs))
}

/// Uploads the checkpoint's tensors the coordinator lacks (a frozen tensor is stored
/// already) and describes it; the file is not kept.
pub(crate) async fn checkpoint(
    cache: &Cache,
    path: &Path,
    position: Position,
) -> Result<pb::Checkpoint> {
    let bytes = bytes::Bytes::from(tokio::fs::read(path).await?);
    let _ = tokio::fs::remove_file(path).await;
    let hashes =
        tensor_hashes("checkpoint", &bytes).map_err(|err| Error::InvalidJob(err.to_string()))?;
    // Training that diverged would only resume into the same NaN: such a checkpoint is
    // not saved, the last finite one stays, and training reports the divergence.
    check_all_finite("checkpoint", &bytes, &hashes)?;
    let blobs: Vec<(String, bytes::Bytes)> = hashes
        .iter()
        .map(|t| (t.sha256.clone(), bytes.slice(t.range.clone())))
        .collect();
    cache.upload(&blobs).await?;
    Ok(pb::Checkpoint {
        step: position.step,
        loss_sum: position.loss_sum,
        correct: position.correct,
        tensors: hashes.into_iter().map(pb::ManifestTensor::from).collect(),
    })
}

/// Uploads the tensors the coordinator lacks, then describes every tensor: its hash,
/// dtype, shape and provenance claim. The claimed status is the plan's
/// (`TensorPlan::status`, the function the coordinator checks it with), told whether
/// the tensor's bytes are its origin's by the hash the assignment gives for the origin.
pub(crate) async fn job_output(
    cache: &Cache,
    path: &Path,
    metrics: Option<train::Metrics>,
    assignment: &pb::Assignment,
    job: &TrainingJob,
) -> Result<pb::JobOutput> {
    let bytes = bytes::Bytes::from(tokio::fs::read(path).await?);
    let hashes =
        tensor_hashes("weights", &bytes).map_err(|err| Error::InvalidJob(err.to_string()))?;
    // The coordinator refuses these too; checked here, they are never uploaded, and the
    // job fails for good naming the tensor.
    check_all_finite("weights", &bytes, &hashes)?;
    let mut blobs = Vec::new();
    let mut tensors = Vec::new();
    for HashedTensor {
        info,
        sha256,
        range,
    } in hashes
    {
        let plan = job
            .tensors
            .iter()
            .find(|t| t.name == info.name)
            .ok_or_else(|| {
                Error::InvalidJob(format!("wrote {} which the plan lacks", info.name))
            })?;
        let (origin_model_id, origin_tensor, unchanged) = match &plan.origin {
            Some(origin) => {
                let parent = &assignment.parents[origin.parent];
                let unchanged = parent
                    .tensors
                    .iter()
                    .any(|t| t.name == origin.tensor && t.sha256 == sha256);
                (parent.model_id.clone(), origin.tensor.clone(), unchanged)
            }
            None => (String::new(), String::new(), false),
        };
        let status = plan.status(job.adjustment, &info.dtype, unchanged);
        blobs.push((sha256.clone(), bytes.slice(range)));
        tensors.push(pb::TensorProvenance {
            name: info.name,
            sha256,
            status: pb::TensorStatus::from(status) as i32,
            origin_model_id,
            origin_tensor,
            dtype: info.dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            ..Default::default()
        });
    }
    let moved = cache.upload(&blobs).await?;
    // What this worker made, it has: a fine-tune of it later downloads nothing.
    cache.keep(&blobs).await?;
    tracing::info!(job_id = %assignment.job_id, uploaded_bytes = moved, "weights uploaded");
    Ok(pb::JobOutput {
        metrics: metrics.as_ref().map(pb::Metrics::from),
        tensors,
    })
}

/// Refuses a file any of whose float tensors holds NaN or ±inf, naming the first.
fn check_all_finite(field: &str, bytes: &[u8], hashes: &[HashedTensor]) -> Result<()> {
    for tensor in hashes {
        check_finite(
            field,
            &tensor.info.name,
            &tensor.info.dtype,
            &bytes[tensor.range.clone()],
        )
        .map_err(|err| Error::InvalidJob(err.to_string()))?;
    }
    Ok(())
}
