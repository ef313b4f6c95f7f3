//! A submission before planning: the fields a client (or a recipe with its inputs) gave,
//! with ids parsed and hyperparameters resolved, and the rule of which fields each kind
//! takes — read from the kind's inputs in the core's table, nowhere else.

use super::{JobKind, ModuleMapping};
use crate::error::Error;
use heirloom_core::{AdjustmentUse, Architecture, Hyperparameters, Invalid, Parents};
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

/// Fields the draft's kind does not take: each one set is a mistake worth naming, in
/// the order the fields are checked.
pub fn fields_that_do_not_apply(draft: &JobDraft) -> Vec<Error> {
    let kind = draft.kind;
    let takes = kind.inputs();
    [
        (
            "spec.second_parent_id",
            draft.second_parent_id.is_some() && takes.parents != Parents::OneOrTwo,
        ),
        (
            "spec.scale",
            draft.scale != 0.0 && takes.adjustment != AdjustmentUse::InterpolateOrScale,
        ),
        ("spec.num_classes", draft.num_classes != 0 && !takes.head),
        (
            "spec.unfreeze_blocks",
            draft.unfreeze_blocks != 0 && !takes.head,
        ),
        (
            "spec.modules",
            !draft.modules.is_empty() && takes.parents != Parents::FromModules,
        ),
        (
            "spec.architecture",
            draft.architecture.is_some() && !takes.architecture,
        ),
        (
            "spec.trainable",
            !draft.trainable.is_empty() && !takes.patterns,
        ),
        ("spec.alpha", draft.alpha != 0.0 && !takes.takes_alpha()),
        (
            "spec.parent_id",
            draft.parent_id.is_some() && !takes.takes_parent(),
        ),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(field, _)| {
        Invalid::new(
            field,
            format!("does not apply to a {} job; leave it empty", kind.as_str()),
        )
        .into()
    })
    .collect()
}
