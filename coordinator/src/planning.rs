//! Turns a submitted job into a [`JobSpec`] that can run: resolves the parents and the
//! dataset, derives the child's architecture and its tensor plan, fills in defaults, and
//! refuses anything a worker would fail on, before a row is written.

use crate::db::Db;
use crate::domain::{JobKind, JobSpec, Model, ModuleMapping, check_name};
use crate::error::{Error, Result};
use heirloom_spec::{
    Adjustment, Architecture, Hyperparameters, Invalid, Module, TrainablePatterns, plan_compose,
    plan_finetune, plan_inherit, plan_scratch, plan_transfer,
};
use uuid::Uuid;

/// A submission as the client sent it, with ids parsed and hyperparameters resolved.
#[derive(Debug, Clone)]
pub struct JobDraft {
    pub kind: JobKind,
    pub model_name: String,
    pub dataset_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub second_parent_id: Option<Uuid>,
    pub architecture: Option<Architecture>,
    pub hyperparameters: Hyperparameters,
    pub trainable: Vec<String>,
    pub num_classes: u32,
    pub alpha: f64,
    pub scale: f64,
    pub unfreeze_blocks: u32,
    pub modules: Vec<ModuleMapping>,
}

pub async fn plan_job(db: &Db, draft: JobDraft) -> Result<JobSpec> {
    check_name("spec.model_name", &draft.model_name)?;
    // Jobs in progress hold their names through a unique index; models through this check.
    if db.model_name_exists(&draft.model_name).await? {
        return Err(Error::AlreadyExists(format!(
            "spec.model_name: a model named {:?} exists already; choose another name",
            draft.model_name
        )));
    }
    let dataset = match draft.dataset_id {
        Some(id) => Some(db.dataset(id).await?),
        None => None,
    };
    let kind = draft.kind.as_str();
    let unused = |field: &str, is_set: bool| -> Result<()> {
        if is_set {
            return Err(invalid(
                field,
                format!("does not apply to a {kind} job; leave it empty"),
            ));
        }
        Ok(())
    };
    unused(
        "spec.second_parent_id",
        draft.second_parent_id.is_some() && draft.kind != JobKind::Direct,
    )?;
    unused(
        "spec.scale",
        draft.scale != 0.0 && draft.kind != JobKind::Direct,
    )?;
    unused(
        "spec.num_classes",
        draft.num_classes != 0 && draft.kind != JobKind::Transfer,
    )?;
    unused(
        "spec.unfreeze_blocks",
        draft.unfreeze_blocks != 0 && draft.kind != JobKind::Transfer,
    )?;
    unused(
        "spec.modules",
        !draft.modules.is_empty() && draft.kind != JobKind::Compose,
    )?;
    let takes_architecture = matches!(draft.kind, JobKind::Train | JobKind::Compose);
    unused(
        "spec.architecture",
        draft.architecture.is_some() && !takes_architecture,
    )?;
    let takes_patterns = matches!(draft.kind, JobKind::Finetune | JobKind::Compose);
    unused(
        "spec.trainable",
        !draft.trainable.is_empty() && !takes_patterns,
    )?;
    let takes_alpha = matches!(draft.kind, JobKind::Finetune | JobKind::Direct);
    unused("spec.alpha", draft.alpha != 0.0 && !takes_alpha)?;
    let takes_parent = !matches!(draft.kind, JobKind::Train | JobKind::Compose);
    unused("spec.parent_id", draft.parent_id.is_some() && !takes_parent)?;

    let parent = match draft.parent_id {
        Some(id) => Some(db.model(id).await?),
        None if takes_parent => {
            return Err(invalid(
                "spec.parent_id",
                format!("a {kind} job needs the parent model's id"),
            ));
        }
        None => None,
    };
    let architecture_required = || {
        draft.architecture.clone().ok_or_else(|| {
            invalid(
                "spec.architecture",
                format!("a {kind} job needs an architecture"),
            )
        })
    };
    let mut parents: Vec<Uuid> = parent.iter().map(|parent| parent.id).collect();
    let mut adjustment = None;
    let (architecture, tensors) = match (draft.kind, &parent) {
        (JobKind::Train, _) => {
            let architecture = architecture_required()?;
            let tensors = plan_scratch(&architecture);
            (architecture, tensors)
        }
        (JobKind::Finetune, Some(parent)) => {
            let names = parent.architecture.names();
            let patterns = TrainablePatterns::parse("spec.trainable", &draft.trainable, &names)?;
            if !(0.0..=1.0).contains(&draft.alpha) {
                return Err(invalid(
                    "spec.alpha",
                    "the WiSE-FT blend must lie in [0, 1] (0: no blend)",
                ));
            }
            if draft.alpha > 0.0 && draft.alpha < 1.0 {
                adjustment = Some(Adjustment::WiseFt { alpha: draft.alpha });
            }
            (
                parent.architecture.clone(),
                plan_finetune(&parent.architecture, &patterns),
            )
        }
        (JobKind::Transfer, Some(parent)) => {
            if draft.num_classes == 0 {
                return Err(invalid(
                    "spec.num_classes",
                    "a transfer job needs the new head's output size (greater than 0)",
                ));
            }
            let architecture = parent.architecture.with_num_classes(draft.num_classes);
            architecture.validate("spec.num_classes")?;
            let tensors =
                plan_transfer("spec.unfreeze_blocks", &architecture, draft.unfreeze_blocks)?;
            (architecture, tensors)
        }
        (JobKind::Direct, Some(parent)) => {
            adjustment = direct_adjustment(db, &draft, parent, &mut parents).await?;
            let tensors = plan_inherit(&parent.architecture, |_| false);
            (parent.architecture.clone(), tensors)
        }
        (JobKind::Compose, _) => {
            let architecture = architecture_required()?;
            let names = architecture.names();
            let patterns = TrainablePatterns::parse("spec.trainable", &draft.trainable, &names)?;
            let mut parent_models: Vec<Model> = Vec::new();
            let mut modules = Vec::new();
            for mapping in &draft.modules {
                let index = match parents.iter().position(|id| *id == mapping.parent_id) {
                    Some(index) => index,
                    None => {
                        parent_models.push(db.model(mapping.parent_id).await?);
                        parents.push(mapping.parent_id);
                        parents.len() - 1
                    }
                };
                modules.push(Module {
                    target_prefix: mapping.target_prefix.clone(),
                    parent: index,
                    source_prefix: mapping.source_prefix.clone(),
                });
            }
            let parent_architectures: Vec<Architecture> = parent_models
                .iter()
                .map(|model| model.architecture.clone())
                .collect();
            let tensors = plan_compose(
                "spec.modules",
                &architecture,
                &modules,
                &parent_architectures,
                &patterns,
            )?;
            (architecture, tensors)
        }
        (_, None) => unreachable!("kinds that take a parent have one by now"),
    };
    let trains = tensors.iter().any(|tensor| tensor.trainable);
    match &dataset {
        None if trains => {
            return Err(invalid(
                "spec.dataset_id",
                format!("a {kind} job that trains needs a dataset"),
            ));
        }
        None => {}
        Some(dataset) => {
            if architecture.input_features() != u64::from(dataset.num_features) {
                return Err(Error::FailedPrecondition(format!(
                    "spec.dataset_id: dataset {:?} has {} features per example but the model takes {}",
                    dataset.name,
                    dataset.num_features,
                    architecture.input_features()
                )));
            }
            if architecture.num_classes() < dataset.num_classes {
                return Err(Error::FailedPrecondition(format!(
                    "spec.dataset_id: dataset {:?} has labels up to {} but the model has {} classes",
                    dataset.name,
                    dataset.num_classes - 1,
                    architecture.num_classes()
                )));
            }
        }
    }
    Ok(JobSpec {
        kind: draft.kind,
        model_name: draft.model_name,
        dataset_id: dataset.map(|dataset| dataset.id),
        parents,
        architecture,
        hyperparameters: draft.hyperparameters,
        trainable: draft.trainable,
        num_classes: (draft.num_classes != 0).then_some(draft.num_classes),
        unfreeze_blocks: draft.unfreeze_blocks,
        modules: draft.modules,
        adjustment,
        tensors,
    })
}

/// A direct job's adjustment: interpolation with a second parent of the same
/// architecture, a scale, or none (an exact copy).
async fn direct_adjustment(
    db: &Db,
    draft: &JobDraft,
    parent: &Model,
    parents: &mut Vec<Uuid>,
) -> Result<Option<Adjustment>> {
    if !draft.alpha.is_finite() || !draft.scale.is_finite() {
        return Err(invalid(
            "spec.alpha",
            "alpha and scale must be finite numbers",
        ));
    }
    let Some(second_id) = draft.second_parent_id else {
        if draft.alpha != 0.0 {
            return Err(invalid(
                "spec.alpha",
                "interpolation needs spec.second_parent_id",
            ));
        }
        return Ok((draft.scale != 0.0).then_some(Adjustment::Scale {
            factor: draft.scale,
        }));
    };
    if draft.scale != 0.0 {
        return Err(invalid("spec.scale", "interpolate or scale, not both"));
    }
    if second_id == parent.id {
        return Err(invalid(
            "spec.second_parent_id",
            "interpolation needs two different models",
        ));
    }
    let second = db.model(second_id).await?;
    if second.architecture != parent.architecture {
        return Err(invalid(
            "spec.second_parent_id",
            format!(
                "cannot interpolate {:?} and {:?}: their architectures differ ({} vs {}); \
                 interpolation needs the same tensors with the same shapes",
                parent.name,
                second.name,
                serde_json::to_string(&parent.architecture).unwrap_or_default(),
                serde_json::to_string(&second.architecture).unwrap_or_default()
            ),
        ));
    }
    parents.push(second_id);
    Ok(Some(Adjustment::Interpolate { alpha: draft.alpha }))
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Invalid::new(field, reason).into()
}
