//! What the coordinator and the worker must agree on, with no libtorch and no gRPC:
//! job kinds and the relations they write (one table, `kind.rs`), architecture specs and
//! their parameter names, hyperparameters and their defaults, trainable-tensor patterns,
//! tensor plans and the verification of provenance claims, the dataset and weights file
//! formats, and the check that what they hold is finite.
//!
//! Every check here names the field at fault, so the coordinator can turn it into an
//! `INVALID_ARGUMENT` that says what to fix.

mod architecture;
pub mod backoff;
mod files;
mod finite;
mod hyperparameters;
mod kind;
mod language_model;
pub mod limits;
mod memory;
mod patterns;
mod plan;
mod report;
mod statistics;
mod token_data;

pub use architecture::{
    Architecture, Init, Mlp, ProgramParameter, Resnet, SmallCnn, TensorSpec, Torchscript, Vgg,
    VggLayer, resnet_stages,
};
pub use files::{
    DatasetInfo, HashedTensor, TensorInfo, check_manifest, check_stored_dtype, read_dataset_info,
    read_tensor_infos, sha256_hex, tensor_hashes,
};
pub use finite::{NonFinite, check_finite, check_finite_part, first_non_finite, is_float_dtype};
pub use hyperparameters::{HyperparameterInput, Hyperparameters, Optimizer, Precision};
pub use kind::{AdjustmentUse, DatasetUse, JobKind, KindInputs, Parents, Relation};
pub use language_model::{Gpt2, Llama, MAX_POSITIONS, MAX_VOCABULARY, WeightDtype};
pub use memory::{MemoryEstimate, activation_elements, estimate as estimate_memory};
pub use patterns::{TrainablePatterns, pattern_matches};
pub use plan::{
    Adjustment, Claim, Module, Origin, TensorPlan, TensorStatus, plan_compose, plan_finetune,
    plan_inherit, plan_scratch, plan_transfer, under_prefix, verify_claims,
};
pub use report::{Metrics, Progress};
pub use statistics::{DatasetStatistics, MAX_PER_FEATURE, Shift};
pub use token_data::{MAX_SHARDS, ShardInfo, TokenShard, read_token_shard, token_manifest_sha256};

/// A spec that cannot be used, with the field to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
