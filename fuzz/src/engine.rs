//! A mutation fuzzer on stable Rust: takes a corpus, mutates its inputs (bit flips,
//! byte edits, splices, the target's own tokens, boundary numbers), runs the target on
//! each under `catch_unwind` and a time limit, and keeps inputs whose outcome it has
//! not seen before.

use crate::Target;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

/// The largest input the mutator makes.
const MAX_INPUT_BYTES: usize = 64 * 1024;
/// The most inputs a run keeps to mutate, and the most new ones it reports (and so
/// saves to the repository's corpus).
const MAX_CORPUS: usize = 10_000;
const MAX_DISCOVERIES: usize = 64;
/// An execution slower than this is a finding: a request must not take long to check.
pub const SLOW: Duration = Duration::from_secs(1);

/// How long a run goes on: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub executions: u64,
    pub duration: Duration,
}

/// An input that made the target panic or take longer than [`SLOW`].
#[derive(Debug, Clone)]
pub struct Finding {
    pub input: Vec<u8>,
    pub what: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub executions: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    pub outcomes: usize,
    /// Inputs that found an outcome not seen before (the new corpus entries).
    pub discoveries: Vec<Vec<u8>>,
    pub findings: Vec<Finding>,
    pub slowest: Duration,
}

/// Runs `target` on `input`: its outcome and how long it took, or what went wrong.
pub fn execute(target: &Target, input: &[u8]) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let took = started.elapsed();
    match result {
        Ok(outcome) if took <= SLOW => Ok((outcome, took)),
        Ok(_) => Err(format!("took {took:?}")),
        Err(payload) => Err(panic_message(payload.as_ref())),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = payload.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".into()
    }
}

/// Every file in `dir` (none if it does not exist), in name order.
pub fn load_dir(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|path| path.is_file())
        .filter_map(|path| std::fs::read(path).ok())
        .collect()
}

/// Fuzzes `target` from `seeds` until the budget runs out. Panics inside the target are
/// caught and reported, not printed.
pub fn run(target: &Target, seeds: Vec<Vec<u8>>, budget: Budget, seed: u64) -> Report {
    let quiet = QuietPanics::install();
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let started = Instant::now();
    let mut consider = |input: Vec<u8>, report: &mut Report, corpus: &mut Vec<Vec<u8>>| {
        report.executions += 1;
        match execute(target, &input) {
            Ok((outcome, took)) => {
                report.slowest = report.slowest.max(took);
                if seen.insert(outcome) {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input.clone());
                    } else {
                        let slot = input.len() % MAX_CORPUS;
                        corpus[slot] = input.clone();
                    }
                    if report.discoveries.len() < MAX_DISCOVERIES {
                        report.discoveries.push(input);
                    }
                }
            }
            Err(what) => report.findings.push(Finding { input, what }),
        }
    };
    for input in seeds {
        consider(input, &mut report, &mut corpus);
    }
    // Seeds are not discoveries.
    report.discoveries.clear();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    while report.executions < budget.executions && started.elapsed() < budget.duration {
        let parent = corpus[rng.below(corpus.len())].clone();
        let other = &corpus[rng.below(corpus.len())];
        let mut input = parent;
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, other, target.dictionary, &mut rng);
        }
        input.truncate(MAX_INPUT_BYTES);
        consider(input, &mut report, &mut corpus);
        if report.findings.len() >= 16 {
            break;
        }
    }
    report.elapsed = started.elapsed();
    report.corpus = corpus.len();
    report.outcomes = seen.len();
    drop(quiet);
    report
}

/// Numbers at the edges of the integer types, and some that are not numbers at all.
const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "1",
    "127",
    "128",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "1e309",
    "-0",
    "0.5",
    "NaN",
];
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(input: &mut Vec<u8>, other: &[u8], dictionary: &[&str], rng: &mut Rng) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(10) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next_u64() as u8;
        }
        2 => {
            let i = at(rng, input.len());
            let bytes: Vec<u8> = (0..1 + rng.below(8))
                .map(|_| rng.next_u64() as u8)
                .collect();
            input.splice(i..i, bytes);
        }
        3 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(16)).min(input.len());
            input.drain(start..end);
        }
        4 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(32)).min(input.len());
            let copy = input[start..end].to_vec();
            let i = at(rng, input.len());
            input.splice(i..i, copy);
        }
        5 if !dictionary.is_empty() => {
            let word = dictionary[rng.below(dictionary.len())];
            let i = at(rng, input.len());
            input.splice(i..i, word.bytes());
        }
        6 => replace_number(input, rng),
        7 if !other.is_empty() => {
            let keep = at(rng, input.len());
            let from = rng.below(other.len());
            input.truncate(keep);
            input.extend_from_slice(&other[from..]);
        }
        8 if input.len() >= 8 => {
            let width = [1, 2, 4, 8][rng.below(4)];
            let i = rng.below(input.len() - width + 1);
            let value = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())].to_le_bytes();
            input[i..i + width].copy_from_slice(&value[..width]);
        }
        _ => {
            let keep = at(rng, input.len());
            input.truncate(keep);
        }
    }
}

/// Replaces a run of ASCII digits with a number at some edge.
fn replace_number(input: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..input.len())
        .filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.below(starts.len())];
    let end = (start..input.len())
        .find(|&i| !input[i].is_ascii_digit())
        .unwrap_or(input.len());
    let number = INTERESTING[rng.below(INTERESTING.len())];
    input.splice(start..end, number.bytes());
}

/// xorshift64*: deterministic for a seed, so a run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Silences the panic hook while a run catches panics on purpose; restores it after.
struct QuietPanics;

impl QuietPanics {
    fn install() -> QuietPanics {
        std::panic::set_hook(Box::new(|_| {}));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let _ = std::panic::take_hook();
    }
}
