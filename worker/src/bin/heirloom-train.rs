//! Runs the worker's training code on this machine without a coordinator: for checking a
//! device, timing training against PyTorch, comparing outputs with PyTorch, or training
//! offline.

use clap::{Parser, Subcommand};
use heirloom_core::{
    Architecture, HyperparameterInput, Hyperparameters, Optimizer, Precision, TrainablePatterns,
    plan_finetune, plan_scratch, plan_transfer,
};
use heirloom_worker::train::collectives::{ProcessGroup, Rendezvous};
use heirloom_worker::train::{self, DataSource, TokenShardRef, TokenSource, TrainingJob, Weights};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "heirloom-train",
    version,
    about = "The worker's training code, run locally"
)]
struct Args {
    #[arg(long, default_value = "auto", global = true)]
    device: String,
    #[arg(long, default_value_t = 1, global = true)]
    threads: i32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one job and print its metrics as one JSON line.
    Fit {
        /// The architecture as JSON.
        #[arg(long)]
        arch: String,
        /// A dataset file (safetensors with `x` and `y`).
        #[arg(long, required_unless_present = "shards")]
        dataset: Option<PathBuf>,
        /// A language model's token shards instead, in order (safetensors with `tokens`).
        #[arg(long, num_args = 1.., conflicts_with = "dataset")]
        shards: Vec<PathBuf>,
        /// The token shards' padding token.
        #[arg(long, requires = "shards")]
        pad_token_id: Option<u32>,
        /// Where to write the weights.
        #[arg(long)]
        out: PathBuf,
        /// A parent's weights: fine-tune it (with --trainable) or, with --transfer, transfer it.
        #[arg(long)]
        parent: Option<PathBuf>,
        #[arg(long)]
        trainable: Vec<String>,
        #[arg(long)]
        transfer: bool,
        /// Default 10.
        #[arg(long)]
        epochs: Option<u32>,
        /// Default 64.
        #[arg(long)]
        batch_size: Option<u32>,
        /// Default 0.001 (adam).
        #[arg(long)]
        learning_rate: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// fp32, bf16, bf16-mixed or fp16-mixed (language models).
        #[arg(long, default_value = "fp32", value_parser = parse_precision)]
        precision: Precision,
        /// Train as rank R of --world-size data-parallel ranks (PyTorch's c10d, Gloo).
        #[arg(long, requires = "world_size")]
        rank: Option<usize>,
        #[arg(long, requires = "rank")]
        world_size: Option<usize>,
        /// Where rank 0 hosts the ranks' store (127.0.0.1:PORT).
        #[arg(long, default_value = "127.0.0.1:29500")]
        store: String,
    },
    /// Time all-reduces (sum) of float buffers of these sizes as rank --rank of
    /// --world-size, through the worker's c10d layer; one JSON line per size.
    AllReduce {
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world_size: usize,
        #[arg(long, default_value = "127.0.0.1:29500")]
        store: String,
        /// Buffer sizes in bytes.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "4096,1048576,16777216,104857600"
        )]
        bytes: Vec<usize>,
        /// Timed all-reduces per size, after one untimed.
        #[arg(long, default_value_t = 5)]
        repeats: u32,
    },
    /// Write a model's logits (evaluation mode) for the rows of `x` in --input.
    Predict {
        #[arg(long)]
        arch: String,
        /// For a torchscript architecture: the program file.
        #[arg(long)]
        program: Option<PathBuf>,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_precision(text: &str) -> Result<Precision, String> {
    Precision::parse(text)
        .ok_or_else(|| format!("{text:?}: use fp32, bf16, bf16-mixed or fp16-mixed"))
}

/// Token shards on this machine: each named by its path, its sequences counted from its
/// safetensors header alone (the tokens are read when training reaches the shard).
fn local_shards(paths: &[PathBuf], pad_token_id: Option<u32>) -> anyhow::Result<DataSource> {
    use std::io::Read;
    let mut shards = Vec::new();
    for path in paths {
        let mut file = std::fs::File::open(path)?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)?;
        let mut header = vec![0u8; usize::try_from(u64::from_le_bytes(length))?];
        file.read_exact(&mut header)?;
        let header: serde_json::Value = serde_json::from_slice(&header)?;
        let sequences = header["tokens"]["shape"][0].as_u64().ok_or_else(|| {
            anyhow::anyhow!("{} has no `tokens` [sequences, length]", path.display())
        })?;
        shards.push(TokenShardRef {
            sha256: path.display().to_string(),
            sequences,
        });
    }
    Ok(DataSource::Tokens(TokenSource {
        shards,
        pad_token_id,
        fetch: std::sync::Arc::new(|path: &str| Ok(PathBuf::from(path))),
    }))
}

/// The most memory this process has held resident (Linux's VmHWM), if the system says.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn architecture(json: &str) -> anyhow::Result<Architecture> {
    let architecture: Architecture = serde_json::from_str(json)?;
    architecture.validate("--arch")?;
    Ok(architecture)
}

fn rendezvous(store: &str, rank: usize, world_size: usize) -> anyhow::Result<Rendezvous> {
    let (host, port) = store
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--store {store}: give HOST:PORT"))?;
    Ok(Rendezvous {
        store_host: host.to_string(),
        store_port: port.parse()?,
        prefix: "heirloom-train".into(),
        rank,
        world_size,
        planned_world_size: world_size,
        bind_host: host.to_string(),
        timeout: std::time::Duration::from_secs(30),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    train::set_threads(args.threads);
    let device = train::pick_device(&args.device)?;
    match args.command {
        Command::AllReduce {
            rank,
            world_size,
            store,
            bytes,
            repeats,
        } => {
            let group = ProcessGroup::join(&rendezvous(&store, rank, world_size)?)?;
            for size in bytes {
                let mut data = vec![1.0f32; size / 4];
                group.all_reduce_sum(&mut data)?; // the first pays for connections
                let started = std::time::Instant::now();
                for _ in 0..repeats {
                    group.all_reduce_sum(&mut data)?;
                }
                let seconds = started.elapsed().as_secs_f64() / f64::from(repeats);
                println!(
                    "{}",
                    serde_json::json!({"bytes": size, "milliseconds": seconds * 1e3,
                                       "gigabytes_per_second": size as f64 / seconds / 1e9})
                );
            }
        }
        Command::Predict {
            arch,
            program,
            weights,
            input,
            out,
        } => {
            train::predict(
                &architecture(&arch)?,
                program.as_deref(),
                &weights,
                &input,
                &out,
                device,
            )?;
        }
        Command::Fit {
            arch,
            dataset,
            shards,
            pad_token_id,
            out,
            parent,
            trainable,
            transfer,
            epochs,
            batch_size,
            learning_rate,
            seed,
            precision,
            rank,
            world_size,
            store,
        } => {
            let architecture = architecture(&arch)?;
            let input = HyperparameterInput {
                epochs,
                batch_size,
                learning_rate,
                optimizer: Some(Optimizer::Adam),
                seed,
                holdout_fraction: None,
                precision: Some(precision),
            };
            let hyperparameters = Hyperparameters::resolve("hyperparameters", &input)?;
            let (tensors, parents) = match parent {
                None => (plan_scratch(&architecture), vec![]),
                Some(parent) if transfer => (
                    plan_transfer("--transfer", &architecture, 0)?,
                    vec![Weights::File(parent)],
                ),
                Some(parent) => {
                    let patterns = TrainablePatterns::from_checked(trainable);
                    (
                        plan_finetune(&architecture, &patterns),
                        vec![Weights::File(parent)],
                    )
                }
            };
            let job = TrainingJob {
                architecture,
                hyperparameters,
                tensors,
                parents,
                adjustment: None,
                dataset: Some(match dataset {
                    Some(path) => DataSource::Classes(path),
                    None => local_shards(&shards, pad_token_id)?,
                }),
                program: None,
                resume: None,
                checkpoint_every: 0,
                ranks: match rank.zip(world_size) {
                    None => None,
                    Some((rank, world_size)) => Some(rendezvous(&store, rank, world_size)?),
                },
            };
            let started = std::time::Instant::now();
            let metrics = train::train(
                &job,
                device,
                &out,
                &train::Control::default(),
                |_| {},
                |_, _| {},
            )?
            .expect("a job with a dataset is scored");
            println!(
                "{}",
                serde_json::json!({
                    "device": format!("{device:?}"),
                    "holdout_accuracy": metrics.holdout_accuracy,
                    "final_loss": metrics.final_loss,
                    "steps": metrics.steps,
                    "steps_per_second": metrics.steps_per_second,
                    "holdout_loss": metrics.holdout_loss,
                    "seconds": started.elapsed().as_secs_f64(),
                    "peak_rss_bytes": peak_rss_bytes(),
                })
            );
        }
    }
    Ok(())
}
