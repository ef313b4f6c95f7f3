//! Training with libtorch: the only module of the worker that touches `tch`.
//!
//! A job arrives as a tensor plan: for every parameter, where it starts (a parent's
//! tensor or fresh) and whether it trains. Models are plain lists of state-dict names and
//! tensors with a forward function per architecture, so the names on disk are exactly
//! PyTorch's and a frozen tensor is never even seen by the optimizer.

pub mod collectives;
mod data;
mod network;
mod transformer;

use crate::error::{Error, Result};
use collectives::{CollectiveError, ProcessGroup};
use data::Dataset;
pub use data::{DataSource, TokenShardRef, TokenSource};
use heirloom_core::{Adjustment, Architecture, Hyperparameters, Optimizer, Precision, TensorPlan};
pub use heirloom_core::{Metrics, Progress};
use network::Network;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tch::{COptimizer, Kind, Reduction, Tensor};

pub use tch::Device;

/// The longest a training job goes without reporting progress.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Seeds the held-out split of every dataset.
const SPLIT_SEED: i64 = 0x4845_4952;

#[derive(Debug, Clone)]
pub struct TrainingJob {
    pub architecture: Architecture,
    pub hyperparameters: Hyperparameters,
    /// One entry per parameter, in the architecture's order.
    pub tensors: Vec<TensorPlan>,
    /// The parents' weights, in the order the plan's origins refer to.
    pub parents: Vec<Weights>,
    pub adjustment: Option<Adjustment>,
    /// Needed when anything trains; otherwise only for the held-out accuracy.
    pub dataset: Option<DataSource>,
    /// The TorchScript program, for that architecture.
    pub program: Option<PathBuf>,
    /// Where an earlier attempt got to: training goes on from there.
    pub resume: Option<Resume>,
    /// Checkpoint every this many steps (0: never).
    pub checkpoint_every: u64,
    /// Data-parallel training: this process is one rank of the group the rendezvous
    /// describes (none: it trains alone).
    pub ranks: Option<collectives::Rendezvous>,
}

/// A position in training: how many steps are done, and the running sums of the epoch
/// under way (so its loss and accuracy cover all of it, across a resume).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Position {
    pub step: u64,
    pub loss_sum: f64,
    pub correct: u64,
}

/// A checkpoint to resume from: every tensor of the network, and the position.
#[derive(Debug, Clone)]
pub struct Resume {
    pub weights: Weights,
    pub position: Position,
}

/// What the agent asks of a training job in flight.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<std::sync::atomic::AtomicU8>);

impl Control {
    const RUN: u8 = 0;
    const CANCEL: u8 = 1;
    const DRAIN: u8 = 2;

    /// Stop as soon as possible, keeping nothing.
    pub fn cancel(&self) {
        self.0.store(Self::CANCEL, Ordering::Relaxed);
    }

    /// Checkpoint where training is and stop, so another worker goes on from there.
    pub fn drain(&self) {
        let _ =
            self.0
                .compare_exchange(Self::RUN, Self::DRAIN, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether the job was told to stop (cancelled, lost, or draining).
    pub fn stopped(&self) -> bool {
        self.get() != Self::RUN
    }
}

/// Where a model's weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A safetensors file.
    File(PathBuf),
    /// Tensor by tensor from the content-addressed store, each checked against its hash.
    Blobs(Vec<Blob>),
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub name: String,
    /// `f32` or `i64`.
    pub dtype: String,
    pub shape: Vec<i64>,
    pub sha256: String,
    pub path: PathBuf,
}

impl Weights {
    /// Every tensor on the CPU, by name; blobs are checked against their hashes.
    pub fn load(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            Weights::File(path) => Ok(Tensor::read_safetensors(path)?.into_iter().collect()),
            Weights::Blobs(blobs) => blobs
                .iter()
                .map(|blob| Ok((blob.name.clone(), load_blob(blob)?)))
                .collect(),
        }
    }
}

/// Reads a blob straight into a new tensor's memory, hashing it on the way: one copy
/// from the page cache, no intermediate buffer.
fn load_blob(blob: &Blob) -> Result<Tensor> {
    use sha2::{Digest, Sha256};
    let kind = network::kind_of(&blob.dtype)?;
    let tensor = Tensor::f_empty(blob.shape.as_slice(), (kind, tch::Device::Cpu))?;
    let size = tensor.numel() * kind.elt_size_in_bytes();
    let mut file = std::fs::File::open(&blob.path)?;
    let mismatch = |what: &str| {
        Error::InvalidJob(format!("tensor {}: blob {} {what}", blob.name, blob.sha256))
    };
    if file.metadata()?.len() != size as u64 {
        return Err(mismatch("is not the size of its dtype and shape"));
    }
    let digest = if size == 0 {
        Sha256::digest([])
    } else {
        // SAFETY: `tensor` was just made, contiguous on the CPU, holding exactly `size`
        // bytes, and nothing else refers to its memory until this function returns it.
        let memory = unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, size) };
        read_hashing(&mut file, memory)?
    };
    if hex::encode(digest) != blob.sha256 {
        return Err(mismatch("does not match its hash"));
    }
    // Weights stored before the coordinator refused NaN and ±inf: say so, rather than
    // let training report a divergence and blame the learning rate.
    if size > 0 {
        // SAFETY: as above; the tensor is still this function's alone.
        let memory = unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const u8, size) };
        if let Some((element, value)) = heirloom_core::first_non_finite(&blob.dtype, memory) {
            return Err(Error::InvalidJob(format!(
                "tensor {} (blob {}) holds {value} at element {element}: weights that are not \
                 finite cannot be trained or adjusted; start from a model with finite weights",
                blob.name, blob.sha256
            )));
        }
    }
    Ok(tensor)
}

/// Fills `memory` from `file` and returns the SHA-256 of what was read. A large blob is
/// hashed on a second thread, a chunk behind the reading, so loading takes about as
/// long as reading.
fn read_hashing(
    file: &mut std::fs::File,
    memory: &mut [u8],
) -> Result<sha2::digest::Output<sha2::Sha256>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    const CHUNK: usize = 4 << 20;
    if memory.len() <= 4 * CHUNK {
        file.read_exact(memory)?;
        return Ok(Sha256::digest(&*memory));
    }
    std::thread::scope(|scope| {
        let (chunks, to_hash) = std::sync::mpsc::sync_channel::<&[u8]>(4);
        let hashing = scope.spawn(move || {
            let mut hasher = Sha256::new();
            for chunk in to_hash {
                hasher.update(chunk);
            }
            hasher.finalize()
        });
        for chunk in memory.chunks_mut(CHUNK) {
            file.read_exact(chunk)?;
            let chunk: &[u8] = chunk;
            chunks
                .send(chunk)
                .expect("the hashing thread runs until the reading ends");
        }
        drop(chunks);
        Ok(hashing.join().expect("hashing does not panic"))
    })
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

/// The devices this worker offers: (name, memory in bytes when known). A CUDA worker
/// offers every GPU it sees; a job on one rank runs on `device`, and the ranks of a
/// multi-rank job each on the GPU they are given.
pub fn devices(device: Device) -> Vec<(String, u64)> {
    match device {
        Device::Cuda(_) => (0..tch::Cuda::device_count())
            .map(|index| (format!("cuda:{index}"), 0))
            .collect(),
        _ => vec![("cpu".to_string(), 0)],
    }
}

/// The device a rank is pinned to by name (`cpu`, `cuda:1`), if this worker has it.
pub fn named_device(name: &str) -> Result<Device> {
    let unknown = || {
        Error::InvalidJob(format!(
            "the assignment names device {name:?}, which this worker lacks"
        ))
    };
    match name.split_once(':') {
        None if name == "cpu" => Ok(Device::Cpu),
        Some(("cuda", index)) => {
            let index: usize = index.parse().map_err(|_| unknown())?;
            if (index as i64) < tch::Cuda::device_count() {
                Ok(Device::Cuda(index))
            } else {
                Err(unknown())
            }
        }
        _ => Err(unknown()),
    }
}

/// Carries out `job`: assembles the starting weights (or resumes from its checkpoint),
/// trains the trainable tensors (calling `report` at least every second and after every
/// epoch, and `checkpoint` with a weights file every `job.checkpoint_every` steps),
/// applies the adjustment, scores the held-out split, and writes the weights to
/// `output`. Returns the metrics when there was data. Stops with [`Error::Cancelled`]
/// soon after a cancel, and with [`Error::Drained`] after checkpointing on a drain.
pub fn train(
    job: &TrainingJob,
    device: Device,
    output: &Path,
    control: &Control,
    mut report: impl FnMut(&Progress),
    mut checkpoint: impl FnMut(&Path, Position),
) -> Result<Option<Metrics>> {
    let hp = &job.hyperparameters;
    let dataset = match &job.dataset {
        Some(source) => Some(Dataset::load(
            source,
            job.architecture.input_features(),
            device,
        )?),
        None => None,
    };
    // The held-out split depends on the dataset alone, not on the job's seed, so every
    // model scored on a dataset is scored on the same rows and never trained on them.
    tch::manual_seed(SPLIT_SEED);
    let split = dataset
        .as_ref()
        .map(|dataset| dataset.split(hp.holdout_fraction));
    tch::manual_seed(hp.seed as i64);
    let parents = job
        .parents
        .iter()
        .map(Weights::load)
        .collect::<Result<Vec<_>>>()?;
    let mut network = Network::assemble(
        &job.architecture,
        job.program.as_deref(),
        &job.tensors,
        &parents,
        device,
    )?;
    let objective = Objective::of(&job.architecture, dataset.as_ref());
    if let Objective::NextToken { pad: Some(pad) } = objective {
        network.mask_padding(pad);
    }
    let start = match &job.resume {
        Some(resume) => {
            network.restore(&resume.weights.load()?)?;
            resume.position
        }
        None => Position::default(),
    };
    let mut save_checkpoint = |network: &Network, position: Position| -> Result<()> {
        let path = output.with_extension(format!("step{}.safetensors", position.step));
        network.save(&path)?;
        checkpoint(&path, position);
        Ok(())
    };
    let trains = job.tensors.iter().any(|tensor| tensor.trainable);
    let mut metrics = Metrics::default();
    if trains {
        let (Some(dataset), Some((train_rows, _))) = (&dataset, &split) else {
            return Err(Error::InvalidJob(
                "the job trains but names no dataset".into(),
            ));
        };
        metrics = fit(
            &mut network,
            job,
            (dataset, objective),
            train_rows,
            device,
            Run {
                start,
                control,
                report: &mut report,
                checkpoint: &mut save_checkpoint,
            },
        )?;
    }
    if let Some(adjustment) = job.adjustment {
        adjust(&mut network, &job.tensors, &parents, adjustment, device)?;
    }
    let scored = match (&dataset, &split) {
        (Some(dataset), Some((_, holdout_rows))) => {
            let (accuracy, loss) = score(&network, dataset, objective, holdout_rows, hp)?;
            metrics.holdout_accuracy = accuracy;
            metrics.holdout_loss = loss;
            Some(metrics)
        }
        _ => None,
    };
    network.save(output)?;
    Ok(scored)
}

/// Logits of the model in `weights` for the rows of `x` (or a language model's `tokens`)
/// in `input` (a safetensors file),
/// in evaluation mode, written to `output` as the tensor `logits`.
pub fn predict(
    architecture: &Architecture,
    program: Option<&Path>,
    weights: &Path,
    input: &Path,
    output: &Path,
    device: Device,
) -> Result<()> {
    let parents = vec![Weights::File(weights.to_path_buf()).load()?];
    let plan = heirloom_core::plan_inherit(architecture, |_| false);
    let network = Network::assemble(architecture, program, &plan, &parents, device)?;
    // Rows of `x`, or a token shard's `tokens` (int32 or int64) for a language model.
    let x = Tensor::read_safetensors(input)?
        .into_iter()
        .find(|(name, _)| name == "x" || name == "tokens")
        .map(|(_, x)| match x.kind() {
            Kind::Int | Kind::Int64 => x.to_kind(Kind::Int64),
            _ => x,
        })
        .map(|x| x.to_device(device))
        .ok_or_else(|| {
            Error::InvalidJob(format!("{} has no tensor `x` or `tokens`", input.display()))
        })?;
    let logits = tch::no_grad(|| network.forward(&x, false))?.to_device(Device::Cpu);
    Tensor::write_safetensors(&[("logits", logits)], output)?;
    Ok(())
}

/// What training minimises, by what the model and the data are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Objective {
    /// Cross-entropy of each row's label.
    Classify,
    /// Cross-entropy of every next token, padding left out.
    NextToken { pad: Option<i64> },
}

impl Objective {
    fn of(architecture: &Architecture, dataset: Option<&Dataset>) -> Objective {
        if architecture.is_language_model() {
            Objective::NextToken {
                pad: dataset.and_then(Dataset::pad_token_id),
            }
        } else {
            Objective::Classify
        }
    }

    /// The logits and targets the loss compares: a language model's position t predicts
    /// token t + 1, and padding targets are -100 (ignored).
    fn pairs(self, logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        match self {
            Objective::Classify => (logits.shallow_clone(), targets.shallow_clone()),
            Objective::NextToken { pad } => {
                let length = targets.size()[1];
                let vocabulary = logits.size()[2];
                let predicted = logits.narrow(1, 0, length - 1).reshape([-1, vocabulary]);
                let next = targets.narrow(1, 1, length - 1).reshape([-1]);
                let next = match pad {
                    Some(pad) => next.masked_fill(&next.eq(pad), -100),
                    None => next,
                };
                (predicted, next)
            }
        }
    }

    /// What a batch's mean is over: its rows, or the target tokens of all its rows.
    fn units(self, targets: &Tensor) -> i64 {
        match self {
            Objective::Classify => targets.size()[0],
            Objective::NextToken { pad } => {
                let next = targets.narrow(1, 1, targets.size()[1] - 1);
                match pad {
                    Some(pad) => next.ne(pad).sum(Kind::Int64).int64_value(&[]),
                    None => next.numel() as i64,
                }
            }
        }
    }

    /// The summed loss of these rows (in float32 whatever the logits' dtype) and how
    /// many of their predictions were right.
    fn summed(self, logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        let (logits, targets) = self.pairs(logits, targets);
        let loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
            &targets,
            None,
            Reduction::Sum,
            -100,
            0.0,
        );
        let correct = logits
            .argmax(-1, false)
            .eq_tensor(&targets)
            .sum(Kind::Int64);
        (loss, correct)
    }
}

/// The held-out accuracy (of next tokens, for a language model) and, for a language
/// model, the mean next-token loss: in batches, so a token set streams its shards once.
fn score(
    network: &Network,
    dataset: &Dataset,
    objective: Objective,
    holdout_rows: &Tensor,
    hp: &Hyperparameters,
) -> Result<(f64, Option<f64>)> {
    tch::no_grad(|| {
        if objective == Objective::Classify {
            let (x, y) = dataset.rows(holdout_rows)?;
            let predicted = network.forward(&x, false)?.argmax(-1, false);
            let accuracy = predicted
                .eq_tensor(&y)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            return Ok((accuracy, None));
        }
        let (mut loss, mut correct, mut units) = (0.0, 0i64, 0i64);
        for rows in holdout_rows.split(i64::from(hp.batch_size), 0) {
            let (x, targets) = dataset.rows(&rows)?;
            let (summed, right) = objective.summed(&network.forward(&x, false)?, &targets);
            loss += summed.double_value(&[]);
            correct += right.int64_value(&[]);
            units += objective.units(&targets);
        }
        let units = units.max(1) as f64;
        Ok((correct as f64 / units, Some(loss / units)))
    })
}

/// How one run of `fit` goes: where it starts, and who it answers to.
struct Run<'a, R, C> {
    start: Position,
    control: &'a Control,
    report: &'a mut R,
    checkpoint: &'a mut C,
}

fn fit<R, C>(
    network: &mut Network,
    job: &TrainingJob,
    (dataset, objective): (&Dataset, Objective),
    train_rows: &Tensor,
    device: Device,
    run: Run<'_, R, C>,
) -> Result<Metrics>
where
    R: FnMut(&Progress),
    C: FnMut(&Network, Position) -> Result<()>,
{
    let (plan, hp) = (&job.tensors, &job.hyperparameters);
    let Run {
        start,
        control,
        report,
        checkpoint,
    } = run;
    let group = job
        .ranks
        .as_ref()
        .map(ProcessGroup::join)
        .transpose()?
        .map(Arc::new);
    let mut optimizer = match hp.optimizer {
        Optimizer::Adam => COptimizer::adam(hp.learning_rate, 0.9, 0.999, 0.0, 1e-8, false)?,
        Optimizer::Sgd => COptimizer::sgd(hp.learning_rate, 0.9, 0.0, 0.0, false)?,
    };
    if let Some(group) = &group {
        // Every rank starts from rank 0's tensors, whatever its own initialisation drew.
        for (_, tensor) in network.parameters_mut() {
            if tensor.kind() == Kind::Float {
                tch::no_grad(|| group.broadcast_tensor(tensor, 0))?;
            } else if tensor.is_floating_point() {
                // 16-bit weights travel as float32, which holds them exactly.
                let mut staged = tensor.to_kind(Kind::Float);
                tch::no_grad(|| group.broadcast_tensor(&mut staged, 0))?;
                tch::no_grad(|| tensor.copy_(&staged));
            }
        }
        network.synchronise_norms(group.clone());
    }
    network.train_in(hp.precision);
    let mut scaler = (hp.precision == Precision::Fp16Mixed).then(LossScaler::default);
    for (name, tensor) in network.parameters_mut() {
        // Buffers (batch-norm statistics) train by running, not by gradients.
        let is_parameter = tensor.is_floating_point()
            && !name.ends_with(".running_mean")
            && !name.ends_with(".running_var");
        if is_parameter && plan.iter().any(|t| t.name == name && t.trainable) {
            *tensor = tensor.set_requires_grad(true);
            optimizer.add_parameters(tensor, 0)?;
        }
    }
    let batch_size = i64::from(hp.batch_size);
    let train_count = train_rows.size()[0];
    let batches_per_epoch = (train_count + batch_size - 1) / batch_size;
    let total_steps = batches_per_epoch as u64 * u64::from(hp.epochs);
    let started = Instant::now();
    let mut step = start.step;
    let mut progress = Progress {
        epochs: hp.epochs,
        total_steps,
        step,
        ..Progress::default()
    };
    report(&progress);
    let mut last_report = Instant::now();
    // A language model's accuracy is over target positions: a row has length - 1.
    let mut predictions_per_row = 1.0f64;
    let first_epoch = (start.step / batches_per_epoch.max(1) as u64) as u32 + 1;
    for epoch in first_epoch..=hp.epochs {
        // Each epoch's order depends on the seed and the epoch alone, so a resumed run
        // sees the rows a run without faults would.
        tch::manual_seed(hp.seed as i64 ^ (i64::from(epoch) << 32));
        let order = dataset.epoch_order(train_rows);
        let resumed = epoch == first_epoch && start.step > 0;
        let first_batch = if resumed {
            (start.step % batches_per_epoch as u64) as i64
        } else {
            0
        };
        // Summed on the device and read once per epoch (and per checkpoint): a read per
        // step would stall a GPU on every step. A checkpoint holds the sums of every
        // rank: rank 0 resumes with them, the others from nothing.
        let leads = group.as_ref().is_none_or(|group| group.rank() == 0);
        let (mut loss_sum, mut correct) = if resumed && leads {
            (
                Tensor::from(start.loss_sum as f32).to_device(device),
                Tensor::from(start.correct as i64).to_device(device),
            )
        } else {
            (
                Tensor::zeros([], (Kind::Float, device)),
                Tensor::zeros([], (Kind::Int64, device)),
            )
        };
        for batch in first_batch..batches_per_epoch {
            let position = |step| Position {
                step,
                loss_sum: loss_sum.double_value(&[]),
                correct: correct.int64_value(&[]) as u64,
            };
            match control.get() {
                Control::CANCEL => return Err(Error::Cancelled),
                Control::DRAIN => {
                    // A gang's ranks do not drain together, so no collective here, and
                    // every draining rank checkpoints (their weights are the same): the
                    // worker hands the gang back with one. It carries that rank's sums
                    // alone (the resumed epoch's loss and accuracy then count only its
                    // rows until the epoch ends).
                    if step > start.step {
                        checkpoint(network, position(step))?;
                    }
                    return Err(Error::Drained);
                }
                _ => {}
            }
            if job.checkpoint_every > 0 && step > start.step && step % job.checkpoint_every == 0 {
                // Every rank is at this step together: their sums are added up, and
                // rank 0 alone writes the checkpoint (every rank's weights are the same).
                let mut at = position(step);
                if let Some(group) = &group {
                    let mut sums = [at.loss_sum as f32, at.correct as f32];
                    group.all_reduce_sum(&mut sums)?;
                    (at.loss_sum, at.correct) = (f64::from(sums[0]), sums[1] as u64);
                }
                if leads {
                    checkpoint(network, at)?;
                }
            }
            let first = batch * batch_size;
            let rows = order.narrow(0, first, batch_size.min(train_count - first));
            let batch_rows = rows.size()[0];
            let rows = match &group {
                Some(group) => rank_share(&rows, group.rank(), group.world_size()),
                None => rows,
            };
            optimizer.zero_grad()?;
            // An elastic attempt on fewer ranks than planned keeps the global batch: each
            // rank takes a larger share, in micro-batches of the planned per-rank size,
            // accumulating their gradients (so no rank holds more activations than
            // planned; batch norms then see a micro-batch's statistics).
            let micro_rows = job
                .ranks
                .as_ref()
                .map_or(rows.size()[0], |ranks| ranks.micro_batch(batch_size))
                .max(1);
            // What the batch's mean loss is over, on all ranks together: its rows, or the
            // target tokens of every rank's rows.
            let batch_units = match (objective, &group) {
                (Objective::Classify, _) => batch_rows,
                (Objective::NextToken { .. }, None) => 0, // not needed: one mean
                (Objective::NextToken { .. }, Some(_)) => {
                    objective.units(&dataset.rows(&order.narrow(0, first, batch_rows))?.1)
                }
            };
            for part in rows.split(micro_rows, 0) {
                let (x, y) = dataset.rows(&part)?;
                if let Objective::NextToken { .. } = objective {
                    predictions_per_row = (y.size()[1] - 1) as f64;
                }
                let logits = network.forward(&x, true)?;
                let (loss, right) = match (objective, &group) {
                    (Objective::Classify, None) => (
                        logits.cross_entropy_for_logits(&y),
                        logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64),
                    ),
                    (Objective::NextToken { .. }, None) => {
                        let (summed, right) = objective.summed(&logits, &y);
                        (summed / objective.units(&y).max(1) as f64, right)
                    }
                    // Summed over these rows and divided by the whole batch's count: the
                    // ranks' gradients then sum to the gradient of the batch's mean loss.
                    (_, Some(_)) => {
                        let (summed, right) = objective.summed(&logits, &y);
                        (summed / batch_units.max(1) as f64, right)
                    }
                };
                let scaled = match &scaler {
                    Some(scaler) => &loss * scaler.scale,
                    None => loss.shallow_clone(),
                };
                match &group {
                    None => scaled.f_backward()?,
                    // Synchronised batch norms all-reduce in the backward pass too: a
                    // failure there is a collective's.
                    Some(_) => scaled
                        .f_backward()
                        .map_err(|err| CollectiveError(err.to_string()))?,
                }
                loss_sum += loss.detach() * batch_rows;
                correct += right;
            }
            if let Some(group) = &group {
                sum_gradients(network, group)?;
            }
            // After the ranks' sum, so every rank decides alike whether to step.
            let steps = scaler.as_mut().is_none_or(|scaler| scaler.unscale(network));
            if steps {
                optimizer.step()?;
            }
            step += 1;
            // Long epochs still report every second: each report's answer is how a
            // cancellation reaches the job.
            if last_report.elapsed() >= REPORT_EVERY {
                let seen = (first + rows.size()[0]) as f64;
                report(&Progress {
                    epoch: epoch - 1,
                    epochs: hp.epochs,
                    step,
                    total_steps,
                    loss: loss_sum.double_value(&[]) / seen,
                    accuracy: correct.int64_value(&[]) as f64 / (seen * predictions_per_row),
                    steps_per_second: step as f64 / started.elapsed().as_secs_f64().max(1e-9),
                });
                last_report = Instant::now();
            }
        }
        let (epoch_loss, epoch_correct) = match &group {
            None => (loss_sum.double_value(&[]), correct.int64_value(&[]) as f64),
            Some(group) => {
                let mut sums = [
                    loss_sum.double_value(&[]) as f32,
                    correct.int64_value(&[]) as f32,
                ];
                group.all_reduce_sum(&mut sums)?;
                (f64::from(sums[0]), f64::from(sums[1]))
            }
        };
        progress = Progress {
            epoch,
            epochs: hp.epochs,
            step,
            total_steps,
            loss: epoch_loss / train_count as f64,
            accuracy: epoch_correct / (train_count as f64 * predictions_per_row),
            steps_per_second: step as f64 / started.elapsed().as_secs_f64().max(1e-9),
        };
        if !progress.loss.is_finite() {
            return Err(Error::InvalidJob(format!(
                "training diverged: the loss is {} at epoch {epoch}; lower the learning rate",
                progress.loss
            )));
        }
        report(&progress);
        last_report = Instant::now();
    }
    Ok(Metrics {
        holdout_accuracy: 0.0,
        final_loss: progress.loss,
        train_accuracy: progress.accuracy,
        steps: step,
        steps_per_second: progress.steps_per_second,
        holdout_loss: None,
    })
}

/// Dynamic loss scaling for float16 passes, as torch.amp.GradScaler does it: the loss is
/// multiplied before the backward pass so small gradients survive float16; a step whose
/// gradients overflowed is skipped and the scale halved, and it doubles after a run of
/// good steps.
struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65_536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2_000;

    /// Divides the gradients by the scale; whether they are finite (the step is taken).
    fn unscale(&mut self, network: &mut Network) -> bool {
        let gradients: Vec<Tensor> = network
            .parameters_mut()
            .filter(|(_, tensor)| tensor.requires_grad())
            .map(|(_, tensor)| tensor.grad())
            .filter(Tensor::defined)
            .collect();
        let finite = tch::no_grad(|| {
            gradients
                .iter()
                .all(|gradient| gradient.isfinite().all().int64_value(&[]) == 1)
        });
        if !finite {
            self.scale /= 2.0;
            self.good_steps = 0;
            return false;
        }
        tch::no_grad(|| {
            for mut gradient in gradients {
                let _ = gradient.g_mul_scalar_(1.0 / self.scale);
            }
        });
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// Rank `rank`'s share of a batch's rows: the batch cut into `world_size` runs as even as
/// can be, in order (the first ranks take one row more when it does not divide).
fn rank_share(rows: &Tensor, rank: usize, world_size: usize) -> Tensor {
    let (count, ranks, rank) = (rows.size()[0], world_size as i64, rank as i64);
    let (each, more) = (count / ranks, count % ranks);
    let start = rank * each + rank.min(more);
    rows.narrow(0, start, each + i64::from(rank < more))
}

/// Sums every trainable parameter's gradient across the ranks, in place, so each takes
/// the same optimizer step: flattened into one buffer and summed in one all-reduce (a
/// collective per tensor costs its latency dozens of times a step).
fn sum_gradients(network: &mut Network, group: &ProcessGroup) -> Result<()> {
    let mut gradients: Vec<Tensor> = network
        .parameters_mut()
        .filter(|(_, tensor)| tensor.requires_grad())
        .map(|(_, tensor)| tensor.grad())
        .filter(Tensor::defined)
        .collect();
    if gradients.is_empty() {
        return Ok(());
    }
    // Summed in float32 (bf16 gradients too), the collectives' one dtype.
    let flat: Vec<Tensor> = gradients
        .iter()
        .map(|gradient| gradient.view(-1).to_kind(Kind::Float))
        .collect();
    let mut bucket = Tensor::cat(&flat, 0);
    group.sum(&mut bucket)?;
    let mut offset = 0;
    for gradient in &mut gradients {
        let count = gradient.numel() as i64;
        gradient.copy_(&bucket.narrow(0, offset, count).view_as(gradient));
        offset += count;
    }
    Ok(())
}

/// Interpolation, scaling or the WiSE-FT blend, each against the tensors' origins.
fn adjust(
    network: &mut Network,
    plan: &[TensorPlan],
    parents: &[HashMap<String, Tensor>],
    adjustment: Adjustment,
    device: Device,
) -> Result<()> {
    let origin_of = |name: &str, parent: usize| -> Result<Tensor> {
        let tensor_plan = plan.iter().find(|t| t.name == name);
        let origin = tensor_plan.and_then(|t| t.origin.as_ref());
        let source = origin.and_then(|origin| parents.get(parent)?.get(&origin.tensor));
        source
            .map(|tensor| tensor.to_device(device))
            .ok_or_else(|| Error::InvalidJob(format!("{name} has no origin in parent {parent}")))
    };
    tch::no_grad(|| {
        for (name, tensor) in network.parameters_mut() {
            if !tensor.is_floating_point() {
                continue; // counters (num_batches_tracked) keep their origin's value
            }
            let trainable = plan.iter().any(|t| t.name == name && t.trainable);
            // Computed in float32 whatever the stored dtype (bfloat16 and float16 weights
            // are rounded once, when stored back), as a model soup in PyTorch would be.
            let wide = |t: &Tensor| t.to_kind(Kind::Float);
            let adjusted = match adjustment {
                Adjustment::Interpolate { alpha } => {
                    let other = wide(&origin_of(name, 1)?);
                    wide(tensor) + (other - wide(tensor)) * alpha
                }
                Adjustment::Scale { factor } => wide(tensor) * factor,
                Adjustment::WiseFt { alpha } if trainable => {
                    let Ok(start) = origin_of(name, 0) else {
                        continue; // a fresh tensor has nothing to blend with
                    };
                    let start = wide(&start);
                    &start + (wide(&tensor.detach()) - &start) * alpha
                }
                Adjustment::WiseFt { .. } => continue,
            };
            // In place (and cast back to the tensor's dtype): a program's parameters must
            // stay the program's tensors.
            tensor.copy_(&adjusted);
        }
        Ok(())
    })
}
