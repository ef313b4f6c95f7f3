//! Which tensor of a new model starts from where, and which ones train: the plan the
//! coordinator derives for every job kind, sends to the worker, and later checks the
//! worker's provenance claims against.

use crate::{Architecture, Invalid, TrainablePatterns};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A tensor of one of the job's parents: (index into the job's parents, tensor name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub parent: usize,
    pub tensor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorPlan {
    pub name: String,
    /// `None`: a fresh tensor.
    pub origin: Option<Origin>,
    pub trainable: bool,
}

impl TensorPlan {
    /// The status a worker claims for this tensor once it has carried out the plan, and
    /// the status the coordinator then requires of the claim: one function for both.
    /// `unchanged`: whether the tensor's bytes equal its origin's (`false` where that is
    /// not known, as in a plan shown before the work).
    ///
    /// Integer tensors (`num_batches_tracked`) are counters: never interpolated or scaled.
    /// An interpolation that left a tensor as its origin was (two equal tensors, alpha 0,
    /// scale 1) records it `inherited`.
    pub fn status(
        &self,
        adjustment: Option<Adjustment>,
        dtype: &str,
        unchanged: bool,
    ) -> TensorStatus {
        self.decide(adjustment, dtype, unchanged).0
    }

    /// The status, and why: the reason a claim of any other status is refused.
    fn decide(
        &self,
        adjustment: Option<Adjustment>,
        dtype: &str,
        unchanged: bool,
    ) -> (TensorStatus, &'static str) {
        match (&self.origin, interpolates(adjustment)) {
            (None, _) => (TensorStatus::New, "the plan starts it fresh"),
            (Some(_), true) if !crate::is_float_dtype(dtype) => (
                TensorStatus::Inherited,
                "only float tensors are interpolated or scaled; a counter keeps its origin's value",
            ),
            (Some(_), true) if unchanged => {
                (TensorStatus::Inherited, "its bytes equal its origin's")
            }
            (Some(_), true) => (
                TensorStatus::Interpolated,
                "this job interpolates or scales it",
            ),
            (Some(_), false) if self.trainable => (
                TensorStatus::Trained,
                "it trains in this job, which interpolates nothing",
            ),
            (Some(_), false) => (
                TensorStatus::Inherited,
                "it was frozen in this job, which interpolates nothing",
            ),
        }
    }
}

/// Whether the adjustment moves every (float) tensor, trained or not.
fn interpolates(adjustment: Option<Adjustment>) -> bool {
    match adjustment {
        Some(Adjustment::Interpolate { .. } | Adjustment::Scale { .. }) => true,
        Some(Adjustment::WiseFt { .. }) | None => false,
    }
}

/// A weight-space step after loading (and training).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adjustment {
    /// θ = θa + α(θb − θa) for every tensor, a = parent 0, b = parent 1.
    Interpolate { alpha: f64 },
    /// θ = s·θa for every tensor.
    Scale { factor: f64 },
    /// θ = θp + α(θft − θp) for the trainable tensors, after training (WiSE-FT).
    WiseFt { alpha: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorStatus {
    Inherited,
    Trained,
    New,
    Interpolated,
}

impl TensorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TensorStatus::Inherited => "inherited",
            TensorStatus::Trained => "trained",
            TensorStatus::New => "new",
            TensorStatus::Interpolated => "interpolated",
        }
    }

    pub fn parse(text: &str) -> Option<TensorStatus> {
        [
            TensorStatus::Inherited,
            TensorStatus::Trained,
            TensorStatus::New,
            TensorStatus::Interpolated,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// One module of a composed model: target tensors under `target_prefix` come from the
/// parent's tensors under `source_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub target_prefix: String,
    pub parent: usize,
    pub source_prefix: String,
}

fn names(architecture: &Architecture) -> impl Iterator<Item = String> {
    architecture.names().into_iter()
}

/// Is `name` the tensor `prefix` or inside the module `prefix`?
pub fn under_prefix(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A batch norm's statistics train together or not at all, following its running mean:
/// the worker runs a norm in training mode exactly when its running mean trains.
fn align_norm_buffers(mut plan: Vec<TensorPlan>) -> Vec<TensorPlan> {
    let training_norms: Vec<String> = plan
        .iter()
        .filter(|t| t.trainable)
        .filter_map(|t| t.name.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    for tensor in &mut plan {
        for buffer in [".running_var", ".num_batches_tracked"] {
            if let Some(norm) = tensor.name.strip_suffix(buffer) {
                tensor.trainable = training_norms.iter().any(|n| n == norm);
            }
        }
    }
    plan
}

/// Train: every tensor fresh and trained.
pub fn plan_scratch(architecture: &Architecture) -> Vec<TensorPlan> {
    names(architecture)
        .map(|name| TensorPlan {
            name,
            origin: None,
            trainable: true,
        })
        .collect()
}

/// Every tensor from the same name in parent 0; `trainable` picks which ones train.
pub fn plan_inherit(
    architecture: &Architecture,
    trainable: impl Fn(&str) -> bool,
) -> Vec<TensorPlan> {
    align_norm_buffers(
        names(architecture)
            .map(|name| TensorPlan {
                trainable: trainable(&name),
                origin: Some(Origin {
                    parent: 0,
                    tensor: name.clone(),
                }),
                name,
            })
            .collect(),
    )
}

pub fn plan_finetune(architecture: &Architecture, patterns: &TrainablePatterns) -> Vec<TensorPlan> {
    plan_inherit(architecture, |name| patterns.is_trainable(name))
}

/// Transfer: a fresh head; the backbone from parent 0, frozen except its last
/// `unfreeze_blocks` blocks.
pub fn plan_transfer(
    field: &str,
    architecture: &Architecture,
    unfreeze_blocks: u32,
) -> Result<Vec<TensorPlan>, Invalid> {
    let blocks = architecture.blocks();
    if unfreeze_blocks as usize > blocks.len() {
        return Err(Invalid::new(
            field,
            format!(
                "the model has {} blocks ({}); cannot unfreeze {unfreeze_blocks}",
                blocks.len(),
                blocks.join(", ")
            ),
        ));
    }
    let unfrozen = &blocks[blocks.len() - unfreeze_blocks as usize..];
    Ok(align_norm_buffers(
        names(architecture)
            .map(|name| {
                // A language model's new vocabulary has new embeddings as well as a new head.
                let vocabulary = architecture
                    .input_embedding()
                    .is_some_and(|embedding| under_prefix(&name, embedding));
                if under_prefix(&name, architecture.head()) || vocabulary {
                    TensorPlan {
                        name,
                        origin: None,
                        trainable: true,
                    }
                } else {
                    TensorPlan {
                        trainable: unfrozen.iter().any(|block| under_prefix(&name, block)),
                        origin: Some(Origin {
                            parent: 0,
                            tensor: name.clone(),
                        }),
                        name,
                    }
                }
            })
            .collect(),
    ))
}

/// Compose: each target tensor from the one module that covers it, with its shape
/// checked against the parent's; tensors no module covers start fresh and must train.
pub fn plan_compose(
    field: &str,
    architecture: &Architecture,
    modules: &[Module],
    parents: &[Architecture],
    trainable: &TrainablePatterns,
) -> Result<Vec<TensorPlan>, Invalid> {
    if modules.is_empty() {
        return Err(Invalid::new(
            field,
            "a compose job needs at least one module",
        ));
    }
    let targets = architecture.parameters();
    let mut plan = Vec::new();
    for (i, module) in modules.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let parent = &parents[module.parent];
        let sources: HashMap<String, Vec<usize>> = parent
            .parameters()
            .into_iter()
            .map(|tensor| (tensor.name, tensor.shape))
            .collect();
        let covered: Vec<(&String, &Vec<usize>)> = targets
            .iter()
            .map(|tensor| (&tensor.name, &tensor.shape))
            .filter(|(name, _)| under_prefix(name, &module.target_prefix))
            .collect();
        if module.target_prefix.is_empty() || covered.is_empty() {
            return Err(Invalid::new(
                format!("{field}.target_prefix"),
                format!(
                    "{:?} names no module of the target architecture",
                    module.target_prefix
                ),
            ));
        }
        for (name, shape) in covered {
            let source = format!(
                "{}{}",
                module.source_prefix,
                &name[module.target_prefix.len()..]
            );
            let Some(source_shape) = sources.get(&source) else {
                return Err(Invalid::new(
                    format!("{field}.source_prefix"),
                    format!("the parent has no tensor {source} for the target's {name}"),
                ));
            };
            if source_shape != shape {
                return Err(Invalid::new(
                    field,
                    format!(
                        "shape mismatch: target {name} is {shape:?}, the parent's {source} is {source_shape:?}"
                    ),
                ));
            }
            plan.push((
                name.clone(),
                Origin {
                    parent: module.parent,
                    tensor: source,
                },
            ));
        }
    }
    let mut result = Vec::new();
    for name in targets.iter().map(|tensor| &tensor.name) {
        let mut origins = plan.iter().filter(|(target, _)| target == name);
        let origin = origins.next().map(|(_, origin)| origin.clone());
        if origins.next().is_some() {
            return Err(Invalid::new(
                field,
                format!("two modules both provide {name}"),
            ));
        }
        let trains = trainable.is_trainable(name) && !trainable.as_slice().is_empty();
        if origin.is_none() && !trains {
            return Err(Invalid::new(
                field,
                format!(
                    "no module provides {name}, and it is not trainable: map it, or add a trainable pattern for it"
                ),
            ));
        }
        result.push(TensorPlan {
            name: name.clone(),
            origin,
            trainable: trains,
        });
    }
    Ok(align_norm_buffers(result))
}

/// One tensor as the worker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub name: String,
    pub sha256: String,
    pub status: TensorStatus,
    pub origin: Option<Origin>,
}

/// Checks a worker's provenance claims against the plan, the tensors of the file it
/// produced (`actual`: name → (sha256, dtype)) and the parents' stored tensor hashes.
/// Each claimed status must be the one [`TensorPlan::status`] gives for the file's
/// tensor, its bytes compared with the origin's stored hash.
pub fn verify_claims(
    plan: &[TensorPlan],
    adjustment: Option<Adjustment>,
    actual: &HashMap<String, (String, String)>,
    claims: &[Claim],
    parent_hashes: &[HashMap<String, String>],
) -> Result<(), Invalid> {
    let field = "output.tensors";
    if claims.len() != plan.len() {
        return Err(Invalid::new(
            field,
            format!(
                "{} claims for a model of {} tensors",
                claims.len(),
                plan.len()
            ),
        ));
    }
    for tensor in plan {
        let name = &tensor.name;
        let claim = claims
            .iter()
            .find(|claim| &claim.name == name)
            .ok_or_else(|| Invalid::new(field, format!("no claim for tensor {name}")))?;
        let fail = |reason: String| Err(Invalid::new(field, format!("tensor {name}: {reason}")));
        let Some((sha256, dtype)) = actual
            .get(name)
            .filter(|(sha256, _)| *sha256 == claim.sha256)
        else {
            return fail("the claimed hash is not the hash of the file's tensor".into());
        };
        if let Some(origin) = &claim.origin {
            let known = parent_hashes
                .get(origin.parent)
                .is_some_and(|hashes| hashes.contains_key(&origin.tensor));
            if !known {
                return fail(format!(
                    "claims an origin {} that does not exist",
                    origin.tensor
                ));
            }
        }
        if claim.origin != tensor.origin {
            return fail(format!(
                "claims origin {:?}, but the job's plan says {:?}",
                claim.origin, tensor.origin
            ));
        }
        let origin_sha256 = tensor.origin.as_ref().and_then(|origin| {
            parent_hashes
                .get(origin.parent)
                .and_then(|hashes| hashes.get(&origin.tensor))
        });
        let unchanged = origin_sha256 == Some(sha256);
        let (planned, why) = tensor.decide(adjustment, dtype, unchanged);
        if claim.status != planned {
            return fail(format!(
                "claimed {}, but the plan says {}: {why}",
                claim.status.as_str(),
                planned.as_str()
            ));
        }
        if let (TensorStatus::Inherited, Some(origin), false) = (planned, &tensor.origin, unchanged)
        {
            return fail(format!(
                "claimed inherited from {}, but its bytes differ from the origin's",
                origin.tensor
            ));
        }
        // Frozen tensors with an origin are held to `inherited` above; what is left is a
        // fresh tensor planned not to train (no planner makes one), which no claim fits.
        if !tensor.trainable && !interpolates(adjustment) && claim.status != TensorStatus::Inherited
        {
            return fail("it was frozen, so it must be inherited unchanged".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mlp;

    fn mlp(hidden: Vec<u32>, num_classes: u32) -> Architecture {
        Architecture::Mlp(Mlp {
            input_features: 4,
            hidden,
            num_classes,
        })
    }

    fn hashes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn claim(name: &str, sha: &str, status: TensorStatus, origin: Option<&str>) -> Claim {
        Claim {
            name: name.into(),
            sha256: sha.into(),
            status,
            origin: origin.map(|tensor| Origin {
                parent: 0,
                tensor: tensor.into(),
            }),
        }
    }

    /// The tensors of a produced file: name → (sha256, dtype).
    type File = HashMap<String, (String, String)>;

    fn file(tensors: &[(&str, &str, &str)]) -> File {
        tensors
            .iter()
            .map(|(name, sha256, dtype)| {
                (name.to_string(), (sha256.to_string(), dtype.to_string()))
            })
            .collect()
    }

    /// A finetune of a 4→2→3 MLP where only the head trains.
    type Hashes = HashMap<String, String>;

    fn finetune_case() -> (Vec<TensorPlan>, File, Vec<Hashes>) {
        let plan = plan_finetune(
            &mlp(vec![2], 3),
            &TrainablePatterns::from_checked(vec!["fc.*".into()]),
        );
        let parent = hashes(&[
            ("hidden.0.weight", "p0w"),
            ("hidden.0.bias", "p0b"),
            ("fc.weight", "pfw"),
            ("fc.bias", "pfb"),
        ]);
        let actual = file(&[
            ("hidden.0.weight", "p0w", "f32"),
            ("hidden.0.bias", "p0b", "f32"),
            ("fc.weight", "cfw", "f32"),
            ("fc.bias", "cfb", "f32"),
        ]);
        (plan, actual, vec![parent])
    }

    fn honest() -> Vec<Claim> {
        vec![
            claim(
                "hidden.0.weight",
                "p0w",
                TensorStatus::Inherited,
                Some("hidden.0.weight"),
            ),
            claim(
                "hidden.0.bias",
                "p0b",
                TensorStatus::Inherited,
                Some("hidden.0.bias"),
            ),
            claim("fc.weight", "cfw", TensorStatus::Trained, Some("fc.weight")),
            claim("fc.bias", "cfb", TensorStatus::Trained, Some("fc.bias")),
        ]
    }

    #[test]
    fn honest_claims_pass_and_each_lie_is_caught() {
        let (plan, actual, parents) = finetune_case();
        assert_eq!(
            verify_claims(&plan, None, &actual, &honest(), &parents),
            Ok(())
        );
        let check = |index: usize, lie: Claim, actual: &File, expected: &str| {
            let mut claims = honest();
            claims[index] = lie;
            let err = verify_claims(&plan, None, actual, &claims, &parents).unwrap_err();
            assert!(
                err.reason.contains(expected),
                "{} should say {expected:?}",
                err.reason
            );
        };
        // A tensor claimed inherited that changed (the file's bytes moved).
        let mut moved = actual.clone();
        moved.insert("hidden.0.bias".into(), ("moved".into(), "f32".into()));
        check(
            1,
            claim(
                "hidden.0.bias",
                "moved",
                TensorStatus::Inherited,
                Some("hidden.0.bias"),
            ),
            &moved,
            "bytes differ",
        );
        // A frozen tensor that moved and is honestly called trained.
        check(
            1,
            claim(
                "hidden.0.bias",
                "moved",
                TensorStatus::Trained,
                Some("hidden.0.bias"),
            ),
            &moved,
            "frozen",
        );
        // A claim pointing at a tensor that does not exist.
        check(
            2,
            claim(
                "fc.weight",
                "cfw",
                TensorStatus::Trained,
                Some("fc.nothing"),
            ),
            &actual,
            "does not exist",
        );
        // A hash that is not the file's.
        check(
            2,
            claim(
                "fc.weight",
                "other",
                TensorStatus::Trained,
                Some("fc.weight"),
            ),
            &actual,
            "not the hash",
        );
        // A trained tensor passed off as new.
        check(
            3,
            claim("fc.bias", "cfb", TensorStatus::New, None),
            &actual,
            "plan says",
        );
        // Interpolation where none happened.
        check(
            3,
            claim(
                "fc.bias",
                "cfb",
                TensorStatus::Interpolated,
                Some("fc.bias"),
            ),
            &actual,
            "interpolates nothing",
        );
    }

    /// Halfway between two parents with a batch norm, planned as the coordinator plans
    /// an interpolation (everything from parent 0, nothing trains). The file holds a
    /// moved weight, a running mean both parents share (so it came out unchanged) and
    /// the integer counter, carried over from parent 0.
    fn interpolation_case() -> (Vec<TensorPlan>, File, Vec<Hashes>) {
        let plan = ["bn.weight", "bn.running_mean", "bn.num_batches_tracked"]
            .into_iter()
            .map(|name| TensorPlan {
                name: name.into(),
                origin: Some(Origin {
                    parent: 0,
                    tensor: name.into(),
                }),
                trainable: false,
            })
            .collect();
        let first = hashes(&[
            ("bn.weight", "aw"),
            ("bn.running_mean", "shared"),
            ("bn.num_batches_tracked", "an"),
        ]);
        let second = hashes(&[
            ("bn.weight", "bw"),
            ("bn.running_mean", "shared"),
            ("bn.num_batches_tracked", "bn"),
        ]);
        let actual = file(&[
            ("bn.weight", "mid", "f32"),
            ("bn.running_mean", "shared", "f32"),
            ("bn.num_batches_tracked", "an", "i64"),
        ]);
        (plan, actual, vec![first, second])
    }

    const HALFWAY: Option<Adjustment> = Some(Adjustment::Interpolate { alpha: 0.5 });

    fn honest_interpolation() -> Vec<Claim> {
        vec![
            claim(
                "bn.weight",
                "mid",
                TensorStatus::Interpolated,
                Some("bn.weight"),
            ),
            claim(
                "bn.running_mean",
                "shared",
                TensorStatus::Inherited,
                Some("bn.running_mean"),
            ),
            claim(
                "bn.num_batches_tracked",
                "an",
                TensorStatus::Inherited,
                Some("bn.num_batches_tracked"),
            ),
        ]
    }

    #[test]
    fn interpolation_claims_are_the_planned_statuses() {
        let (plan, actual, parents) = interpolation_case();
        // What the worker claims is what `status` says of the file's tensors.
        let claims = honest_interpolation();
        for (tensor, claim) in plan.iter().zip(&claims) {
            let (sha256, dtype) = &actual[&tensor.name];
            let unchanged = parents[0].get(&tensor.name) == Some(sha256);
            assert_eq!(tensor.status(HALFWAY, dtype, unchanged), claim.status);
        }
        assert_eq!(
            verify_claims(&plan, HALFWAY, &actual, &claims, &parents),
            Ok(())
        );
        let check = |index: usize, status: TensorStatus, actual: &File, expected: &[&str]| {
            let mut claims = honest_interpolation();
            claims[index].status = status;
            claims[index].sha256 = actual[&claims[index].name].0.clone();
            let err = verify_claims(&plan, HALFWAY, actual, &claims, &parents).unwrap_err();
            for expected in expected {
                assert!(
                    err.reason.contains(expected),
                    "{} should say {expected:?}",
                    err.reason
                );
            }
        };
        // An integer counter is never interpolated, whatever the job.
        check(
            2,
            TensorStatus::Interpolated,
            &actual,
            &[
                "bn.num_batches_tracked",
                "claimed interpolated",
                "plan says inherited",
            ],
        );
        // An interpolation that left a tensor as its origin was records it inherited.
        check(
            1,
            TensorStatus::Interpolated,
            &actual,
            &[
                "bn.running_mean",
                "claimed interpolated",
                "plan says inherited",
                "equal its origin",
            ],
        );
        // A tensor that moved is not inherited.
        check(
            0,
            TensorStatus::Inherited,
            &actual,
            &["bn.weight", "claimed inherited", "plan says interpolated"],
        );
        // A counter claimed inherited must hold its origin's bytes.
        let mut moved = actual.clone();
        moved.insert(
            "bn.num_batches_tracked".into(),
            ("moved".into(), "i64".into()),
        );
        check(2, TensorStatus::Inherited, &moved, &["bytes differ"]);
    }

    #[test]
    fn a_plan_shown_before_the_work_assumes_interpolation_moves_tensors() {
        let (plan, _, _) = interpolation_case();
        assert_eq!(
            plan[1].status(HALFWAY, "f32", false),
            TensorStatus::Interpolated
        );
        assert_eq!(
            plan[1].status(HALFWAY, "f32", true),
            TensorStatus::Inherited
        );
        assert_eq!(
            plan[2].status(HALFWAY, "i64", false),
            TensorStatus::Inherited
        );
    }

    #[test]
    fn transfer_unfreezes_the_last_blocks_only() {
        let plan = plan_transfer("unfreeze_blocks", &mlp(vec![3, 3], 2), 1).unwrap();
        let trainable: Vec<(&str, bool, bool)> = plan
            .iter()
            .map(|t| (t.name.as_str(), t.trainable, t.origin.is_some()))
            .collect();
        assert_eq!(
            trainable,
            [
                ("hidden.0.weight", false, true),
                ("hidden.0.bias", false, true),
                ("hidden.1.weight", true, true),
                ("hidden.1.bias", true, true),
                ("fc.weight", true, false),
                ("fc.bias", true, false),
            ]
        );
        assert!(plan_transfer("unfreeze_blocks", &mlp(vec![3], 2), 2).is_err());
    }

    #[test]
    fn compose_checks_shapes_and_coverage() {
        let target = mlp(vec![3, 5], 2);
        let parents = [mlp(vec![3], 2), mlp(vec![7, 5], 2)];
        let module = |target: &str, parent, source: &str| Module {
            target_prefix: target.into(),
            parent,
            source_prefix: source.into(),
        };
        let head = TrainablePatterns::from_checked(vec!["fc.*".into()]);
        let plan = plan_compose(
            "modules",
            &target,
            &[module("hidden.0", 0, "hidden.0")],
            &parents,
            &head,
        );
        let err = plan.unwrap_err();
        assert!(
            err.reason.contains("no module provides hidden.1.weight"),
            "{}",
            err.reason
        );

        let mismatched = plan_compose(
            "modules",
            &target,
            &[
                module("hidden.0", 0, "hidden.0"),
                module("hidden.1", 1, "hidden.0"),
            ],
            &parents,
            &head,
        )
        .unwrap_err();
        assert!(
            mismatched.reason.contains("shape mismatch"),
            "{}",
            mismatched.reason
        );

        let glue = TrainablePatterns::from_checked(vec!["hidden.1.*".into(), "fc.*".into()]);
        let plan = plan_compose(
            "modules",
            &target,
            &[module("hidden.0", 0, "hidden.0")],
            &parents,
            &glue,
        )
        .unwrap();
        assert_eq!(
            plan[0].origin,
            Some(Origin {
                parent: 0,
                tensor: "hidden.0.weight".into()
            })
        );
        assert!(!plan[0].trainable);
        assert!(plan[2].origin.is_none() && plan[2].trainable);
    }
}
