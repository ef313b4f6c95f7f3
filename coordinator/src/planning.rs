//! Turns a submitted job into a [`JobSpec`] that can run: resolves the parent and the
//! dataset, derives the child's architecture, fills in defaults, and refuses anything a
//! worker would fail on, before a row is written.

use crate::db::Db;
use crate::domain::{JobKind, JobSpec, check_name};
use crate::error::{Error, Result};
use heirloom_spec::{Architecture, Hyperparameters, Invalid, TrainablePatterns};
use uuid::Uuid;

/// A submission as the client sent it, with ids parsed and hyperparameters resolved.
#[derive(Debug, Clone)]
pub struct JobDraft {
    pub kind: JobKind,
    pub model_name: String,
    pub dataset_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub architecture: Option<Architecture>,
    pub hyperparameters: Hyperparameters,
    pub trainable: Vec<String>,
    pub num_classes: u32,
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
    let dataset = db.dataset(draft.dataset_id).await?;
    let parent = match (draft.kind, draft.parent_id) {
        (JobKind::Train, None) => None,
        (JobKind::Train, Some(_)) => {
            return Err(invalid(
                "spec.parent_id",
                "a train job makes a root model; leave it empty",
            ));
        }
        (_, None) => {
            return Err(invalid(
                "spec.parent_id",
                format!("a {} job needs the parent model's id", draft.kind.as_str()),
            ));
        }
        (_, Some(parent_id)) => Some(db.model(parent_id).await?),
    };
    let (architecture, trainable, num_classes) = match (draft.kind, &parent) {
        (JobKind::Train, _) => {
            let architecture = draft
                .architecture
                .ok_or_else(|| invalid("spec.architecture", "a train job needs an architecture"))?;
            architecture.validate("spec.architecture")?;
            refuse_set("spec.trainable", !draft.trainable.is_empty(), "train")?;
            refuse_set("spec.num_classes", draft.num_classes != 0, "train")?;
            (architecture, Vec::new(), None)
        }
        (JobKind::Finetune, Some(parent)) => {
            refuse_set(
                "spec.architecture",
                draft.architecture.is_some(),
                "finetune",
            )?;
            refuse_set("spec.num_classes", draft.num_classes != 0, "finetune")?;
            let names: Vec<String> = parent
                .architecture
                .parameters()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let patterns = TrainablePatterns::parse("spec.trainable", &draft.trainable, &names)?;
            (
                parent.architecture.clone(),
                patterns.as_slice().to_vec(),
                None,
            )
        }
        (JobKind::Transfer, Some(parent)) => {
            refuse_set(
                "spec.architecture",
                draft.architecture.is_some(),
                "transfer",
            )?;
            refuse_set("spec.trainable", !draft.trainable.is_empty(), "transfer")?;
            if draft.num_classes == 0 {
                return Err(invalid(
                    "spec.num_classes",
                    "a transfer job needs the new head's output size (greater than 0)",
                ));
            }
            let architecture = parent.architecture.with_num_classes(draft.num_classes);
            architecture.validate("spec.num_classes")?;
            (architecture, Vec::new(), Some(draft.num_classes))
        }
        (_, None) => unreachable!("finetune and transfer have a parent by now"),
    };
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
    Ok(JobSpec {
        kind: draft.kind,
        model_name: draft.model_name,
        dataset_id: dataset.id,
        parent_id: parent.map(|parent| parent.id),
        architecture,
        hyperparameters: draft.hyperparameters,
        trainable,
        num_classes,
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Invalid::new(field, reason).into()
}

fn refuse_set(field: &str, is_set: bool, kind: &str) -> Result<()> {
    if is_set {
        return Err(invalid(
            field,
            format!("does not apply to a {kind} job; leave it empty"),
        ));
    }
    Ok(())
}
