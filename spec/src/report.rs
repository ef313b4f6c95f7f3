//! What a worker reports about training: progress while it runs and metrics at the end.

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy on the dataset's held-out split.
    pub holdout_accuracy: f64,
    pub final_loss: f64,
    pub train_accuracy: f64,
    pub steps: u64,
    pub steps_per_second: f64,
}
