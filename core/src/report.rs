//! What a worker reports about training: progress while it runs and metrics at the end.

use crate::Invalid;
use serde::{Deserialize, Serialize};

/// JSON has no NaN or infinity, and neither does a meaningful report.
fn finite(field: &str, values: &[(&str, f64)]) -> Result<(), Invalid> {
    match values.iter().find(|(_, value)| !value.is_finite()) {
        Some((name, value)) => Err(Invalid::new(
            format!("{field}.{name}"),
            format!("must be a finite number, not {value}"),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub steps_per_second: f64,
}

impl Progress {
    pub fn check(&self, field: &str) -> Result<(), Invalid> {
        finite(
            field,
            &[
                ("loss", self.loss),
                ("accuracy", self.accuracy),
                ("steps_per_second", self.steps_per_second),
            ],
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy on the dataset's held-out split.
    pub holdout_accuracy: f64,
    pub final_loss: f64,
    pub train_accuracy: f64,
    pub steps: u64,
    pub steps_per_second: f64,
    /// A language model's mean next-token cross-entropy on the held-out sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_loss: Option<f64>,
}

impl Metrics {
    pub fn check(&self, field: &str) -> Result<(), Invalid> {
        finite(
            field,
            &[
                ("holdout_accuracy", self.holdout_accuracy),
                ("final_loss", self.final_loss),
                ("train_accuracy", self.train_accuracy),
                ("steps_per_second", self.steps_per_second),
                ("holdout_loss", self.holdout_loss.unwrap_or_default()),
            ],
        )
    }

    /// exp(holdout_loss): how many tokens the model hesitates between, on average.
    pub fn holdout_perplexity(&self) -> Option<f64> {
        self.holdout_loss.map(f64::exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_figures_are_refused_by_name() {
        let progress = Progress {
            loss: f64::NAN,
            ..Progress::default()
        };
        assert_eq!(
            progress.check("progress").unwrap_err().field,
            "progress.loss"
        );
        let metrics = Metrics {
            final_loss: f64::INFINITY,
            ..Metrics::default()
        };
        assert_eq!(
            metrics.check("metrics").unwrap_err().field,
            "metrics.final_loss"
        );
        assert!(Metrics::default().check("metrics").is_ok());
    }
}
