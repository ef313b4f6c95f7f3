//! Loading a parent's weights into the worker, not a timed test: the worker's own loader
//! (every tensor blob read from the cache, checked against its hash, made a tensor)
//! against reading the same files raw, page cache warm for both, interleaved. Run with
//! `source scripts/env.sh && cargo bench -p heirloom-worker --bench loading`.

use heirloom_core::sha256_hex;
use heirloom_worker::train::{Blob, Weights};
use std::time::{Duration, Instant};

/// An MLP 8192 → 4 × 8192 → 10 in f32: 1.07 GB in 10 tensors.
const WIDTH: usize = 8192;
const LAYERS: usize = 4;
const ROUNDS: usize = 3;

fn main() {
    heirloom_worker::train::set_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let mut blobs = Vec::new();
    let mut shapes = vec![("hidden.0.weight".to_string(), vec![WIDTH, WIDTH])];
    shapes.push(("hidden.0.bias".into(), vec![WIDTH]));
    for layer in 1..LAYERS {
        shapes.push((format!("hidden.{layer}.weight"), vec![WIDTH, WIDTH]));
        shapes.push((format!("hidden.{layer}.bias"), vec![WIDTH]));
    }
    shapes.push(("fc.weight".into(), vec![10, WIDTH]));
    shapes.push(("fc.bias".into(), vec![10]));
    let mut total = 0u64;
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        let elements: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..elements)
            .flat_map(|j| ((i * 31 + j) as f32 * 1e-6).to_le_bytes())
            .collect();
        let sha256 = sha256_hex(&bytes);
        let path = dir.path().join(&sha256);
        std::fs::write(&path, &bytes).unwrap();
        total += bytes.len() as u64;
        blobs.push(Blob {
            name,
            dtype: "f32".into(),
            shape: shape.iter().map(|&d| d as i64).collect(),
            sha256,
            path,
        });
    }
    let weights = Weights::Blobs(blobs.clone());
    let gb = total as f64 / 1e9;
    println!(
        "{} tensors, {gb:.2} GB, CPU, 1 intra-op thread",
        blobs.len()
    );
    let mut raw = Vec::new();
    let mut loaded = Vec::new();
    for round in 0..=ROUNDS {
        let started = Instant::now();
        let mut read = 0usize;
        for blob in &blobs {
            read += std::hint::black_box(std::fs::read(&blob.path).unwrap()).len();
        }
        let raw_time = started.elapsed();
        assert_eq!(read as u64, total);
        let started = Instant::now();
        let tensors = std::hint::black_box(weights.load().unwrap());
        let load_time = started.elapsed();
        assert_eq!(tensors.len(), blobs.len());
        drop(tensors);
        // Round 0 warms the page cache.
        if round > 0 {
            raw.push(raw_time);
            loaded.push(load_time);
        }
    }
    let best = |times: &[Duration]| times.iter().min().copied().unwrap();
    let rate = |time: Duration| gb / time.as_secs_f64();
    println!(
        "raw read of the blobs:  best {:.3} s  {:.2} GB/s",
        best(&raw).as_secs_f64(),
        rate(best(&raw))
    );
    println!(
        "the worker's loader:    best {:.3} s  {:.2} GB/s  ({:.2}× the raw read's time)",
        best(&loaded).as_secs_f64(),
        rate(best(&loaded)),
        best(&loaded).as_secs_f64() / best(&raw).as_secs_f64()
    );
}
