//! Trains one job on this machine without a coordinator, through the same code the
//! worker runs: for checking a device, timing training, or training offline.
//! Prints the outcome as one JSON line.

use clap::Parser;
use heirloom_spec::{
    Architecture, Hyperparameters, Optimizer, TrainablePatterns, plan_finetune, plan_scratch,
    plan_transfer,
};
use heirloom_worker::train::{self, TrainingJob};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
#[command(
    name = "heirloom-train",
    version,
    about = "Train one job locally, as a worker would"
)]
struct Args {
    /// The architecture as JSON.
    #[arg(long)]
    arch: String,
    /// A dataset file (safetensors with `x` and `y`).
    #[arg(long)]
    dataset: PathBuf,
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
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    #[arg(long, default_value_t = 0.001)]
    learning_rate: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let architecture: Architecture = serde_json::from_str(&args.arch)?;
    architecture.validate("--arch")?;
    let hyperparameters = Hyperparameters::resolve(
        "hyperparameters",
        args.epochs,
        args.batch_size,
        args.learning_rate,
        Some(Optimizer::Adam),
        args.seed,
        0.0,
    )?;
    let (tensors, parents) = match args.parent {
        None => (plan_scratch(&architecture), vec![]),
        Some(parent) if args.transfer => {
            (plan_transfer("--transfer", &architecture, 0)?, vec![parent])
        }
        Some(parent) => {
            let patterns = TrainablePatterns::from_checked(args.trainable);
            (plan_finetune(&architecture, &patterns), vec![parent])
        }
    };
    train::set_threads(args.threads);
    let device = train::pick_device(&args.device)?;
    let job = TrainingJob {
        architecture,
        hyperparameters,
        tensors,
        parents,
        adjustment: None,
        dataset: Some(args.dataset),
    };
    let started = std::time::Instant::now();
    let outcome = train::train(
        &job,
        device,
        &args.out,
        &Arc::new(AtomicBool::new(false)),
        |_| {},
    )?
    .expect("a job with a dataset is scored");
    println!(
        "{}",
        serde_json::json!({
            "device": format!("{device:?}"),
            "holdout_accuracy": outcome.holdout_accuracy,
            "final_loss": outcome.final_loss,
            "steps": outcome.steps,
            "steps_per_second": outcome.steps_per_second,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
