//! The coordinator's own types: what a job, a model and a dataset are, independent of
//! both the database rows and the protobuf messages. Job kinds and relations are the
//! core's one table (`heirloom_core::JobKind`); a submission before planning is a
//! [`JobDraft`] (`draft.rs`), which checks the fields its kind takes and carries the
//! models and datasets it names as [`Reference`]s for planning to look up; who is calling
//! is a [`Caller`] with a [`Role`] (`identity.rs`); which workers fit a job's requirements,
//! why a queued job waits, and where the ranks of a gang go, is `placement.rs`.

mod draft;
mod identity;
mod placement;

pub use draft::{DraftModule, JobDraft, Reference, Target, fields_that_do_not_apply};
pub use identity::{Caller, Role};
pub use placement::{ConnectedWorker, gang_shortfall, place_gang, waiting_reason};

use chrono::{DateTime, Utc};
use heirloom_core::{Adjustment, Architecture, Hyperparameters, TensorPlan, TensorStatus};
pub use heirloom_core::{JobKind, Metrics, Progress, Relation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Leased,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        match self {
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => true,
            JobState::Queued | JobState::Leased | JobState::Running => false,
        }
    }

    /// A worker holds the job's lease in this state.
    pub fn is_leased(self) -> bool {
        match self {
            JobState::Leased | JobState::Running => true,
            JobState::Queued | JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                false
            }
        }
    }
}

/// A job's spec after validation, with every default filled in and its tensor plan
/// derived: stored as the job's `spec` and copied into the parent edges, so lineage
/// records what really ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    pub model_name: String,
    /// `None` only for a direct job scored on no data.
    pub dataset_id: Option<Uuid>,
    /// In the order the tensor plan's parent indexes refer to.
    pub parents: Vec<Uuid>,
    /// The architecture of the model the job produces.
    pub architecture: Architecture,
    pub hyperparameters: Hyperparameters,
    /// The trainable patterns as submitted (finetune, compose).
    pub trainable: Vec<String>,
    /// Transfer: the new head's output size.
    pub num_classes: Option<u32>,
    /// Transfer: how many of the last blocks train with the head.
    pub unfreeze_blocks: u32,
    /// Compose: the module map.
    pub modules: Vec<ModuleMapping>,
    pub adjustment: Option<Adjustment>,
    /// Where each tensor starts and whether it trains.
    pub tensors: Vec<TensorPlan>,
    /// The recipe version the job was made from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<RecipeUse>,
    /// How the job's data differs from each parent's training data, measured at submission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_shift: Vec<DataShift>,
}

/// A recipe version a job ran, with the merge patch the submission applied to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeUse {
    pub recipe: RecipeRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRef {
    pub id: Uuid,
    pub name: String,
    pub version: u32,
}

/// One version of a recipe as stored.
#[derive(Debug, Clone)]
pub struct RecipeRecord {
    pub reference: RecipeRef,
    pub kind: JobKind,
    /// The canonical body: every default filled in.
    pub body: serde_json::Value,
    pub derived_from: Option<RecipeRef>,
    pub patch: Option<serde_json::Value>,
    /// The model whose job the recipe was taken from, by id and name.
    pub source_model: Option<(Uuid, String)>,
    pub created_at: DateTime<Utc>,
}

/// How a job's data differs from the data one of its parents was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataShift {
    pub parent_id: Uuid,
    pub parent_name: String,
    pub reference_dataset: Uuid,
    pub reference_name: String,
    pub reference_version: u32,
    pub shift: heirloom_core::Shift,
}

impl JobSpec {
    /// Does any tensor train? (A direct job, or a compose of frozen modules, does not.)
    pub fn trains(&self) -> bool {
        self.tensors.iter().any(|tensor| tensor.trainable)
    }

    /// What a parent edge records: how the child was made from the parent at
    /// `parent_index`.
    pub fn edge_details(&self, parent_index: usize, job_id: Uuid) -> serde_json::Value {
        let spec = self;
        let parent_id = spec.parents[parent_index];
        let mut details = serde_json::json!({ "job_id": job_id });
        if spec.trains() {
            details["hyperparameters"] = serde_json::json!(spec.hyperparameters);
        }
        match spec.kind {
            JobKind::Train => {}
            JobKind::Finetune => details["trainable"] = serde_json::json!(spec.trainable),
            JobKind::Transfer => {
                details["num_classes"] = serde_json::json!(spec.num_classes);
                details["unfreeze_blocks"] = serde_json::json!(spec.unfreeze_blocks);
            }
            JobKind::Direct => {
                details["role"] = serde_json::json!(if parent_index == 0 { "a" } else { "b" })
            }
            JobKind::Compose => {
                let modules: Vec<_> = spec
                    .modules
                    .iter()
                    .filter(|m| m.parent_id == parent_id)
                    .collect();
                details["modules"] = serde_json::json!(modules);
                details["trainable"] = serde_json::json!(spec.trainable);
            }
        }
        if let Some(adjustment) = spec.adjustment {
            details["adjustment"] = serde_json::json!(adjustment);
        }
        details
    }
}

/// One module of a composed model, with the parent as a model id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleMapping {
    pub target_prefix: String,
    pub parent_id: Uuid,
    pub source_prefix: String,
}

/// One tensor of a model, as recorded when the model was made.
#[derive(Debug, Clone)]
pub struct TensorRecord {
    pub name: String,
    pub sha256: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub status: TensorStatus,
    pub origin: Option<(Uuid, String)>,
}

/// A tensor record with its origin model's name, for display.
#[derive(Debug, Clone)]
pub struct TensorProvenance {
    pub record: TensorRecord,
    pub origin_model_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub spec: JobSpec,
    pub state: JobState,
    pub priority: i32,
    pub request_id: Option<String>,
    pub worker_id: Option<Uuid>,
    pub attempt: i32,
    pub error: Option<String>,
    pub model_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub requirements: Requirements,
    pub max_attempts: i32,
    /// Attempts that ended in a retryable error or an expired lease.
    pub failures: i32,
    /// Where the last attempt got to, for the next one to resume from.
    pub checkpoint: Option<Checkpoint>,
}

/// What a worker must offer to be given a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// `cpu` or `cuda`; empty for any.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub min_device_memory_bytes: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Ranks the job trains on at once, each a slot meeting the requirements above.
    /// Left out of the stored form when 1, so a single-rank job's fingerprint is what it
    /// was before gangs existed.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: u32,
    /// The fewest ranks an attempt after a failure may run with (elastic); the world
    /// size when the job is not elastic.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub min_ranks: u32,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            device: String::new(),
            min_device_memory_bytes: 0,
            labels: Default::default(),
            world_size: 1,
            min_ranks: 1,
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(value: &u32) -> bool {
    *value == 1
}

/// The ranks of a gang attempt, and where they meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gang {
    /// Every rank of the attempt, rank 0 first.
    pub ranks: Vec<RankPlacement>,
    /// Where rank 0's worker hosts the c10d store: its advertised address and port.
    pub store: (String, u16),
}

impl Gang {
    /// `gloo` on CPU, `nccl` on CUDA: PyTorch's choices.
    pub fn backend(&self) -> &'static str {
        match self.ranks.first() {
            Some(rank) if rank.device.starts_with("cuda") => "nccl",
            _ => "gloo",
        }
    }
}

/// Where one rank of an attempt runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPlacement {
    pub rank: u32,
    pub worker_id: Uuid,
    pub device: String,
}

/// Where an attempt got to: its tensors (stored as blobs) and its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub tensors: Vec<CheckpointTensor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub sha256: String,
}

/// One attempt at a job.
#[derive(Debug, Clone)]
pub struct JobAttempt {
    pub attempt: i32,
    pub worker_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// running, succeeded, failed, retried, lease_expired, released or cancelled.
    pub outcome: String,
    pub error: Option<String>,
    /// The ranks it ran on (1 for a single-rank job), and their collectives' backend.
    pub world_size: i32,
    pub backend: String,
    /// The rank whose loss ended the attempt, when one was lost.
    pub failed_rank: Option<i32>,
    /// Where each rank ran; empty for a single-rank attempt.
    pub ranks: Vec<RankPlacement>,
}

/// How long leases last and how retries back off; the coordinator's settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub lease: std::time::Duration,
    /// The first retry's delay; each later one doubles it (with jitter), up to `MAX_BACKOFF`.
    pub retry_backoff: std::time::Duration,
    /// Workers checkpoint every this many steps (0: never).
    pub checkpoint_every: u64,
    /// How long the ranks of a gang have to meet, and each collective to finish.
    pub collective_timeout: std::time::Duration,
}

impl Policy {
    pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);

    /// The delay before the retry that follows `failures` failed attempts, before jitter.
    pub fn backoff(&self, failures: i32) -> std::time::Duration {
        let failures = u32::try_from(failures).unwrap_or(0);
        heirloom_core::backoff::backoff(self.retry_backoff, Self::MAX_BACKOFF, failures)
    }
}

#[derive(Debug, Clone)]
pub struct ParentEdge {
    pub parent_id: Uuid,
    pub parent_name: String,
    pub relation: Relation,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub id: Uuid,
    pub name: String,
    pub architecture: Architecture,
    pub weights_sha256: String,
    pub weights_bytes: u64,
    /// `import` or the kind of the job that made it.
    pub source: String,
    pub job_id: Option<Uuid>,
    /// The dataset it trained on (or, if it trained nothing, was scored on).
    pub dataset: Option<DatasetRef>,
    pub metrics: Option<Metrics>,
    pub parents: Vec<ParentEdge>,
    pub created_at: DateTime<Utc>,
    /// The recipe version the job that made it ran.
    pub recipe: Option<RecipeRef>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    /// 1 for a name's first content, then one more for each new content.
    pub version: u32,
    pub sha256: String,
    pub size_bytes: u64,
    pub num_examples: u64,
    pub num_features: u32,
    pub num_classes: u32,
    pub created_at: DateTime<Utc>,
    /// Measured at registration; `None` for datasets registered before statistics were,
    /// and for token datasets.
    pub statistics: Option<heirloom_core::DatasetStatistics>,
    /// A token dataset's shards and padding token; `None` for a classification dataset
    /// (`num_features` is then the sequence length, `num_classes` the vocabulary size).
    pub tokens: Option<TokenData>,
}

/// A token dataset as a registration names it: its shards in order (uploaded blobs),
/// its vocabulary and its padding token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenManifest {
    pub shard_sha256: Vec<String>,
    pub vocab_size: u32,
    pub pad_token_id: Option<u32>,
}

/// What a token dataset holds beyond a classification dataset's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenData {
    pub shards: Vec<heirloom_core::TokenShard>,
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum JobEventKind {
    State(JobState),
    Progress(Progress),
}

#[derive(Debug, Clone)]
pub struct JobEvent {
    pub sequence: i64,
    pub job_id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: JobEventKind,
    pub message: String,
}

/// A model's data edge: the exact dataset version.
#[derive(Debug, Clone)]
pub struct DatasetRef {
    pub id: Uuid,
    pub name: String,
    pub version: u32,
    pub sha256: String,
    /// `train`, or `eval` for a model scored on it without training.
    pub role: String,
}

/// A device a worker offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub memory_bytes: u64,
}

/// Names of models and datasets: what a person types, so nothing that needs quoting.
pub fn check_name(field: &str, name: &str) -> Result<(), heirloom_core::Invalid> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > 128 || !starts_well || !name.chars().all(allowed) {
        let shown: String = name.chars().take(40).collect();
        return Err(heirloom_core::Invalid::new(
            field,
            format!(
                "{shown:?} must be 1-128 characters of letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}
