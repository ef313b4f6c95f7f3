//! Recipes: how a model is made, without its inputs — the kind, the architecture or the
//! head, what trains, the optimizer and its schedule, batch size, epochs, seed and the
//! held-out split. A recipe's JSON body is what users write, patch and diff; this module
//! reads it (refusing unknown keys), fills in its defaults, and turns it and a job's
//! inputs into a submission, or a past job back into a recipe.

use crate::domain::{DraftModule, JobDraft, JobKind, JobSpec, Reference, fields_that_do_not_apply};
use crate::error::{Error, Result};
use heirloom_core::{
    Adjustment, Architecture, HyperparameterInput, Hyperparameters, Invalid, Parents, limits,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A recipe's body. Zero and empty values are absent from the JSON; absent
/// hyperparameters take their defaults, and a zero one is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub kind: JobKind,
    /// The architecture a train or compose job builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub hyperparameters: HyperparameterInput,
    /// Patterns of the tensors that train (finetune, compose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trainable: Vec<String>,
    /// A transfer's new head: its output size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_classes: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unfreeze_blocks: u32,
    /// Direct: interpolation towards the second parent; finetune: the WiSE-FT blend.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub alpha: f64,
    /// Direct: multiply every tensor by this.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub scale: f64,
    /// Compose: target prefix ← (parent slot, source prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<RecipeModule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeModule {
    pub target_prefix: String,
    /// Which of the job's parents (0, 1, …) the module comes from.
    pub parent: usize,
    pub source_prefix: String,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_f64(value: &f64) -> bool {
    *value == 0.0
}

/// A job's inputs: what a recipe leaves out.
pub struct RecipeInputs {
    pub model_name: String,
    pub dataset: Option<Reference>,
    /// The parents in slot order.
    pub parents: Vec<Reference>,
}

impl Recipe {
    /// Reads a recipe body, checks everything that does not depend on a job's inputs,
    /// and fills in the defaults. `field` names the body in the request.
    pub fn parse(field: &str, body: &Value) -> Result<Recipe> {
        let mut recipe: Recipe = serde_json::from_value(body.clone()).map_err(|err| {
            Invalid::new(
                field,
                format!("is not a recipe: {err} (docs/RECIPES.md lists the keys)"),
            )
        })?;
        let resolved = recipe.resolved_hyperparameters(&format!("{field}.hyperparameters"))?;
        recipe.hyperparameters = HyperparameterInput::from(&resolved);
        if let Some(architecture) = &recipe.architecture {
            architecture.validate(&format!("{field}.architecture"))?;
        }
        limits::check_count(
            &format!("{field}.trainable"),
            recipe.trainable.len(),
            limits::MAX_PATTERNS,
        )?;
        limits::check_count(
            &format!("{field}.modules"),
            recipe.modules.len(),
            limits::MAX_MODULES,
        )?;
        for module in &recipe.modules {
            if module.parent >= limits::MAX_MODULES {
                return Err(Invalid::new(
                    format!("{field}.modules"),
                    format!("parent slot {} is out of range", module.parent),
                )
                .into());
            }
        }
        let takes = recipe.kind.inputs();
        let kind = recipe.kind.as_str();
        if takes.architecture && recipe.architecture.is_none() {
            return Err(Invalid::new(
                format!("{field}.architecture"),
                format!("a {kind} recipe needs an architecture"),
            )
            .into());
        }
        if takes.head && recipe.num_classes == 0 {
            return Err(Invalid::new(
                format!("{field}.num_classes"),
                format!("a {kind} recipe needs the new head's output size"),
            )
            .into());
        }
        if takes.parents == Parents::FromModules && recipe.modules.is_empty() {
            return Err(Invalid::new(
                format!("{field}.modules"),
                format!("a {kind} recipe needs at least one module"),
            )
            .into());
        }
        // The same rules a submission meets: no key that the kind does not use.
        let draft = recipe.draft_with_slots(String::new(), None, &[])?;
        if let Some(problem) = fields_that_do_not_apply(&draft).into_iter().next() {
            return Err(rename_field(problem, "spec.", &format!("{field}.")));
        }
        Ok(recipe)
    }

    /// The canonical JSON body: defaults filled in, empty keys left out.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a recipe serializes")
    }

    fn resolved_hyperparameters(&self, field: &str) -> Result<Hyperparameters> {
        Ok(Hyperparameters::resolve(field, &self.hyperparameters)?)
    }

    /// How many parents a job of this recipe takes.
    pub fn parent_slots(&self) -> usize {
        match self.kind.inputs().parents {
            Parents::None => 0,
            Parents::One => 1,
            Parents::OneOrTwo if self.alpha != 0.0 => 2,
            Parents::OneOrTwo => 1,
            Parents::FromModules => self
                .modules
                .iter()
                .map(|module| module.parent + 1)
                .max()
                .unwrap_or(0),
        }
    }

    /// The submission this recipe makes with these inputs.
    pub fn draft(&self, inputs: RecipeInputs) -> Result<JobDraft> {
        let slots = self.parent_slots();
        if inputs.parents.len() != slots {
            let kind = self.kind.as_str();
            return Err(Invalid::new(
                "spec.parents",
                format!(
                    "this {kind} recipe takes {slots} parent model(s) in order, {} given",
                    inputs.parents.len()
                ),
            )
            .into());
        }
        self.draft_with_slots(inputs.model_name, inputs.dataset, &inputs.parents)
    }

    fn draft_with_slots(
        &self,
        model_name: String,
        dataset: Option<Reference>,
        parents: &[Reference],
    ) -> Result<JobDraft> {
        let slot = |index: usize| parents.get(index).cloned();
        let takes = self.kind.inputs();
        Ok(JobDraft {
            kind: self.kind,
            model_name,
            dataset,
            parent: if takes.takes_parent() { slot(0) } else { None },
            second_parent: if takes.parents == Parents::OneOrTwo {
                slot(1)
            } else {
                None
            },
            architecture: self.architecture.clone(),
            hyperparameters: self.resolved_hyperparameters("recipe.hyperparameters")?,
            trainable: self.trainable.clone(),
            num_classes: self.num_classes,
            alpha: self.alpha,
            scale: self.scale,
            unfreeze_blocks: self.unfreeze_blocks,
            modules: self
                .modules
                .iter()
                .map(|module| DraftModule {
                    target_prefix: module.target_prefix.clone(),
                    // Checking a recipe alone, slots have no models yet.
                    parent: slot(module.parent).unwrap_or_else(Reference::placeholder),
                    source_prefix: module.source_prefix.clone(),
                })
                .collect(),
        })
    }

    /// The recipe a past job ran: its spec without the inputs.
    pub fn from_spec(spec: &JobSpec) -> Recipe {
        let (alpha, scale) = match spec.adjustment {
            Some(Adjustment::Interpolate { alpha } | Adjustment::WiseFt { alpha }) => (alpha, 0.0),
            Some(Adjustment::Scale { factor }) => (0.0, factor),
            None => (0.0, 0.0),
        };
        Recipe {
            kind: spec.kind,
            architecture: spec
                .kind
                .inputs()
                .architecture
                .then(|| spec.architecture.clone()),
            hyperparameters: HyperparameterInput::from(&spec.hyperparameters),
            trainable: spec.trainable.clone(),
            num_classes: spec.num_classes.unwrap_or(0),
            unfreeze_blocks: spec.unfreeze_blocks,
            alpha,
            scale,
            modules: spec
                .modules
                .iter()
                .map(|module| RecipeModule {
                    target_prefix: module.target_prefix.clone(),
                    parent: spec
                        .parents
                        .iter()
                        .position(|id| *id == module.parent_id)
                        .unwrap_or(0),
                    source_prefix: module.source_prefix.clone(),
                })
                .collect(),
        }
    }
}

/// An [`Invalid`] whose field starts with `from` renamed to start with `to`.
fn rename_field(error: Error, from: &str, to: &str) -> Error {
    match error {
        Error::InvalidArgument(message) => match message.strip_prefix(from) {
            Some(rest) => Error::InvalidArgument(format!("{to}{rest}")),
            None => Error::InvalidArgument(message),
        },
        other => other,
    }
}

/// Parses a JSON text from the request; `field` names it.
pub fn parse_json(field: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|err| Invalid::new(field, format!("is not valid JSON: {err}")).into())
}

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The merge patch that turns `a` into `b`.
pub fn patch_between(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for (key, value) in b {
                match a.get(key) {
                    Some(old) if old == value => {}
                    Some(old) => {
                        patch.insert(key.clone(), patch_between(old, value));
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in a.keys().filter(|key| !b.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => b.clone(),
    }
}

/// One difference between two bodies: a dotted path, and the value on each side.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
}

/// Every leaf that differs between `a` and `b`, in key order; arrays compare whole.
pub fn diff(a: &Value, b: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    collect_changes("", Some(a), Some(b), &mut changes);
    changes
}

fn collect_changes(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (a, b) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            collect_changes(&path, a.get(key), b.get(key), out);
        }
    } else if a != b {
        out.push(Change {
            path: path.to_string(),
            a: a.cloned(),
            b: b.cloned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge_patch(&mut target, &json!({"a": [3], "b": {"c": 1}}));
        assert_eq!(target, json!({"a": [3], "b": {"c": 1}}));
    }

    #[test]
    fn the_patch_between_two_bodies_turns_one_into_the_other() {
        let a = json!({"kind": "finetune", "trainable": ["fc.*"], "h": {"x": 1, "y": 2}});
        let b = json!({"kind": "finetune", "h": {"x": 3, "y": 2}, "alpha": 0.5});
        let patch = patch_between(&a, &b);
        assert_eq!(
            patch,
            json!({"trainable": null, "h": {"x": 3}, "alpha": 0.5})
        );
        let mut patched = a.clone();
        merge_patch(&mut patched, &patch);
        assert_eq!(patched, b);
        let paths: Vec<String> = diff(&a, &b).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["alpha", "h.x", "trainable"]);
    }

    #[test]
    fn a_recipe_fills_defaults_and_refuses_unknown_keys_and_misplaced_fields() {
        let recipe = Recipe::parse(
            "body",
            &json!({"kind": "finetune", "trainable": ["fc.*"], "hyperparameters": {"epochs": 2}}),
        )
        .unwrap();
        let body = recipe.to_json();
        assert_eq!(body["hyperparameters"]["epochs"], 2);
        assert_eq!(body["hyperparameters"]["batch_size"], 64);
        assert_eq!(body["hyperparameters"]["optimizer"], "adam");
        assert_eq!(
            Recipe::parse("body", &body).unwrap(),
            recipe,
            "canonical is stable"
        );

        let zero = Recipe::parse(
            "body",
            &json!({"kind": "finetune", "hyperparameters": {"epochs": 0}}),
        );
        let message = zero.unwrap_err().to_string();
        assert!(
            message.contains("body.hyperparameters.epochs: must be between 1 and"),
            "a zero is refused, not replaced by the default: {message}"
        );

        let unknown = Recipe::parse("body", &json!({"kind": "finetune", "epochs": 2}));
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `epochs`"),
            "unknown keys are named"
        );
        let misplaced = Recipe::parse(
            "body",
            &json!({"kind": "train", "num_classes": 3,
            "architecture": {"mlp": {"input_features": 4, "hidden": [], "num_classes": 3}}}),
        );
        let message = misplaced.unwrap_err().to_string();
        assert!(
            message.contains("body.num_classes: does not apply to a train job"),
            "{message}"
        );
        let transfer = Recipe::parse("body", &json!({"kind": "transfer"}));
        assert!(
            transfer
                .unwrap_err()
                .to_string()
                .contains("body.num_classes")
        );
    }

    #[test]
    fn slots_are_counted_from_the_kind_and_the_modules() {
        let compose = Recipe::parse(
            "body",
            &json!({"kind": "compose",
                "architecture": {"mlp": {"input_features": 4, "hidden": [8], "num_classes": 3}},
                "modules": [{"target_prefix": "hidden.0", "parent": 0, "source_prefix": "hidden.0"},
                            {"target_prefix": "fc", "parent": 1, "source_prefix": "fc"}]}),
        )
        .unwrap();
        assert_eq!(compose.parent_slots(), 2);
        let inputs = RecipeInputs {
            model_name: "m".into(),
            dataset: None,
            parents: vec![Reference::model("spec.parents[0]", "base").unwrap()],
        };
        let message = compose.draft(inputs).unwrap_err().to_string();
        assert!(
            message.contains("takes 2 parent model(s) in order, 1 given"),
            "{message}"
        );
    }
}
