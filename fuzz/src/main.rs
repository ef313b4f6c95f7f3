//! `heirloom-fuzz`: runs the fuzz targets from their corpus for a while and reports
//! executions, outcomes and findings. `scripts/fuzz.sh` is the long run; CI runs a short
//! one as a test (`fuzz/tests/fuzz.rs`).

use clap::Parser;
use heirloom_fuzz::engine::{self, Budget};
use heirloom_fuzz::{TARGETS, fuzz_dir, target, targets};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "heirloom-fuzz",
    about = "Fuzz every parser that takes outside input"
)]
struct Args {
    /// Targets to run (default: all).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// At most this many executions per target.
    #[arg(long, default_value_t = u64::MAX)]
    executions: u64,
    /// The random seed (a run is repeatable with the same seed and corpus).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Add the inputs that found new outcomes to fuzz/corpus/<target>/.
    #[arg(long)]
    save_corpus: bool,
}

fn main() {
    let args = Args::parse();
    let chosen: Vec<_> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|name| {
                target(name).unwrap_or_else(|| {
                    let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                    eprintln!("no target {name:?}; the targets are {}", names.join(", "));
                    std::process::exit(2)
                })
            })
            .collect()
    };
    let budget = Budget {
        executions: args.executions,
        duration: Duration::from_secs(args.seconds),
    };
    println!(
        "{:<20} {:>12} {:>10} {:>8} {:>8} {:>9} {:>10}",
        "target", "executions", "per sec", "corpus", "outcomes", "findings", "slowest"
    );
    let mut findings = 0;
    for target in chosen {
        let corpus_dir = fuzz_dir().join("corpus").join(target.name);
        let mut seeds = targets::seeds(target.name);
        seeds.extend(engine::load_dir(&corpus_dir));
        seeds.extend(engine::load_dir(
            &fuzz_dir().join("regressions").join(target.name),
        ));
        let report = engine::run(target, seeds, budget, args.seed);
        println!(
            "{:<20} {:>12} {:>10.0} {:>8} {:>8} {:>9} {:>10.1?}",
            target.name,
            report.executions,
            report.executions as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.corpus,
            report.outcomes,
            report.findings.len(),
            report.slowest
        );
        if args.save_corpus {
            save(&corpus_dir, &report.discoveries);
        }
        let crash_dir = fuzz_dir().join("crashes").join(target.name);
        for finding in &report.findings {
            let path = save(&crash_dir, std::slice::from_ref(&finding.input));
            println!("  FINDING {}: {}", path.display(), finding.what);
        }
        findings += report.findings.len();
    }
    if findings > 0 {
        std::process::exit(1);
    }
}

/// Writes each input to `dir` under its hash; returns the directory.
fn save(dir: &std::path::Path, inputs: &[Vec<u8>]) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    let mut last = dir.to_path_buf();
    for input in inputs {
        last = dir.join(&hex::encode(Sha256::digest(input))[..16]);
        std::fs::write(&last, input).expect("write an input");
    }
    last
}
