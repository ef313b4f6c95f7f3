//! The only place in the coordinator that touches prost types: protobuf messages to
//! domain types (checking every field on the way in) and back, as `*_from_proto` and
//! `*_to_proto` functions. Never speaks SQL and decides nothing: it checks and reshapes.
//!
//! The rule for the service files beside it (`tests/tidy.rs` checks it): a service names
//! only its RPCs' `*Request` / `*Response` types and the generated `*_server` traits. It
//! reads the fields of its own request, hands any nested message, enum or oneof to a
//! function here, and builds its own response around what these functions return (plus
//! plain strings, numbers and bytes). Every other message is built or read here, as is
//! anything that encodes one (the submission fingerprint).

use super::lineage::{GraphFormat, View};
use crate::artifacts::ManifestEntry;
use crate::db::{BlameStep, Graph, Page, TokenRecord};
use crate::dispatch::{Assignment, ClaimedTensor, Output};
use crate::domain::Role;
use crate::domain::{
    Checkpoint, CheckpointTensor, DataShift, Dataset, Device, DraftModule, Job, JobAttempt,
    JobDraft, JobEvent, JobEventKind, JobKind, JobState, Metrics, Model, Progress, RecipeRecord,
    RecipeRef, Reference, Requirements, TensorProvenance, TokenManifest,
};
use crate::error::{Error, Result};
use crate::planning::{Check, Plan, RecipeSubmission};
use crate::recipes::{Change, RecipeInputs};
use chrono::{DateTime, SecondsFormat, Utc};
use heirloom_core::{Adjustment, Architecture, Invalid, TensorInfo, limits};
use heirloom_proto::v1 as pb;
use std::collections::HashMap;
use uuid::Uuid;

pub fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    if text.is_empty() {
        return Err(Invalid::new(field, "is required").into());
    }
    Uuid::parse_str(text)
        .map_err(|_| Invalid::new(field, format!("{text:?} is not an id (a UUID)")).into())
}

fn optional_id(field: &str, text: &str) -> Result<Option<Uuid>> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_id(field, text).map(Some)
    }
}

/// A model named by id or name; `None` when the field is empty.
fn optional_model(field: &str, text: &str) -> Result<Option<Reference>> {
    match text {
        "" => Ok(None),
        text => Ok(Some(Reference::model(field, text)?)),
    }
}

/// A dataset named by id, `name@version` or name; `None` when the field is empty.
fn optional_dataset(field: &str, text: &str) -> Result<Option<Reference>> {
    match text {
        "" => Ok(None),
        text => Ok(Some(Reference::dataset(field, text)?)),
    }
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn architecture_from_proto(
    field: &str,
    proto: Option<pb::Architecture>,
) -> Result<Option<Architecture>> {
    Ok(proto.map(|proto| proto.to_core(field)).transpose()?)
}

/// A submission: a spec written out, or a recipe with the job's inputs.
pub enum JobRequest {
    Spec(Box<JobDraft>),
    Recipe(RecipeSubmission),
}

pub fn job_request_from_proto(spec: Option<pb::JobSpec>) -> Result<JobRequest> {
    let spec = spec.ok_or_else(|| Error::from(Invalid::new("spec", "is required")))?;
    if spec.recipe.is_empty() {
        for (field, set) in [
            (
                "spec.recipe_overrides_json",
                !spec.recipe_overrides_json.is_empty(),
            ),
            ("spec.parents", !spec.parents.is_empty()),
        ] {
            if set {
                return Err(Invalid::new(
                    field,
                    "applies only with spec.recipe; without one use parent_id and the spec's fields",
                )
                .into());
            }
        }
        return job_draft_from_proto(spec).map(|draft| JobRequest::Spec(Box::new(draft)));
    }
    limits::check_length("spec.recipe", &spec.recipe, limits::MAX_REFERENCE_BYTES)?;
    // The recipe says how; the spec gives only the inputs.
    let from_recipe = "comes from the recipe: leave it empty and change it with \
                       spec.recipe_overrides_json";
    for (field, set) in [
        ("spec.kind", spec.kind != 0),
        ("spec.parent_id", !spec.parent_id.is_empty()),
        ("spec.second_parent_id", !spec.second_parent_id.is_empty()),
        ("spec.architecture", spec.architecture.is_some()),
        ("spec.hyperparameters", spec.hyperparameters.is_some()),
        ("spec.trainable", !spec.trainable.is_empty()),
        ("spec.num_classes", spec.num_classes != 0),
        ("spec.alpha", spec.alpha != 0.0),
        ("spec.scale", spec.scale != 0.0),
        ("spec.unfreeze_blocks", spec.unfreeze_blocks != 0),
        ("spec.modules", !spec.modules.is_empty()),
    ] {
        if set {
            let reason = if field == "spec.parent_id" || field == "spec.second_parent_id" {
                "with a recipe, give the parents in spec.parents, in the recipe's slot order"
            } else {
                from_recipe
            };
            return Err(Invalid::new(field, reason).into());
        }
    }
    limits::check_count("spec.parents", spec.parents.len(), limits::MAX_MODULES)?;
    let parents = spec
        .parents
        .iter()
        .enumerate()
        .map(|(i, parent)| Reference::model(format!("spec.parents[{i}]"), parent))
        .collect::<std::result::Result<Vec<_>, Invalid>>()?;
    let overrides = match spec.recipe_overrides_json.as_str() {
        "" => None,
        text => Some(crate::recipes::parse_json(
            "spec.recipe_overrides_json",
            text,
        )?),
    };
    Ok(JobRequest::Recipe(RecipeSubmission {
        reference: spec.recipe,
        overrides,
        inputs: RecipeInputs {
            model_name: spec.model_name,
            dataset: optional_dataset("spec.dataset_id", &spec.dataset_id)?,
            parents,
        },
    }))
}

fn job_draft_from_proto(spec: pb::JobSpec) -> Result<JobDraft> {
    let kind = pb::JobKind::try_from(spec.kind)
        .ok()
        .and_then(pb::JobKind::to_core)
        .ok_or_else(|| Invalid::new("spec.kind", format!("must be {}", JobKind::names())))?;
    limits::check_count("spec.modules", spec.modules.len(), limits::MAX_MODULES)?;
    limits::check_count("spec.trainable", spec.trainable.len(), limits::MAX_PATTERNS)?;
    for (i, pattern) in spec.trainable.iter().enumerate() {
        limits::check_length(
            &format!("spec.trainable[{i}]"),
            pattern,
            limits::MAX_PATTERN_BYTES,
        )?;
    }
    let modules = spec
        .modules
        .iter()
        .enumerate()
        .map(|(i, module)| {
            let field = format!("spec.modules[{i}]");
            limits::check_length(
                &format!("{field}.target_prefix"),
                &module.target_prefix,
                limits::MAX_TENSOR_NAME_BYTES,
            )?;
            limits::check_length(
                &format!("{field}.source_prefix"),
                &module.source_prefix,
                limits::MAX_TENSOR_NAME_BYTES,
            )?;
            Ok(DraftModule {
                target_prefix: module.target_prefix.clone(),
                parent: Reference::model(format!("{field}.parent_id"), &module.parent_id)?,
                source_prefix: module.source_prefix.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(JobDraft {
        kind,
        model_name: spec.model_name,
        dataset: optional_dataset("spec.dataset_id", &spec.dataset_id)?,
        parent: optional_model("spec.parent_id", &spec.parent_id)?,
        second_parent: optional_model("spec.second_parent_id", &spec.second_parent_id)?,
        alpha: spec.alpha,
        scale: spec.scale,
        unfreeze_blocks: spec.unfreeze_blocks,
        modules,
        architecture: architecture_from_proto("spec.architecture", spec.architecture)?,
        hyperparameters: spec
            .hyperparameters
            .unwrap_or_default()
            .resolve("spec.hyperparameters")?,
        trainable: spec.trainable,
        num_classes: spec.num_classes,
    })
}

pub fn job_state_from_proto(field: &str, state: i32) -> Result<Option<JobState>> {
    Ok(match pb::JobState::try_from(state) {
        Ok(pb::JobState::Unspecified) => None,
        Ok(pb::JobState::Queued) => Some(JobState::Queued),
        Ok(pb::JobState::Leased) => Some(JobState::Leased),
        Ok(pb::JobState::Running) => Some(JobState::Running),
        Ok(pb::JobState::Succeeded) => Some(JobState::Succeeded),
        Ok(pb::JobState::Failed) => Some(JobState::Failed),
        Ok(pb::JobState::Cancelled) => Some(JobState::Cancelled),
        Err(_) => return Err(Invalid::new(field, format!("{state} is not a job state")).into()),
    })
}

pub fn job_state_to_proto(state: JobState) -> pb::JobState {
    match state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Leased => pb::JobState::Leased,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_spec_to_proto(spec: &crate::domain::JobSpec) -> pb::JobSpec {
    // Parents named by id fields; a compose job's are named by its modules.
    let parent = |index: usize| {
        let named = spec.kind.inputs().takes_parent();
        match spec.parents.get(index) {
            Some(id) if named => id.to_string(),
            _ => String::new(),
        }
    };
    let (alpha, scale) = match spec.adjustment {
        Some(Adjustment::Interpolate { alpha } | Adjustment::WiseFt { alpha }) => (alpha, 0.0),
        Some(Adjustment::Scale { factor }) => (0.0, factor),
        None => (0.0, 0.0),
    };
    pb::JobSpec {
        kind: pb::JobKind::from(spec.kind) as i32,
        model_name: spec.model_name.clone(),
        dataset_id: spec.dataset_id.map(|id| id.to_string()).unwrap_or_default(),
        parent_id: parent(0),
        second_parent_id: parent(1),
        architecture: Some((&spec.architecture).into()),
        hyperparameters: Some((&spec.hyperparameters).into()),
        trainable: spec.trainable.clone(),
        num_classes: spec.num_classes.unwrap_or_default(),
        alpha,
        scale,
        unfreeze_blocks: spec.unfreeze_blocks,
        modules: spec
            .modules
            .iter()
            .map(|module| pb::ModuleMapping {
                target_prefix: module.target_prefix.clone(),
                parent_id: module.parent_id.to_string(),
                source_prefix: module.source_prefix.clone(),
            })
            .collect(),
        recipe: spec
            .recipe
            .as_ref()
            .map(|used| format!("{}@{}", used.recipe.name, used.recipe.version))
            .unwrap_or_default(),
        recipe_overrides_json: spec
            .recipe
            .as_ref()
            .and_then(|used| used.overrides.as_ref())
            .map(|overrides| overrides.to_string())
            .unwrap_or_default(),
        parents: spec.parents.iter().map(Uuid::to_string).collect(),
    }
}

pub fn recipe_ref_to_proto(recipe: &RecipeRef) -> pb::RecipeRef {
    pb::RecipeRef {
        id: recipe.id.to_string(),
        name: recipe.name.clone(),
        version: recipe.version,
    }
}

pub fn data_shift_to_proto(shift: &DataShift) -> pb::DataShift {
    pb::DataShift {
        parent_model_id: shift.parent_id.to_string(),
        parent_model_name: shift.parent_name.clone(),
        reference: Some(pb::DatasetRef {
            id: shift.reference_dataset.to_string(),
            name: shift.reference_name.clone(),
            version: shift.reference_version,
            sha256: String::new(),
            role: "train".into(),
        }),
        mean_shift: shift.shift.mean_shift,
        max_mean_shift: shift.shift.max_mean_shift,
        max_mean_shift_feature: shift.shift.max_mean_shift_feature,
        std_ratio: shift.shift.std_ratio,
        label_distance: shift.shift.label_distance,
        new_labels: shift.shift.new_labels.clone(),
        verdict: shift.shift.verdict().into(),
    }
}

pub fn recipe_to_proto(recipe: &RecipeRecord) -> pb::Recipe {
    pb::Recipe {
        id: recipe.reference.id.to_string(),
        name: recipe.reference.name.clone(),
        version: recipe.reference.version,
        kind: recipe.kind.as_str().into(),
        body_json: recipe.body.to_string(),
        derived_from: recipe.derived_from.as_ref().map(recipe_ref_to_proto),
        patch_json: recipe
            .patch
            .as_ref()
            .map(|patch| patch.to_string())
            .unwrap_or_default(),
        source_model_id: recipe
            .source_model
            .as_ref()
            .map(|(id, _)| id.to_string())
            .unwrap_or_default(),
        source_model_name: recipe
            .source_model
            .as_ref()
            .map(|(_, name)| name.clone())
            .unwrap_or_default(),
        created_at: timestamp(recipe.created_at),
    }
}

/// One leaf of DiffRecipes: its path and each side's value as JSON (empty where absent).
pub fn recipe_change_to_proto(change: Change) -> pb::RecipeChange {
    let json =
        |value: Option<serde_json::Value>| value.map(|value| value.to_string()).unwrap_or_default();
    pb::RecipeChange {
        path: change.path,
        a_json: json(change.a),
        b_json: json(change.b),
    }
}

/// A model made with a recipe of the family asked about, `depth` derivations below it.
pub fn recipe_model_to_proto(model: &Model, recipe: &RecipeRef, depth: u32) -> pb::RecipeModel {
    pb::RecipeModel {
        model: Some(model_to_proto(model)),
        recipe: Some(recipe_ref_to_proto(recipe)),
        depth,
    }
}

/// A plan for PlanJob: each tensor with the status its provenance will record.
pub fn plan_to_proto(plan: &Plan) -> pb::JobPlan {
    let Some(spec) = &plan.spec else {
        return pb::JobPlan {
            checks: plan.checks.iter().map(check_to_proto).collect(),
            refusals: plan.refusals.iter().map(refusal_to_proto).collect(),
            ..Default::default()
        };
    };
    let shapes: std::collections::HashMap<String, heirloom_core::TensorSpec> = spec
        .architecture
        .parameters()
        .into_iter()
        .map(|tensor| (tensor.name.clone(), tensor))
        .collect();
    let (mut trainable_parameters, mut frozen_parameters) = (0, 0);
    let tensors = spec
        .tensors
        .iter()
        .map(|tensor| {
            let shape = &shapes[&tensor.name];
            let elements: u64 = shape.shape.iter().map(|&d| d as u64).product();
            if tensor.trainable && !shape.buffer {
                trainable_parameters += elements;
            } else {
                frozen_parameters += elements;
            }
            let origin = tensor
                .origin
                .as_ref()
                .map(|origin| (&plan.parents[origin.parent], &origin.tensor));
            pb::PlannedTensor {
                name: tensor.name.clone(),
                // Before the work its bytes are not known: taken as changed.
                status: pb::TensorStatus::from(tensor.status(spec.adjustment, shape.dtype, false))
                    as i32,
                trainable: tensor.trainable,
                origin_model_id: origin.map(|(m, _)| m.id.to_string()).unwrap_or_default(),
                origin_model_name: origin.map(|(m, _)| m.name.clone()).unwrap_or_default(),
                origin_tensor: origin.map(|(_, t)| t.clone()).unwrap_or_default(),
                dtype: shape.dtype.into(),
                shape: shape.shape.iter().map(|&d| d as u64).collect(),
                elements,
            }
        })
        .collect();
    pb::JobPlan {
        spec: Some(job_spec_to_proto(spec)),
        recipe: spec
            .recipe
            .as_ref()
            .map(|used| recipe_ref_to_proto(&used.recipe)),
        tensors,
        trainable_parameters,
        frozen_parameters,
        checks: plan.checks.iter().map(check_to_proto).collect(),
        memory: plan.memory.as_ref().map(|memory| pb::MemoryEstimate {
            batch_size: memory.batch_size,
            weights_bytes: memory.weights_bytes,
            gradients_bytes: memory.gradients_bytes,
            optimizer_bytes: memory.optimizer_bytes,
            activations_bytes: memory.activations_bytes,
            data_bytes: memory.data_bytes,
            output_bytes: memory.output_bytes,
            total_bytes: memory.total_bytes(),
            note: memory.note.clone(),
        }),
        data_shift: spec.data_shift.iter().map(data_shift_to_proto).collect(),
        refusals: plan.refusals.iter().map(refusal_to_proto).collect(),
        gang: plan.gang.as_ref().map(|gang| pb::GangPlan {
            world_size: gang.world_size,
            min_ranks: gang.min_ranks,
            batch_per_rank: gang.batch_per_rank,
            memory_per_rank_bytes: gang.memory_per_rank_bytes,
            placement: gang.placement.clone(),
        }),
    }
}

fn check_to_proto(check: &Check) -> pb::PlanCheck {
    pb::PlanCheck {
        check: check.check.clone(),
        passed: check.passed,
        detail: check.detail.clone(),
    }
}

pub fn refusal_to_proto(error: &Error) -> pb::Refusal {
    pb::Refusal {
        code: super::observe::code_name(error.code()).into(),
        message: error.to_string(),
    }
}

pub fn job_to_proto(job: &Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        spec: Some(job_spec_to_proto(&job.spec)),
        state: job_state_to_proto(job.state) as i32,
        priority: job.priority,
        worker_id: job.worker_id.map(|id| id.to_string()).unwrap_or_default(),
        attempt: job.attempt as u32,
        error: job.error.clone().unwrap_or_default(),
        model_id: job.model_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: timestamp(job.created_at),
        updated_at: timestamp(job.updated_at),
        request_id: job.request_id.clone().unwrap_or_default(),
        requirements: Some(requirements_to_proto(&job.requirements)),
        max_attempts: job.max_attempts as u32,
        failures: job.failures as u32,
        attempts: Vec::new(),
        checkpoint_step: job.checkpoint.as_ref().map_or(0, |c| c.step),
        recipe: job
            .spec
            .recipe
            .as_ref()
            .map(|used| recipe_ref_to_proto(&used.recipe)),
        data_shift: job
            .spec
            .data_shift
            .iter()
            .map(data_shift_to_proto)
            .collect(),
        waiting_reason: String::new(),
    }
}

pub fn requirements_from_proto(proto: Option<pb::Requirements>) -> Result<Requirements> {
    let proto = proto.unwrap_or_default();
    if !matches!(proto.device.as_str(), "" | "cpu" | "cuda") {
        return Err(Invalid::new(
            "requirements.device",
            format!(
                "{:.40?} is not a device kind: use cpu or cuda, or leave it empty",
                proto.device
            ),
        )
        .into());
    }
    limits::check_labels("requirements.labels", &proto.labels)?;
    let world_size = proto.world_size.unwrap_or(1);
    if !(1..=limits::MAX_WORLD_SIZE).contains(&world_size) {
        return Err(Invalid::new(
            "requirements.world_size",
            format!(
                "must be between 1 and {}, got {world_size}; leave it unset for one rank",
                limits::MAX_WORLD_SIZE
            ),
        )
        .into());
    }
    let min_ranks = proto.min_ranks.unwrap_or(world_size);
    if !(1..=world_size).contains(&min_ranks) {
        return Err(Invalid::new(
            "requirements.min_ranks",
            format!(
                "must be between 1 and the world size {world_size}, got {min_ranks}; leave it \
                 unset for a run that always has every rank"
            ),
        )
        .into());
    }
    Ok(Requirements {
        device: proto.device,
        min_device_memory_bytes: proto.min_device_memory_bytes,
        labels: proto.labels.into_iter().collect(),
        world_size,
        min_ranks,
    })
}

fn requirements_to_proto(requirements: &Requirements) -> pb::Requirements {
    pb::Requirements {
        device: requirements.device.clone(),
        min_device_memory_bytes: requirements.min_device_memory_bytes,
        labels: requirements.labels.clone().into_iter().collect(),
        world_size: Some(requirements.world_size),
        min_ranks: Some(requirements.min_ranks),
    }
}

pub fn attempt_to_proto(attempt: &JobAttempt) -> pb::JobAttempt {
    pb::JobAttempt {
        attempt: attempt.attempt as u32,
        worker_id: attempt.worker_id.to_string(),
        started_at: timestamp(attempt.started_at),
        ended_at: attempt.ended_at.map(timestamp).unwrap_or_default(),
        outcome: attempt.outcome.clone(),
        error: attempt.error.clone().unwrap_or_default(),
        world_size: attempt.world_size.max(1) as u32,
        backend: attempt.backend.clone(),
        ranks: attempt
            .ranks
            .iter()
            .map(|rank| pb::RankPlacement {
                rank: rank.rank,
                worker_id: rank.worker_id.to_string(),
                device: rank.device.clone(),
            })
            .collect(),
        failed_rank: attempt.failed_rank.map(|rank| rank.max(0) as u32),
    }
}

/// A job with the history of its attempts and, if it is queued, why it waits, as GetJob
/// answers.
pub fn job_with_attempts_to_proto(
    job: &Job,
    attempts: &[JobAttempt],
    waiting_reason: Option<String>,
) -> pb::Job {
    pb::Job {
        attempts: attempts.iter().map(attempt_to_proto).collect(),
        waiting_reason: waiting_reason.unwrap_or_default(),
        ..job_to_proto(job)
    }
}

/// The sha256 of everything a submission asks for but its request id: a request id
/// reused with a different fingerprint is refused.
pub fn submission_fingerprint(
    request: &pb::SubmitJobRequest,
    requirements: &Requirements,
) -> String {
    use prost::Message;
    // The requirements' labels are a map, which protobuf encodes in no fixed order: they
    // go in as sorted JSON instead.
    let rest = pb::SubmitJobRequest {
        request_id: String::new(),
        requirements: None,
        ..request.clone()
    };
    let mut bytes = rest.encode_to_vec();
    bytes.extend(serde_json::to_vec(requirements).expect("requirements serialize"));
    heirloom_core::sha256_hex(&bytes)
}

/// Where a registering worker's gang ranks are reached: both set, or neither.
pub fn collective_from_proto(address: &str, port: u32) -> Result<Option<(&str, u16)>> {
    match (address, port) {
        ("", 0) => Ok(None),
        ("", _) => Err(Invalid::new(
            "collective_address",
            "is empty while collective_port is set: give the address other workers reach this \
             one at (its pod IP)",
        )
        .into()),
        (_, 0) => Err(Invalid::new(
            "collective_port",
            "is 0 while collective_address is set: give the port its ranks' store listens on",
        )
        .into()),
        (address, port) => {
            let port = u16::try_from(port).map_err(|_| {
                Invalid::new("collective_port", format!("{port} is not a TCP port"))
            })?;
            if address.len() > 253 || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Invalid::new(
                    "collective_address",
                    "must be a host name or IP address of at most 253 characters",
                )
                .into());
            }
            Ok(Some((address, port)))
        }
    }
}

/// An attempt number from a worker's request, as the database counts them.
pub fn attempt_from_proto(value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| Invalid::new("attempt", "is out of range").into())
}

/// The (job, attempt) leases a heartbeat says its worker still holds.
pub fn leases_from_proto(leases: &[pb::JobLease]) -> Result<Vec<(Uuid, i32)>> {
    limits::check_count("leases", leases.len(), limits::MAX_LEASES_PER_HEARTBEAT)?;
    leases
        .iter()
        .enumerate()
        .map(|(i, lease)| {
            let job_id = parse_id(&format!("leases[{i}].job_id"), &lease.job_id)?;
            Ok((job_id, attempt_from_proto(lease.attempt)?))
        })
        .collect()
}

pub fn checkpoint_from_proto(proto: Option<pb::Checkpoint>) -> Result<Checkpoint> {
    let proto = proto.ok_or_else(|| Error::from(Invalid::new("checkpoint", "is required")))?;
    if !proto.loss_sum.is_finite() {
        return Err(Invalid::new("checkpoint.loss_sum", "must be finite").into());
    }
    if proto.tensors.is_empty() {
        return Err(Invalid::new("checkpoint.tensors", "must list the model's tensors").into());
    }
    limits::check_tensors(
        "checkpoint.tensors",
        proto
            .tensors
            .iter()
            .map(|t| (&t.name[..], &t.shape[..], &t.sha256[..])),
    )?;
    Ok(Checkpoint {
        step: proto.step,
        loss_sum: proto.loss_sum,
        correct: proto.correct,
        tensors: proto
            .tensors
            .into_iter()
            .map(|t| CheckpointTensor {
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                sha256: t.sha256,
            })
            .collect(),
    })
}

/// A checkpoint from SaveCheckpoint, with its tensors as a manifest to look up in the
/// store: the manifest is checked first, then the checkpoint.
pub fn checkpoint_with_manifest_from_proto(
    proto: Option<pb::Checkpoint>,
) -> Result<(Checkpoint, Vec<ManifestEntry>)> {
    let manifest = manifest_from_proto(
        "checkpoint.tensors",
        proto.as_ref().map_or(&[][..], |c| &c.tensors[..]),
    )?;
    Ok((checkpoint_from_proto(proto)?, manifest))
}

fn checkpoint_to_proto(checkpoint: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        step: checkpoint.step,
        loss_sum: checkpoint.loss_sum,
        correct: checkpoint.correct,
        tensors: checkpoint
            .tensors
            .iter()
            .map(|t| pb::ManifestTensor {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                sha256: t.sha256.clone(),
            })
            .collect(),
    }
}

/// A manifest from a request: every tensor's name, shape and hash within bounds, and
/// its dtype one that Heirloom stores (so that the stored sizes checked later are
/// counted in it).
pub fn manifest_from_proto(
    field: &str,
    tensors: &[pb::ManifestTensor],
) -> Result<Vec<ManifestEntry>> {
    limits::check_tensors(
        field,
        tensors
            .iter()
            .map(|t| (&t.name[..], &t.shape[..], &t.sha256[..])),
    )?;
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let info = heirloom_core::TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
            };
            heirloom_core::check_stored_dtype(&format!("{field}[{i}]"), &info)?;
            Ok(ManifestEntry {
                info,
                sha256: t.sha256.clone(),
            })
        })
        .collect()
}

pub fn progress_from_proto(proto: Option<pb::Progress>) -> Result<Progress> {
    let proto = proto.ok_or_else(|| Error::from(Invalid::new("progress", "is required")))?;
    let progress = Progress::from(&proto);
    progress.check("progress")?;
    Ok(progress)
}

pub fn event_to_proto(event: &JobEvent) -> pb::JobEvent {
    pb::JobEvent {
        sequence: event.sequence,
        job_id: event.job_id.to_string(),
        at: timestamp(event.at),
        event: Some(match &event.kind {
            JobEventKind::State(state) => {
                pb::job_event::Event::State(job_state_to_proto(*state) as i32)
            }
            JobEventKind::Progress(progress) => pb::job_event::Event::Progress(progress.into()),
        }),
        message: event.message.clone(),
    }
}

pub fn metrics_from_proto(proto: Option<pb::Metrics>) -> Result<Option<Metrics>> {
    Ok(proto.map(|m| m.to_core("output.metrics")).transpose()?)
}

pub fn claims_from_proto(tensors: Vec<pb::TensorProvenance>) -> Result<Vec<ClaimedTensor>> {
    limits::check_tensors(
        "output.tensors",
        tensors
            .iter()
            .map(|t| (&t.name[..], &t.shape[..], &t.sha256[..])),
    )?;
    tensors
        .into_iter()
        .enumerate()
        .map(|(i, tensor)| {
            let field = format!("output.tensors[{i}]");
            let status = tensor.status().to_core(&format!("{field}.status"))?;
            let origin =
                match optional_id(&format!("{field}.origin_model_id"), &tensor.origin_model_id)? {
                    Some(id) => Some((id, tensor.origin_tensor)),
                    None => None,
                };
            Ok(ClaimedTensor {
                info: TensorInfo {
                    name: tensor.name,
                    dtype: tensor.dtype,
                    shape: tensor.shape.iter().map(|&d| d as usize).collect(),
                },
                sha256: tensor.sha256,
                status,
                origin,
            })
        })
        .collect()
}

/// How a worker says an attempt ended.
pub enum Completion {
    /// The model, to check and record.
    Output(Output),
    /// The attempt failed; the text is cut to the report limit.
    Error(String),
    /// The worker hands the job back; the reason is cut to the report limit.
    Release(String),
}

pub fn completion_from_proto(
    result: Option<pb::complete_job_request::Result>,
) -> Result<Completion> {
    use pb::complete_job_request::Result as Reported;
    let cut = |text: String| limits::truncated(text, limits::MAX_REPORT_BYTES);
    match result {
        Some(Reported::Output(output)) => Ok(Completion::Output(Output {
            metrics: metrics_from_proto(output.metrics)?,
            tensors: claims_from_proto(output.tensors)?,
        })),
        Some(Reported::Error(error)) => Ok(Completion::Error(cut(error))),
        Some(Reported::Release(reason)) => Ok(Completion::Release(cut(reason))),
        None => Err(Invalid::new("result", "set `output`, `error` or `release`").into()),
    }
}

pub fn tensors_to_proto(tensors: &[TensorProvenance]) -> Vec<pb::TensorProvenance> {
    tensors
        .iter()
        .map(|tensor| {
            let record = &tensor.record;
            let (origin_model_id, origin_tensor) = match &record.origin {
                Some((id, name)) => (id.to_string(), name.clone()),
                None => (String::new(), String::new()),
            };
            pb::TensorProvenance {
                name: record.name.clone(),
                sha256: record.sha256.clone(),
                status: pb::TensorStatus::from(record.status) as i32,
                origin_model_id,
                origin_model_name: tensor.origin_model_name.clone().unwrap_or_default(),
                origin_tensor,
                dtype: record.dtype.clone(),
                shape: record.shape.clone(),
            }
        })
        .collect()
}

pub fn model_to_proto(model: &Model) -> pb::Model {
    pb::Model {
        id: model.id.to_string(),
        name: model.name.clone(),
        architecture: Some((&model.architecture).into()),
        weights_sha256: model.weights_sha256.clone(),
        weights_bytes: model.weights_bytes,
        parents: model
            .parents
            .iter()
            .map(|edge| pb::ParentEdge {
                parent_id: edge.parent_id.to_string(),
                parent_name: edge.parent_name.clone(),
                relation: pb::Relation::from(edge.relation) as i32,
                details_json: edge.details.to_string(),
            })
            .collect(),
        dataset_id: model
            .dataset
            .as_ref()
            .map(|d| d.id.to_string())
            .unwrap_or_default(),
        dataset: model.dataset.as_ref().map(|d| pb::DatasetRef {
            id: d.id.to_string(),
            name: d.name.clone(),
            version: d.version,
            sha256: d.sha256.clone(),
            role: d.role.clone(),
        }),
        job_id: model.job_id.map(|id| id.to_string()).unwrap_or_default(),
        metrics: model.metrics.as_ref().map(pb::Metrics::from),
        source: model.source.clone(),
        created_at: timestamp(model.created_at),
        recipe: model.recipe.as_ref().map(recipe_ref_to_proto),
    }
}

/// One step of FindPath: a model and the relation that leads on from it.
pub fn path_step_to_proto(model: &Model, relation: Option<String>) -> pb::PathStep {
    pb::PathStep {
        model: Some(model_to_proto(model)),
        relation: relation.unwrap_or_default(),
    }
}

pub fn common_ancestor_to_proto(
    model: &Model,
    depth_from_a: u32,
    depth_from_b: u32,
) -> pb::CommonAncestor {
    pb::CommonAncestor {
        model: Some(model_to_proto(model)),
        depth_from_a,
        depth_from_b,
    }
}

pub fn blame_step_to_proto(step: BlameStep) -> pb::BlameStep {
    pb::BlameStep {
        model_id: step.model_id.to_string(),
        model_name: step.model_name,
        tensor: step.tensor,
        status: pb::TensorStatus::from(step.status) as i32,
        sha256: step.sha256,
    }
}

pub fn graph_format_from_proto(value: i32) -> Result<GraphFormat> {
    match pb::GraphFormat::try_from(value) {
        Ok(pb::GraphFormat::Json | pb::GraphFormat::Unspecified) => Ok(GraphFormat::Json),
        Ok(pb::GraphFormat::Dot) => Ok(GraphFormat::Dot),
        Ok(pb::GraphFormat::Mermaid) => Ok(GraphFormat::Mermaid),
        Err(_) => Err(Invalid::new("format", "use json, dot or mermaid").into()),
    }
}

/// The graph around `focus` as LineageGraph's nodes and edges.
pub fn graph_to_proto(graph: &Graph, focus: Uuid) -> (Vec<pb::GraphNode>, Vec<pb::GraphEdge>) {
    let nodes = graph
        .nodes
        .iter()
        .map(|model| pb::GraphNode {
            id: model.id.to_string(),
            name: model.name.clone(),
            source: model.source.clone(),
            holdout_accuracy: model.metrics.as_ref().map(|m| m.holdout_accuracy),
            focus: model.id == focus,
        })
        .collect();
    let edges = graph
        .edges
        .iter()
        .map(|(parent, child, relation)| pb::GraphEdge {
            parent_id: parent.to_string(),
            child_id: child.to_string(),
            relation: relation.clone(),
        })
        .collect();
    (nodes, edges)
}

pub fn lineage_view_from_proto(value: i32) -> Result<View> {
    match pb::LineageView::try_from(value) {
        Ok(pb::LineageView::Full | pb::LineageView::Unspecified) => Ok(View::Full),
        Ok(pb::LineageView::Basic) => Ok(View::Basic),
        Err(_) => Err(Invalid::new("view", "use full or basic").into()),
    }
}

/// A page's entries: the whole model where `models` has it (the full view), otherwise
/// only its id, name, source and creation time.
pub fn lineage_entries_to_proto(
    page: &Page,
    mut models: HashMap<Uuid, Model>,
) -> Vec<pb::LineageEntry> {
    page.entries
        .iter()
        .map(|entry| pb::LineageEntry {
            model: Some(match models.remove(&entry.id) {
                Some(model) => model_to_proto(&model),
                None => pb::Model {
                    id: entry.id.to_string(),
                    name: entry.name.clone(),
                    source: entry.source.clone(),
                    created_at: timestamp(entry.created_at),
                    ..Default::default()
                },
            }),
            depth: entry.depth as u32,
        })
        .collect()
}

pub fn dataset_to_proto(dataset: &Dataset) -> pb::Dataset {
    pb::Dataset {
        id: dataset.id.to_string(),
        name: dataset.name.clone(),
        version: dataset.version,
        sha256: dataset.sha256.clone(),
        size_bytes: dataset.size_bytes,
        num_examples: dataset.num_examples,
        num_features: dataset.num_features,
        num_classes: dataset.num_classes,
        created_at: timestamp(dataset.created_at),
        statistics: dataset
            .statistics
            .as_ref()
            .map(|statistics| pb::DatasetStatistics {
                labels: statistics.labels(),
                label_counts: statistics.label_counts.clone(),
                mean: statistics.mean,
                std: statistics.std,
                per_feature: !statistics.feature_mean.is_empty(),
            }),
        token_shards: dataset
            .tokens
            .as_ref()
            .map(|tokens| tokens.shards.iter().map(token_shard_to_proto).collect())
            .unwrap_or_default(),
        pad_token_id: dataset
            .tokens
            .as_ref()
            .and_then(|tokens| tokens.pad_token_id),
    }
}

pub fn token_manifest(manifest: &pb::TokenDatasetManifest) -> TokenManifest {
    TokenManifest {
        shard_sha256: manifest.shard_sha256.clone(),
        vocab_size: manifest.vocab_size,
        pad_token_id: manifest.pad_token_id,
    }
}

fn token_shard_to_proto(shard: &heirloom_core::TokenShard) -> pb::TokenShard {
    pb::TokenShard {
        sha256: shard.sha256.clone(),
        sequences: shard.sequences,
        size_bytes: shard.size_bytes,
    }
}

pub fn devices_from_proto(devices: Vec<pb::Device>) -> Result<Vec<Device>> {
    limits::check_count("devices", devices.len(), limits::MAX_DEVICES)?;
    for (i, device) in devices.iter().enumerate() {
        limits::check_length(
            &format!("devices[{i}].name"),
            &device.name,
            limits::MAX_LABEL_BYTES,
        )?;
    }
    Ok(devices
        .into_iter()
        .map(|device| Device {
            name: device.name,
            memory_bytes: device.memory_bytes,
        })
        .collect())
}

pub fn assignment_to_proto(assignment: &Assignment) -> pb::Assignment {
    let job = &assignment.job;
    let adjustment = job.spec.adjustment.map(pb::Adjustment::from);
    pb::Assignment {
        job_id: job.id.to_string(),
        attempt: job.attempt as u32,
        spec: Some(job_spec_to_proto(&job.spec)),
        architecture: Some((&job.spec.architecture).into()),
        dataset_sha256: match &assignment.dataset {
            Some(dataset) if dataset.tokens.is_none() => dataset.sha256.clone(),
            _ => String::new(),
        },
        dataset_shards: assignment
            .dataset
            .as_ref()
            .and_then(|dataset| dataset.tokens.as_ref())
            .map(|tokens| tokens.shards.iter().map(token_shard_to_proto).collect())
            .unwrap_or_default(),
        pad_token_id: assignment
            .dataset
            .as_ref()
            .and_then(|dataset| dataset.tokens.as_ref())
            .and_then(|tokens| tokens.pad_token_id),
        parents: assignment
            .parents
            .iter()
            .map(|(id, manifest)| pb::AssignedParent {
                model_id: id.to_string(),
                tensors: manifest
                    .iter()
                    .map(|entry| pb::ManifestTensor {
                        name: entry.info.name.clone(),
                        dtype: entry.info.dtype.clone(),
                        shape: entry.info.shape.iter().map(|&d| d as u64).collect(),
                        sha256: entry.sha256.clone(),
                    })
                    .collect(),
            })
            .collect(),
        tensors: job
            .spec
            .tensors
            .iter()
            .map(|tensor| pb::TensorPlan {
                name: tensor.name.clone(),
                parent_index: tensor
                    .origin
                    .as_ref()
                    .map_or(-1, |origin| origin.parent as i32),
                source_name: tensor
                    .origin
                    .as_ref()
                    .map(|origin| origin.tensor.clone())
                    .unwrap_or_default(),
                trainable: tensor.trainable,
            })
            .collect(),
        adjustment,
        checkpoint: job.checkpoint.as_ref().map(checkpoint_to_proto),
        checkpoint_every: assignment.checkpoint_every,
        gang: assignment.gang.as_ref().map(|gang| {
            let (ranks, devices) = gang
                .ranks
                .iter()
                .filter(|rank| rank.worker_id == assignment.worker_id)
                .map(|rank| (rank.rank, rank.device.clone()))
                .unzip();
            pb::Gang {
                world_size: gang.ranks.len() as u32,
                ranks,
                devices,
                store_address: gang.store.0.clone(),
                store_port: u32::from(gang.store.1),
                // Fresh for every attempt: a rank of an earlier one meets nobody.
                store_prefix: format!("heirloom/{}/{}/", job.id, job.attempt),
                backend: gang.backend().to_string(),
                timeout_seconds: assignment.collective_timeout.as_secs().max(1) as u32,
                planned_world_size: job.requirements.world_size,
            }
        }),
    }
}

pub fn role_from_proto(value: i32) -> Result<Role> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Submitter) => Ok(Role::Submitter),
        Ok(pb::Role::Reader) => Ok(Role::Reader),
        Ok(pb::Role::Worker) => Ok(Role::Worker),
        _ => Err(Invalid::new("role", "must be admin, submitter, reader or worker").into()),
    }
}

pub fn token_to_proto(token: TokenRecord) -> pb::Token {
    let role = match token.role {
        Role::Admin => pb::Role::Admin,
        Role::Submitter => pb::Role::Submitter,
        Role::Reader => pb::Role::Reader,
        Role::Worker => pb::Role::Worker,
    };
    pb::Token {
        id: token.id.to_string(),
        name: token.name,
        role: role.into(),
        created_at: timestamp(token.created_at),
        expires_at: token.expires_at.map(timestamp).unwrap_or_default(),
        revoked_at: token.revoked_at.map(timestamp).unwrap_or_default(),
        created_by: token.created_by.unwrap_or_default(),
    }
}
