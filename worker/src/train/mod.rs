//! Training with libtorch: the only module of the worker that touches `tch`.
//!
//! Models are plain maps of state-dict names to tensors with a forward function per
//! architecture, so the names on disk are exactly PyTorch's and a frozen tensor is never
//! even seen by the optimizer.

mod data;
mod network;

use crate::error::{Error, Result};
use data::Dataset;
use heirloom_spec::{Architecture, HEAD, Hyperparameters, Optimizer, TrainablePatterns};
use network::Network;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{COptimizer, Kind, Tensor};

pub use tch::Device;

/// How a job's starting weights and trainable tensors are chosen.
#[derive(Debug, Clone)]
pub enum Start {
    /// Fresh weights, everything trained.
    Scratch,
    /// The parent's weights; only tensors matching the patterns are trained.
    Finetune {
        parent: PathBuf,
        trainable: TrainablePatterns,
    },
    /// The parent's weights minus its head, frozen; a fresh head is trained.
    Transfer { parent: PathBuf },
}

#[derive(Debug, Clone)]
pub struct TrainingJob {
    pub architecture: Architecture,
    pub hyperparameters: Hyperparameters,
    pub start: Start,
    pub dataset: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub steps_per_second: f64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub holdout_accuracy: f64,
    pub final_loss: f64,
    pub train_accuracy: f64,
    pub steps: u64,
    pub steps_per_second: f64,
}

/// Sets libtorch's thread pools; call once before training.
pub fn set_threads(intra_op: i32) {
    tch::set_num_threads(intra_op.max(1));
    tch::set_num_interop_threads(1);
}

pub fn pick_device(wanted: &str) -> Result<Device> {
    match wanted {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(Error::InvalidJob(
            "--device cuda, but CUDA is not available".into(),
        )),
        "auto" => Ok(Device::cuda_if_available()),
        other => Err(Error::InvalidJob(format!(
            "--device {other:?}: use auto, cpu or cuda"
        ))),
    }
}

/// The devices this worker offers: (name, memory in bytes when known).
pub fn devices(device: Device) -> Vec<(String, u64)> {
    match device {
        Device::Cuda(index) => vec![(format!("cuda:{index}"), 0)],
        _ => vec![("cpu".to_string(), 0)],
    }
}

/// Trains `job`, calling `report` after every epoch, and writes the weights to `output`.
/// Stops with [`Error::Cancelled`] soon after `cancel` is set.
pub fn train(
    job: &TrainingJob,
    device: Device,
    output: &Path,
    cancel: &Arc<AtomicBool>,
    mut report: impl FnMut(&Progress),
) -> Result<Outcome> {
    let hp = &job.hyperparameters;
    tch::manual_seed(hp.seed as i64);
    let dataset = Dataset::load(&job.dataset, job.architecture.input_features(), device)?;
    let (train_rows, holdout_rows) = dataset.split(hp.holdout_fraction);
    let mut network = match &job.start {
        Start::Scratch => Network::fresh(&job.architecture, device),
        Start::Finetune { parent, .. } => {
            Network::load(&job.architecture, parent, device, |_| true)?
        }
        Start::Transfer { parent } => {
            Network::load(&job.architecture, parent, device, |name| !is_head(name))?
        }
    };
    let trainable = |name: &str| match &job.start {
        Start::Scratch => true,
        Start::Finetune { trainable, .. } => trainable.is_trainable(name),
        Start::Transfer { .. } => is_head(name),
    };
    let mut optimizer = match hp.optimizer {
        Optimizer::Adam => COptimizer::adam(hp.learning_rate, 0.9, 0.999, 0.0, 1e-8, false)?,
        Optimizer::Sgd => COptimizer::sgd(hp.learning_rate, 0.9, 0.0, 0.0, false)?,
    };
    for (name, tensor) in network.parameters_mut() {
        if trainable(name) {
            *tensor = tensor.set_requires_grad(true);
            optimizer.add_parameters(tensor, 0)?;
        }
    }

    let batch_size = i64::from(hp.batch_size);
    let train_count = train_rows.size()[0];
    let batches_per_epoch = (train_count + batch_size - 1) / batch_size;
    let total_steps = batches_per_epoch as u64 * u64::from(hp.epochs);
    let started = Instant::now();
    let mut step = 0u64;
    let mut progress = Progress {
        epochs: hp.epochs,
        total_steps,
        ..Progress::default()
    };
    report(&progress);
    for epoch in 1..=hp.epochs {
        let order =
            train_rows.index_select(0, &Tensor::randperm(train_count, (Kind::Int64, device)));
        // Summed on the device and read once per epoch: a read per step would stall
        // a GPU on every step.
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        for batch in 0..batches_per_epoch {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let first = batch * batch_size;
            let rows = order.narrow(0, first, batch_size.min(train_count - first));
            let (x, y) = dataset.rows(&rows);
            let logits = network.forward(&x);
            let loss = logits.cross_entropy_for_logits(&y);
            optimizer.zero_grad()?;
            loss.backward();
            optimizer.step()?;
            step += 1;
            loss_sum += loss.detach() * rows.size()[0];
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
        }
        let loss_sum = loss_sum.double_value(&[]);
        let correct = correct.int64_value(&[]);
        progress = Progress {
            epoch,
            epochs: hp.epochs,
            step,
            total_steps,
            loss: loss_sum / train_count as f64,
            accuracy: correct as f64 / train_count as f64,
            steps_per_second: step as f64 / started.elapsed().as_secs_f64().max(1e-9),
        };
        report(&progress);
    }
    let holdout_accuracy = tch::no_grad(|| {
        let (x, y) = dataset.rows(&holdout_rows);
        let predicted = network.forward(&x).argmax(-1, false);
        predicted
            .eq_tensor(&y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    });
    network.save(output)?;
    Ok(Outcome {
        holdout_accuracy,
        final_loss: progress.loss,
        train_accuracy: progress.accuracy,
        steps: step,
        steps_per_second: progress.steps_per_second,
    })
}

fn is_head(name: &str) -> bool {
    name.strip_prefix(HEAD)
        .is_some_and(|rest| rest.starts_with('.'))
}
