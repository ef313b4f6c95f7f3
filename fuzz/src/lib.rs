//! Fuzzing for every parser that takes input from outside: architecture specs (JSON, as
//! the CLI takes them, and protobuf, as the API does), hyperparameters, trainable
//! patterns, compose module maps, manifests of uploaded tensors, safetensors files
//! (weights and datasets), `name@version` references, recipe bodies with their merge
//! patches, and the finite check on tensor bytes.
//!
//! Each target takes arbitrary bytes and must neither panic nor take long; it answers
//! with an outcome (`ok …` or the refused field and reason, numbers blanked) that the
//! engine uses as a cheap stand-in for coverage: an input with an outcome not seen
//! before joins the corpus. The engine (`engine.rs`) mutates the corpus kept in
//! `fuzz/corpus/<target>/` on stable Rust, so CI runs it; coverage-guided fuzzing
//! (cargo-fuzz) needs a nightly compiler that CI does not have.

pub mod engine;
pub mod targets;

/// A fuzz target: bytes in, an outcome out. A panic is a bug.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> String,
    /// Tokens the mutator splices in: what this parser's grammar is made of.
    pub dictionary: &'static [&'static str],
}

pub const TARGETS: &[Target] = targets::ALL;

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// Where the corpus and the regressions live: `fuzz/` in the repository.
pub fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}
