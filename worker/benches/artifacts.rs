//! Artifact store figures, not a timed test: upload, download and export throughput of a
//! 1 GB model over loopback through the worker's own cache code, and the bytes stored
//! and moved for a chain of ResNet-18 fine-tunes that freeze most of the network, against
//! storing every model whole. Run with `bench/artifacts.sh` (it starts PostgreSQL).

use heirloom_core::{Architecture, Resnet, sha256_hex};
use heirloom_proto::v1 as pb;
use heirloom_testing::{Cluster, Rng, safetensors_file};
use heirloom_worker::cache::Cache;
use std::time::Instant;

const FINETUNES: usize = 5;

fn noise(seed: u64, bytes: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..bytes / 4)
        .flat_map(|_| rng.normal().to_le_bytes())
        .collect()
}

async fn stored_bytes(cluster: &Cluster) -> u64 {
    use futures::TryStreamExt;
    cluster
        .store
        .list(Some(&object_store::path::Path::from("blobs")))
        .try_fold(0, |sum, meta| async move { Ok(sum + meta.size) })
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::start().await;

    // Throughput: a 1.07 GB model (an MLP 8192 → 4 × 8192 → 10) up tensor by tensor,
    // imported from its uploaded tensors, exported as one file, and down into an empty
    // worker cache.
    let big = Architecture::Mlp(heirloom_core::Mlp {
        input_features: 8192,
        hidden: vec![8192; 4],
        num_classes: 10,
    });
    let specs = big.parameters();
    let blobs: Vec<(String, bytes::Bytes)> = specs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bytes = noise(i as u64 + 1, t.shape.iter().product::<usize>() * 4);
            (sha256_hex(&bytes), bytes.into())
        })
        .collect();
    let total = blobs.iter().map(|(_, b)| b.len()).sum::<usize>() as f64;
    let uploader =
        Cache::open(tempfile::tempdir().unwrap().path(), cluster.channel.clone()).unwrap();
    let started = Instant::now();
    let moved = uploader.upload(&blobs).await.unwrap();
    let upload = started.elapsed().as_secs_f64();
    assert_eq!(moved as f64, total);
    let again = uploader.upload(&blobs).await.unwrap();
    let downloader_dir = tempfile::tempdir().unwrap();
    let downloader = Cache::open(downloader_dir.path(), cluster.channel.clone()).unwrap();
    let started = Instant::now();
    for (sha256, _) in &blobs {
        downloader.fetch(sha256).await.unwrap();
    }
    let download = started.elapsed().as_secs_f64();
    let manifest: Vec<pb::ManifestTensor> = specs
        .iter()
        .zip(&blobs)
        .map(|(t, (sha256, _))| pb::ManifestTensor {
            name: t.name.clone(),
            dtype: "f32".into(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            sha256: sha256.clone(),
        })
        .collect();
    let big_model = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "big".into(),
            architecture: Some((&big).into()),
            tensors: manifest,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let started = Instant::now();
    let exported = cluster.export(&big_model).await;
    let export = started.elapsed().as_secs_f64();
    let gb = total / 1e9;
    println!(
        "| upload {gb:.2} GB ({} tensors) | {upload:.2} s | {:.2} GB/s |",
        blobs.len(),
        total / upload / 1e9
    );
    println!("| upload the same again (all stored) | {again} bytes moved | |");
    println!(
        "| download {gb:.2} GB into an empty worker cache | {download:.2} s | {:.2} GB/s |",
        total / download / 1e9
    );
    println!(
        "| export the {:.2} GB model as one safetensors file (assembled, hash-checked) | {export:.2} s | {:.2} GB/s |",
        exported.len() as f64 / 1e9,
        exported.len() as f64 / export / 1e9
    );
    drop(exported);

    // Dedup: a ResNet-18 and a chain of fine-tunes that train only layer4.1 and fc.
    let architecture = Architecture::Resnet(Resnet {
        depth: 18,
        in_channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
    });
    let specs = architecture.parameters();
    let data: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = specs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let count: usize = t.shape.iter().product::<usize>().max(1);
            if t.name.ends_with("running_var") {
                let ones = 1f32.to_le_bytes().repeat(count);
                (
                    t.name.as_str(),
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    ones,
                )
            } else if t.dtype == "i64" {
                (
                    t.name.as_str(),
                    safetensors::Dtype::I64,
                    t.shape.clone(),
                    vec![0; count * 8],
                )
            } else {
                let values: Vec<u8> = noise(100 + i as u64, count * 4)
                    .chunks_exact(4)
                    .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * 0.05).to_le_bytes())
                    .collect();
                (
                    t.name.as_str(),
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    values,
                )
            }
        })
        .collect();
    let weights = safetensors_file(&data);
    let mut rng = Rng::new(9);
    let rows = 32;
    let x: Vec<u8> = (0..rows * 3 * 32 * 32)
        .flat_map(|_| rng.normal().to_le_bytes())
        .collect();
    let y: Vec<u8> = (0..rows)
        .flat_map(|i| ((i % 10) as i64).to_le_bytes())
        .collect();
    let dataset = cluster
        .register_dataset(
            "images",
            safetensors_file(&[
                ("x", safetensors::Dtype::F32, vec![rows, 3 * 32 * 32], x),
                ("y", safetensors::Dtype::I64, vec![rows], y),
            ]),
        )
        .await;
    let before = stored_bytes(&cluster).await;
    let base = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "resnet".into(),
            architecture: Some((&architecture).into()),
            weights: weights.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let after_base = stored_bytes(&cluster).await;
    let mut parent = base.clone();
    for i in 1..=FINETUNES {
        parent = cluster
            .run(pb::JobSpec {
                kind: pb::JobKind::Finetune as i32,
                model_name: format!("resnet-ft{i}"),
                dataset_id: dataset.id.clone(),
                parent_id: parent.id.clone(),
                trainable: vec!["layer4.1.*".into(), "fc.*".into()],
                hyperparameters: Some(pb::Hyperparameters {
                    epochs: Some(1),
                    batch_size: Some(32),
                    holdout_fraction: Some(0.1),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
    }
    let after_chain = stored_bytes(&cluster).await;
    let stored = after_chain - before;
    let whole = base.weights_bytes * (FINETUNES as u64 + 1);
    let per_finetune = (after_chain - after_base) / FINETUNES as u64;
    println!(
        "| ResNet-18 + {FINETUNES} fine-tunes of layer4.1 and fc | stored {:.1} MB | whole models {:.1} MB | {:.1}x less |",
        stored as f64 / 1e6,
        whole as f64 / 1e6,
        whole as f64 / stored as f64
    );
    println!(
        "| bytes uploaded per fine-tune | {:.2} MB of {:.1} MB |",
        per_finetune as f64 / 1e6,
        base.weights_bytes as f64 / 1e6
    );
}
