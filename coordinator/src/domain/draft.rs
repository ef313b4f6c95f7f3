//! A submission before planning: the fields a client (or a recipe with its inputs) gave,
//! with references to models and datasets checked (not yet looked up) and
//! hyperparameters resolved, and the rule of which fields each kind takes — read from
//! the kind's inputs in the core's table, nowhere else.

use super::{JobKind, check_name};
use crate::error::Error;
use heirloom_core::{AdjustmentUse, Architecture, Hyperparameters, Invalid, Parents, limits};
use uuid::Uuid;

/// A submission as the client sent it, with references checked and hyperparameters
/// resolved. Planning looks the references up; the spec it queues holds ids.
#[derive(Debug, Clone)]
pub struct JobDraft {
    pub kind: JobKind,
    pub model_name: String,
    pub dataset: Option<Reference>,
    pub parent: Option<Reference>,
    pub second_parent: Option<Reference>,
    pub architecture: Option<Architecture>,
    pub hyperparameters: Hyperparameters,
    pub trainable: Vec<String>,
    pub num_classes: u32,
    pub alpha: f64,
    pub scale: f64,
    pub unfreeze_blocks: u32,
    pub modules: Vec<DraftModule>,
}

/// One module of a compose submission, its parent not yet looked up.
#[derive(Debug, Clone)]
pub struct DraftModule {
    pub target_prefix: String,
    pub parent: Reference,
    pub source_prefix: String,
}

/// A model or dataset as a request names it, with the request field it came from (so
/// that a refusal names that field): the same forms GetModel and the CLI take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub field: String,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(Uuid),
    /// A model's name, or a dataset's name for its latest version.
    Name(String),
    /// A dataset's name and version (`name@version`).
    Version(String, i32),
}

impl Reference {
    /// A model: its id or its name.
    pub fn model(field: impl Into<String>, text: &str) -> Result<Reference, Invalid> {
        Reference::parse(field.into(), text, false)
    }

    /// A dataset: its id, `name@version`, or its name (the latest version).
    pub fn dataset(field: impl Into<String>, text: &str) -> Result<Reference, Invalid> {
        Reference::parse(field.into(), text, true)
    }

    /// A reference no request gave: a recipe checked on its own has no inputs yet.
    pub fn placeholder() -> Reference {
        Reference {
            field: "spec.parents".into(),
            target: Target::Id(Uuid::nil()),
        }
    }

    fn parse(field: String, text: &str, versioned: bool) -> Result<Reference, Invalid> {
        let what = if versioned { "dataset" } else { "model" };
        if text.is_empty() {
            return Err(Invalid::new(field, "is required"));
        }
        limits::check_length(&field, text, limits::MAX_REFERENCE_BYTES)?;
        if let Ok(id) = Uuid::parse_str(text) {
            return Ok(Reference {
                field,
                target: Target::Id(id),
            });
        }
        let forms = if versioned {
            "an id, a name, or name@version"
        } else {
            "an id or a name"
        };
        let (name, version) = match text.rsplit_once('@') {
            Some(_) if !versioned => {
                return Err(Invalid::new(
                    field,
                    format!("{text:?}: a model has no versions; give {forms}"),
                ));
            }
            _ => limits::split_version(&field, text)?,
        };
        if check_name(&field, name).is_err() {
            return Err(Invalid::new(
                field,
                format!("{text:?} is not {forms} of a {what}"),
            ));
        }
        let target = match version {
            Some(version) => Target::Version(name.to_string(), version),
            None => Target::Name(name.to_string()),
        };
        Ok(Reference { field, target })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Id(id) => write!(f, "{id}"),
            Target::Name(name) => write!(f, "{name}"),
            Target::Version(name, version) => write!(f, "{name}@{version}"),
        }
    }
}

/// Fields the draft's kind does not take: each one set is a mistake worth naming, in
/// the order the fields are checked.
pub fn fields_that_do_not_apply(draft: &JobDraft) -> Vec<Error> {
    let kind = draft.kind;
    let takes = kind.inputs();
    [
        (
            "spec.second_parent_id",
            draft.second_parent.is_some() && takes.parents != Parents::OneOrTwo,
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
            draft.parent.is_some() && !takes.takes_parent(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, dataset: bool, expected: Result<Target, &str>) {
        let parsed = if dataset {
            Reference::dataset("spec.x", text)
        } else {
            Reference::model("spec.x", text)
        };
        match (parsed, expected) {
            (Ok(reference), Ok(target)) => {
                assert_eq!(reference.target, target, "{text}");
                assert_eq!(reference.to_string(), text, "shown as given");
            }
            (Err(invalid), Err(fragment)) => {
                let message = Error::from(invalid).to_string();
                assert!(message.starts_with("spec.x: "), "{message}");
                assert!(message.contains(fragment), "{message} names {fragment}");
            }
            (parsed, expected) => panic!("{text}: {parsed:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn references_take_an_id_a_name_or_a_dataset_version() {
        let id = Uuid::new_v4();
        let name = |text: &str| Ok(Target::Name(text.into()));
        check(&id.to_string(), false, Ok(Target::Id(id)));
        check(&id.to_string(), true, Ok(Target::Id(id)));
        check("stub-digits", true, name("stub-digits"));
        check("base.v2", false, name("base.v2"));
        check(
            "stub-digits@3",
            true,
            Ok(Target::Version("stub-digits".into(), 3)),
        );
        check("", true, Err("is required"));
        let bad_version = "the version after @ must be a whole number from 1, e.g. stub-digits@3";
        for version in ["x", "-1", "0", "+3", "1.5", "", "99999999999"] {
            check(&format!("stub-digits@{version}"), true, Err(bad_version));
        }
        check("base@2", false, Err("a model has no versions"));
        check("has space", false, Err("is not an id or a name of a model"));
        check("@3", true, Err("is not an id, a name, or name@version"));
        check(&"a".repeat(600), true, Err("at most 512"));
    }
}
