//! Job kinds and the relations they write: the one table that every layer asks what a
//! kind takes (parents and how many, dataset, architecture, head, trainable patterns,
//! weight-space adjustment) and which relation its parent edges record. The gRPC
//! conversion, planning, recipes, the queue's rows, the CLI and the explorer all read
//! [`JobKind::inputs`], [`JobKind::as_str`] and [`Relation`] from here; a new kind is a
//! compile error at every exhaustive `match` that must decide something about it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Train,
    Finetune,
    Transfer,
    Direct,
    Compose,
}

/// Which parent models a job names, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parents {
    /// None: everything starts fresh.
    None,
    /// Exactly one (`parent_id`).
    One,
    /// One (`parent_id`), and a second one to interpolate towards (`second_parent_id`).
    OneOrTwo,
    /// Those the module map names, each once (`modules[].parent_id`).
    FromModules,
}

/// Whether a job needs data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetUse {
    /// Always: the kind always trains something.
    Required,
    /// Only when a tensor trains; otherwise the data only scores the model.
    WhenTraining,
}

/// Which weight-space step a kind may ask for, through `alpha` and `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentUse {
    None,
    /// `alpha`: a WiSE-FT blend back towards the parent after training.
    WiseFt,
    /// `alpha`: interpolation towards the second parent; or `scale`.
    InterpolateOrScale,
}

/// What a job of one kind takes: every input field is either one of these or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInputs {
    pub parents: Parents,
    pub dataset: DatasetUse,
    /// The architecture of the new model is given (and required), not derived from a parent.
    pub architecture: bool,
    /// A new head: `num_classes` (required) and `unfreeze_blocks`.
    pub head: bool,
    /// Trainable-name patterns (`trainable`).
    pub patterns: bool,
    pub adjustment: AdjustmentUse,
}

impl KindInputs {
    /// Takes `parent_id`.
    pub fn takes_parent(&self) -> bool {
        match self.parents {
            Parents::One | Parents::OneOrTwo => true,
            Parents::None | Parents::FromModules => false,
        }
    }

    /// Takes `alpha`.
    pub fn takes_alpha(&self) -> bool {
        match self.adjustment {
            AdjustmentUse::WiseFt | AdjustmentUse::InterpolateOrScale => true,
            AdjustmentUse::None => false,
        }
    }
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Train,
        JobKind::Finetune,
        JobKind::Transfer,
        JobKind::Direct,
        JobKind::Compose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Finetune => "finetune",
            JobKind::Transfer => "transfer",
            JobKind::Direct => "direct",
            JobKind::Compose => "compose",
        }
    }

    pub fn parse(text: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The names of every kind, for messages: `train, finetune, … or compose`.
    pub fn names() -> String {
        let names: Vec<&str> = JobKind::ALL.iter().map(|kind| kind.as_str()).collect();
        let (last, rest) = names.split_last().expect("there are kinds");
        format!("{} or {last}", rest.join(", "))
    }

    /// The relation of the parent edges a job of this kind writes.
    pub fn relation(self) -> Option<Relation> {
        match self {
            JobKind::Train => None,
            JobKind::Finetune => Some(Relation::Finetune),
            JobKind::Transfer => Some(Relation::Transfer),
            JobKind::Direct => Some(Relation::Direct),
            JobKind::Compose => Some(Relation::Module),
        }
    }

    /// What a job of this kind takes.
    pub fn inputs(self) -> KindInputs {
        let none = KindInputs {
            parents: Parents::None,
            dataset: DatasetUse::Required,
            architecture: false,
            head: false,
            patterns: false,
            adjustment: AdjustmentUse::None,
        };
        match self {
            JobKind::Train => KindInputs {
                architecture: true,
                ..none
            },
            JobKind::Finetune => KindInputs {
                parents: Parents::One,
                patterns: true,
                adjustment: AdjustmentUse::WiseFt,
                ..none
            },
            JobKind::Transfer => KindInputs {
                parents: Parents::One,
                head: true,
                ..none
            },
            JobKind::Direct => KindInputs {
                parents: Parents::OneOrTwo,
                dataset: DatasetUse::WhenTraining,
                adjustment: AdjustmentUse::InterpolateOrScale,
                ..none
            },
            JobKind::Compose => KindInputs {
                parents: Parents::FromModules,
                dataset: DatasetUse::WhenTraining,
                architecture: true,
                patterns: true,
                ..none
            },
        }
    }
}

/// How a child model was made from one of its parents: the relation of a lineage edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Finetune,
    Transfer,
    Direct,
    Module,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::Finetune,
        Relation::Transfer,
        Relation::Direct,
        Relation::Module,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Finetune => "finetune",
            Relation::Transfer => "transfer",
            Relation::Direct => "direct",
            Relation::Module => "module",
        }
    }

    pub fn parse(text: &str) -> Option<Relation> {
        Relation::ALL
            .into_iter()
            .find(|relation| relation.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
        }
        for relation in Relation::ALL {
            assert_eq!(Relation::parse(relation.as_str()), Some(relation));
        }
        assert_eq!(JobKind::parse("merge"), None);
        assert_eq!(
            JobKind::names(),
            "train, finetune, transfer, direct or compose"
        );
    }

    #[test]
    fn every_kind_with_parents_writes_a_relation() {
        for kind in JobKind::ALL {
            let has_parents = kind.inputs().parents != Parents::None;
            assert_eq!(kind.relation().is_some(), has_parents, "{kind:?}");
        }
    }
}
