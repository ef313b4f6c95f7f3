//! Training settings with their defaults, so every job records the values it really used.
//! A setting left unset takes its default; one that is set is used as given or refused,
//! never replaced: zero means zero.

use crate::Invalid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Sgd,
    Adam,
}

impl Optimizer {
    fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Adam => "adam",
        }
    }

    fn default_learning_rate(self) -> f64 {
        match self {
            Optimizer::Adam => 0.001,
            Optimizer::Sgd => 0.05,
        }
    }
}

/// The numbers training computes in (PyTorch Lightning's names for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// float32 weights and arithmetic, whatever the stored dtype.
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    /// bfloat16 weights, optimizer state and arithmetic.
    #[serde(rename = "bf16")]
    Bf16,
    /// float32 master weights and optimizer state; the forward and backward passes in
    /// bfloat16 (norms, softmax statistics and the loss in float32), as autocast does.
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// As bf16-mixed in float16, with dynamic loss scaling: a step whose gradients
    /// overflow is skipped and the scale halved; it doubles after 2,000 good steps.
    #[serde(rename = "fp16-mixed")]
    Fp16Mixed,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Bf16,
        Precision::Bf16Mixed,
        Precision::Fp16Mixed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Fp16Mixed => "fp16-mixed",
        }
    }

    pub fn parse(text: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.as_str() == text)
    }

    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

/// The settings a job trains with, every one of them decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    pub seed: u64,
    pub holdout_fraction: f64,
    /// Left out of the JSON when fp32, so specs from before it read and hash the same.
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

/// The settings as a request or a recipe states them: `None` takes the default. Seed 0 is
/// both a valid seed and the default, so it needs no unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperparameterInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<Optimizer>,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

const DEFAULT_EPOCHS: u32 = 10;
const DEFAULT_BATCH_SIZE: u32 = 64;
const DEFAULT_HOLDOUT_FRACTION: f64 = 0.2;
const MAX_EPOCHS: u32 = 100_000;
const MAX_BATCH_SIZE: u32 = 1 << 20;
const MAX_LEARNING_RATE: f64 = 10.0;
const MAX_HOLDOUT_FRACTION: f64 = 0.5;

impl Hyperparameters {
    /// Fills unset values with the defaults and checks every value; `field` is the path
    /// of the hyperparameters in the request.
    pub fn resolve(field: &str, input: &HyperparameterInput) -> Result<Hyperparameters, Invalid> {
        let optimizer = input.optimizer.unwrap_or(Optimizer::Adam);
        let resolved = Hyperparameters {
            epochs: input.epochs.unwrap_or(DEFAULT_EPOCHS),
            batch_size: input.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            learning_rate: input
                .learning_rate
                .unwrap_or(optimizer.default_learning_rate()),
            optimizer,
            seed: input.seed,
            holdout_fraction: input.holdout_fraction.unwrap_or(DEFAULT_HOLDOUT_FRACTION),
            precision: input.precision.unwrap_or_default(),
        };
        resolved.validate(field)?;
        Ok(resolved)
    }

    /// Checks every value. The defaults pass, so a refusal is of a value that was set,
    /// and says which default leaving it unset gives.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(Invalid::new(
                format!("{field}.epochs"),
                format!(
                    "must be between 1 and {MAX_EPOCHS}, got {}; leave it unset for the default {DEFAULT_EPOCHS}",
                    self.epochs
                ),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(Invalid::new(
                format!("{field}.batch_size"),
                format!(
                    "must be between 1 and {MAX_BATCH_SIZE}, got {}; leave it unset for the default {DEFAULT_BATCH_SIZE}",
                    self.batch_size
                ),
            ));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= MAX_LEARNING_RATE)
        {
            return Err(Invalid::new(
                format!("{field}.learning_rate"),
                format!(
                    "must be a number in (0, {MAX_LEARNING_RATE}], got {}; leave it unset for {}'s default {}",
                    self.learning_rate,
                    self.optimizer.name(),
                    self.optimizer.default_learning_rate()
                ),
            ));
        }
        if !(self.holdout_fraction.is_finite()
            && self.holdout_fraction > 0.0
            && self.holdout_fraction <= MAX_HOLDOUT_FRACTION)
        {
            return Err(Invalid::new(
                format!("{field}.holdout_fraction"),
                format!(
                    "must be in (0, {MAX_HOLDOUT_FRACTION}], got {}; leave it unset for the default {DEFAULT_HOLDOUT_FRACTION}",
                    self.holdout_fraction
                ),
            ));
        }
        Ok(())
    }
}

impl From<&Hyperparameters> for HyperparameterInput {
    /// Every value set: the settings written out in full.
    fn from(resolved: &Hyperparameters) -> Self {
        HyperparameterInput {
            epochs: Some(resolved.epochs),
            batch_size: Some(resolved.batch_size),
            learning_rate: Some(resolved.learning_rate),
            optimizer: Some(resolved.optimizer),
            seed: resolved.seed,
            holdout_fraction: Some(resolved.holdout_fraction),
            // fp32 is what a recipe without it always meant: written out only otherwise.
            precision: (!resolved.precision.is_fp32()).then_some(resolved.precision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_values_take_defaults() {
        let input = HyperparameterInput {
            seed: 7,
            ..Default::default()
        };
        let resolved = Hyperparameters::resolve("h", &input).unwrap();
        assert_eq!(resolved.epochs, 10);
        assert_eq!(resolved.batch_size, 64);
        assert_eq!(resolved.learning_rate, 0.001);
        assert_eq!(resolved.optimizer, Optimizer::Adam);
        assert_eq!(resolved.seed, 7);
        assert_eq!(resolved.holdout_fraction, 0.2);
        let sgd = HyperparameterInput {
            optimizer: Some(Optimizer::Sgd),
            ..Default::default()
        };
        assert_eq!(
            Hyperparameters::resolve("h", &sgd).unwrap().learning_rate,
            0.05
        );
        let written_out = HyperparameterInput::from(&resolved);
        assert_eq!(
            Hyperparameters::resolve("h", &written_out),
            Ok(resolved),
            "the settings written out resolve to themselves"
        );
    }

    /// Zero (or any value out of range) is refused naming the field and the default,
    /// never replaced by it.
    #[test]
    fn set_values_are_used_or_refused_never_replaced() {
        let refusal = |input: HyperparameterInput| {
            Hyperparameters::resolve("hp", &input)
                .unwrap_err()
                .to_string()
        };
        for (input, expected) in [
            (
                HyperparameterInput {
                    epochs: Some(0),
                    ..Default::default()
                },
                "hp.epochs: must be between 1 and 100000, got 0; leave it unset for the default 10",
            ),
            (
                HyperparameterInput {
                    batch_size: Some(0),
                    ..Default::default()
                },
                "hp.batch_size: must be between 1 and 1048576, got 0; leave it unset for the default 64",
            ),
            (
                HyperparameterInput {
                    learning_rate: Some(0.0),
                    ..Default::default()
                },
                "hp.learning_rate: must be a number in (0, 10], got 0; leave it unset for adam's default 0.001",
            ),
            (
                HyperparameterInput {
                    learning_rate: Some(-1.0),
                    optimizer: Some(Optimizer::Sgd),
                    ..Default::default()
                },
                "hp.learning_rate: must be a number in (0, 10], got -1; leave it unset for sgd's default 0.05",
            ),
            (
                HyperparameterInput {
                    learning_rate: Some(f64::NAN),
                    ..Default::default()
                },
                "hp.learning_rate: must be a number in (0, 10], got NaN; leave it unset for adam's default 0.001",
            ),
            (
                HyperparameterInput {
                    holdout_fraction: Some(0.0),
                    ..Default::default()
                },
                "hp.holdout_fraction: must be in (0, 0.5], got 0; leave it unset for the default 0.2",
            ),
            (
                HyperparameterInput {
                    holdout_fraction: Some(0.9),
                    ..Default::default()
                },
                "hp.holdout_fraction: must be in (0, 0.5], got 0.9; leave it unset for the default 0.2",
            ),
        ] {
            assert_eq!(refusal(input), expected);
        }
        let ones = HyperparameterInput {
            epochs: Some(1),
            batch_size: Some(1),
            ..Default::default()
        };
        let resolved = Hyperparameters::resolve("hp", &ones).unwrap();
        assert_eq!((resolved.epochs, resolved.batch_size), (1, 1));
    }

    #[test]
    fn a_recipe_states_only_what_it_sets() {
        let input: HyperparameterInput = serde_json::from_str(r#"{"epochs": 2}"#).unwrap();
        assert_eq!(input.epochs, Some(2));
        assert_eq!(input.batch_size, None);
        assert_eq!(
            serde_json::to_string(&input).unwrap(),
            r#"{"epochs":2,"seed":0}"#
        );
        let zero: HyperparameterInput = serde_json::from_str(r#"{"epochs": 0}"#).unwrap();
        assert_eq!(zero.epochs, Some(0), "an explicit zero stays a zero");
    }
}
