//! Datasets: a classification set held whole (a safetensors file with `x`, float32
//! [N, F], and `y`, int64 [N]), or a token set streamed shard by shard (each shard a
//! safetensors file of `tokens` [sequences, length]) with at most two shards in memory and
//! the next one in the epoch's order fetched ahead on a thread of its own.
//!
//! Rows are numbered across the whole dataset; a token set's epoch order keeps each
//! shard's rows together (shards in a seeded order, rows in a seeded order inside each),
//! so a batch touches one shard, or two where it crosses from one to the next.

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// Gives a shard's local file by its sha256, downloading it first if need be (the
/// worker's cache); may be called from any thread.
pub type FetchShard = Arc<dyn Fn(&str) -> Result<PathBuf> + Send + Sync>;

/// Where a token dataset's shards come from.
#[derive(Clone)]
pub struct TokenSource {
    pub shards: Vec<TokenShardRef>,
    pub pad_token_id: Option<u32>,
    pub fetch: FetchShard,
}

#[derive(Debug, Clone)]
pub struct TokenShardRef {
    pub sha256: String,
    pub sequences: u64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("shards", &self.shards)
            .field("pad_token_id", &self.pad_token_id)
            .finish_non_exhaustive()
    }
}

/// What a job trains on.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A classification dataset's file.
    Classes(PathBuf),
    Tokens(TokenSource),
}

/// Shards kept in memory at once: the one being read and the one before (a batch may
/// span the border).
const SHARDS_IN_MEMORY: usize = 2;

pub enum Dataset {
    Classes { x: Tensor, y: Tensor },
    Tokens(TokenStream),
}

pub struct TokenStream {
    source: TokenSource,
    /// The first row of each shard, and one past the last row.
    offsets: Vec<i64>,
    device: Device,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    loaded: VecDeque<(usize, Tensor)>,
    /// The shards in the current epoch's order: what to fetch ahead.
    order: Vec<usize>,
    ahead: Option<(usize, std::thread::JoinHandle<Result<PathBuf>>)>,
}

impl Dataset {
    pub fn load(source: &DataSource, features: u64, device: Device) -> Result<Dataset> {
        match source {
            DataSource::Classes(path) => load_classes(path, features, device),
            DataSource::Tokens(source) => {
                let mut offsets = vec![0i64];
                for shard in &source.shards {
                    offsets.push(offsets.last().copied().unwrap_or(0) + shard.sequences as i64);
                }
                Ok(Dataset::Tokens(TokenStream {
                    source: source.clone(),
                    offsets,
                    device,
                    state: Mutex::default(),
                }))
            }
        }
    }

    pub fn pad_token_id(&self) -> Option<i64> {
        match self {
            Dataset::Classes { .. } => None,
            Dataset::Tokens(stream) => stream.source.pad_token_id.map(i64::from),
        }
    }

    fn len(&self) -> i64 {
        match self {
            Dataset::Classes { x, .. } => x.size()[0],
            Dataset::Tokens(stream) => stream.offsets.last().copied().unwrap_or(0),
        }
    }

    /// Row indices for training and for the held-out split, from seeded permutations
    /// (the generator's state decides them): of the whole set, or of each shard.
    pub fn split(&self, holdout_fraction: f64) -> (Tensor, Tensor) {
        let rows = self.len();
        let holdout_of =
            |rows: i64| ((rows as f64 * holdout_fraction).ceil() as i64).clamp(1, rows - 1);
        match self {
            Dataset::Classes { x, .. } => {
                let holdout = holdout_of(rows);
                // On the CPU whatever the device: CUDA's generator would give other rows.
                let order =
                    Tensor::randperm(rows, (Kind::Int64, Device::Cpu)).to_device(x.device());
                (
                    order.narrow(0, holdout, rows - holdout),
                    order.narrow(0, 0, holdout),
                )
            }
            Dataset::Tokens(stream) => {
                let (mut train, mut holdout) = (Vec::new(), Vec::new());
                for shard in 0..stream.source.shards.len() {
                    let (first, count) = stream.shard_rows(shard);
                    let order = Tensor::randperm(count, (Kind::Int64, Device::Cpu)) + first;
                    // A shard of one sequence trains; the first shard gives one to the
                    // held-out split if no other does.
                    let held = if count > 1 { holdout_of(count) } else { 0 };
                    holdout.push(order.narrow(0, 0, held));
                    train.push(order.narrow(0, held, count - held));
                }
                let (mut train, mut holdout) = (Tensor::cat(&train, 0), Tensor::cat(&holdout, 0));
                if holdout.numel() == 0 && rows > 1 {
                    holdout = train.narrow(0, 0, 1);
                    train = train.narrow(0, 1, rows - 1);
                }
                // The held-out rows in shard order, so scoring them streams each shard once.
                let (holdout, _) = holdout.sort(0, false);
                (train, holdout)
            }
        }
    }

    /// The training rows in this epoch's order, from the generator's state: a
    /// permutation of them all, or (token sets) shard by shard.
    pub fn epoch_order(&self, train_rows: &Tensor) -> Tensor {
        let count = train_rows.size()[0];
        match self {
            Dataset::Classes { .. } => train_rows.index_select(
                0,
                &Tensor::randperm(count, (Kind::Int64, train_rows.device())),
            ),
            Dataset::Tokens(stream) => {
                let shards = stream.source.shards.len();
                let shard_order: Vec<i64> =
                    Vec::try_from(Tensor::randperm(shards as i64, (Kind::Int64, Device::Cpu)))
                        .expect("a permutation reads as i64");
                let of_shard =
                    train_rows.bucketize(&Tensor::from_slice(&stream.offsets[1..]), false, true);
                let mut order = Vec::with_capacity(shards);
                for &shard in &shard_order {
                    let rows = train_rows.masked_select(&of_shard.eq(shard));
                    let count = rows.size()[0];
                    order.push(
                        rows.index_select(0, &Tensor::randperm(count, (Kind::Int64, Device::Cpu))),
                    );
                }
                stream.state.lock().expect("the stream's lock").order =
                    shard_order.iter().map(|&s| s as usize).collect();
                Tensor::cat(&order, 0)
            }
        }
    }

    /// The inputs and targets of these rows: features and labels, or token ids (the
    /// targets are the same ids, shifted by the loss).
    pub fn rows(&self, indices: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Dataset::Classes { x, y } => {
                Ok((x.index_select(0, indices), y.index_select(0, indices)))
            }
            Dataset::Tokens(stream) => {
                let tokens = stream.rows(indices)?;
                Ok((tokens.shallow_clone(), tokens))
            }
        }
    }
}

impl TokenStream {
    fn shard_rows(&self, shard: usize) -> (i64, i64) {
        (
            self.offsets[shard],
            self.offsets[shard + 1] - self.offsets[shard],
        )
    }

    fn shard_of(&self, row: i64) -> usize {
        self.offsets.partition_point(|&first| first <= row) - 1
    }

    /// Token ids `[rows, length]` (int64, on the device) of global rows that lie in one
    /// shard or a few neighbouring ones.
    fn rows(&self, indices: &Tensor) -> Result<Tensor> {
        let wanted: Vec<i64> = Vec::try_from(indices.to_device(Device::Cpu))
            .map_err(|err| Error::InvalidJob(format!("row indices: {err}")))?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < wanted.len() {
            let shard = self.shard_of(wanted[start]);
            let end = start
                + wanted[start..]
                    .iter()
                    .take_while(|&&row| self.shard_of(row) == shard)
                    .count();
            let tokens = self.shard(shard)?;
            let local: Vec<i64> = wanted[start..end]
                .iter()
                .map(|&row| row - self.offsets[shard])
                .collect();
            parts.push(tokens.index_select(0, &Tensor::from_slice(&local)));
            start = end;
        }
        Ok(Tensor::cat(&parts, 0).to_device(self.device))
    }

    /// A shard's token ids (int64, on the CPU), loaded if need be; loading one fetches the
    /// next shard of the epoch's order on a thread of its own.
    fn shard(&self, shard: usize) -> Result<Tensor> {
        let mut state = self.state.lock().expect("the stream's lock");
        if let Some((_, tokens)) = state.loaded.iter().find(|(loaded, _)| *loaded == shard) {
            return Ok(tokens.shallow_clone());
        }
        let path = match state.ahead.take() {
            Some((ahead, fetching)) if ahead == shard => fetching
                .join()
                .map_err(|_| Error::InvalidJob("fetching a shard panicked".into()))??,
            // Fetched ahead for nothing (or not at all): fetch it now.
            _ => (self.source.fetch)(&self.source.shards[shard].sha256)?,
        };
        let tokens = read_shard(&path)?;
        if state.loaded.len() == SHARDS_IN_MEMORY {
            state.loaded.pop_front();
        }
        state.loaded.push_back((shard, tokens.shallow_clone()));
        let next = state
            .order
            .iter()
            .position(|&s| s == shard)
            .and_then(|at| state.order.get(at + 1).copied());
        if let Some(next) = next {
            let (fetch, sha256) = (
                self.source.fetch.clone(),
                self.source.shards[next].sha256.clone(),
            );
            state.ahead = Some((next, std::thread::spawn(move || fetch(&sha256))));
        }
        Ok(tokens)
    }
}

fn read_shard(path: &Path) -> Result<Tensor> {
    let tokens = Tensor::read_safetensors(path)?
        .into_iter()
        .find(|(name, _)| name == "tokens")
        .map(|(_, tokens)| tokens)
        .ok_or_else(|| Error::InvalidJob(format!("shard {} has no `tokens`", path.display())))?;
    Ok(tokens.to_kind(Kind::Int64))
}

fn load_classes(path: &Path, features: u64, device: Device) -> Result<Dataset> {
    let mut tensors = Tensor::read_safetensors(path)?;
    let mut take = |name: &str| {
        let at = tensors.iter().position(|(n, _)| n == name).ok_or_else(|| {
            Error::InvalidJob(format!("dataset {} has no tensor `{name}`", path.display()))
        })?;
        Ok::<_, Error>(tensors.swap_remove(at).1)
    };
    let x = take("x")?;
    let y = take("y")?;
    if x.kind() != Kind::Float || y.kind() != Kind::Int64 {
        return Err(Error::InvalidJob(
            "dataset `x` must be float32 and `y` int64".into(),
        ));
    }
    if x.dim() != 2 || x.size()[1] as u64 != features || y.size() != [x.size()[0]] {
        return Err(Error::InvalidJob(format!(
            "dataset shapes x {:?}, y {:?} do not fit a model with {features} inputs",
            x.size(),
            y.size()
        )));
    }
    Ok(Dataset::Classes {
        x: x.to_device(device),
        y: y.to_device(device),
    })
}
