//! Training settings with their defaults, so every job records the values it really used.

use crate::Invalid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Sgd,
    Adam,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    pub seed: u64,
    pub holdout_fraction: f64,
}

const MAX_EPOCHS: u32 = 100_000;
const MAX_BATCH_SIZE: u32 = 1 << 20;

impl Hyperparameters {
    /// Fills zero values with the defaults and checks every value; `field` is the path of
    /// the hyperparameters in the request.
    pub fn resolve(
        field: &str,
        epochs: u32,
        batch_size: u32,
        learning_rate: f64,
        optimizer: Option<Optimizer>,
        seed: u64,
        holdout_fraction: f64,
    ) -> Result<Hyperparameters, Invalid> {
        let optimizer = optimizer.unwrap_or(Optimizer::Adam);
        let default_learning_rate = match optimizer {
            Optimizer::Adam => 0.001,
            Optimizer::Sgd => 0.05,
        };
        let resolved = Hyperparameters {
            epochs: if epochs == 0 { 10 } else { epochs },
            batch_size: if batch_size == 0 { 64 } else { batch_size },
            learning_rate: if learning_rate == 0.0 {
                default_learning_rate
            } else {
                learning_rate
            },
            optimizer,
            seed,
            holdout_fraction: if holdout_fraction == 0.0 {
                0.2
            } else {
                holdout_fraction
            },
        };
        resolved.validate(field)?;
        Ok(resolved)
    }

    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        if self.epochs == 0 || self.epochs > MAX_EPOCHS {
            return Err(Invalid::new(
                format!("{field}.epochs"),
                format!("must be between 1 and {MAX_EPOCHS}"),
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Invalid::new(
                format!("{field}.batch_size"),
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 10.0)
        {
            return Err(Invalid::new(
                format!("{field}.learning_rate"),
                format!("must be a number in (0, 10], got {}", self.learning_rate),
            ));
        }
        if !(self.holdout_fraction.is_finite()
            && self.holdout_fraction > 0.0
            && self.holdout_fraction <= 0.5)
        {
            return Err(Invalid::new(
                format!("{field}.holdout_fraction"),
                format!("must be in (0, 0.5], got {}", self.holdout_fraction),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_take_defaults() {
        let resolved = Hyperparameters::resolve("h", 0, 0, 0.0, None, 7, 0.0).unwrap();
        assert_eq!(resolved.epochs, 10);
        assert_eq!(resolved.batch_size, 64);
        assert_eq!(resolved.learning_rate, 0.001);
        assert_eq!(resolved.optimizer, Optimizer::Adam);
        assert_eq!(resolved.seed, 7);
        assert_eq!(resolved.holdout_fraction, 0.2);
    }

    #[test]
    fn bad_values_name_the_field() {
        let field = |lr: f64, holdout: f64| {
            Hyperparameters::resolve("hp", 1, 1, lr, None, 0, holdout)
                .unwrap_err()
                .field
        };
        assert_eq!(field(-1.0, 0.1), "hp.learning_rate");
        assert_eq!(field(f64::NAN, 0.1), "hp.learning_rate");
        assert_eq!(field(0.1, 0.9), "hp.holdout_fraction");
    }
}
