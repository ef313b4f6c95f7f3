//! Data-parallel training through PyTorch's collectives: the same job trained on two and
//! on three ranks — separate `heirloom-train` processes meeting at rank 0's c10d store,
//! each taking its share of every batch and summing gradients over Gloo — ends with the
//! weights one process gets with the same global batch, seed and data order.

use heirloom_testing as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

const ARCHITECTURE: &str = r#"{"mlp":{"input_features":64,"hidden":[32],"num_classes":5}}"#;

/// `heirloom-train fit` of the test's job, with `extra` flags, writing `out`.
fn fit(dataset: &Path, out: &Path, extra: &[String]) -> std::process::Child {
    Command::new(support::workspace_binary("heirloom-train"))
        .args(["--threads", "1", "fit", "--arch", ARCHITECTURE])
        .arg("--dataset")
        .arg(dataset)
        .arg("--out")
        .arg(out)
        .args(["--epochs", "3", "--batch-size", "32", "--seed", "7"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("run heirloom-train")
}

fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(name, view)| (name, support::floats(view.data())))
        .collect()
}

fn largest_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(name, values)| values.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn two_and_three_ranks_end_where_one_process_does() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("blobs.safetensors");
    // 200 rows, 160 of them trained on: five batches of 32 an epoch, split 16/16 on two
    // ranks and 11/11/10 on three.
    std::fs::write(&dataset, support::blobs(0..5, 40, 1)).unwrap();
    let single = dir.path().join("single.safetensors");
    assert!(fit(&dataset, &single, &[]).wait().unwrap().success());
    let alone = weights(&single);

    for world_size in [2usize, 3] {
        let store = format!("127.0.0.1:{}", support::free_port());
        let ranks: Vec<_> = (0..world_size)
            .map(|rank| {
                let out = dir
                    .path()
                    .join(format!("w{world_size}-rank{rank}.safetensors"));
                let flags = [
                    "--rank".to_string(),
                    rank.to_string(),
                    "--world-size".into(),
                    world_size.to_string(),
                    "--store".into(),
                    store.clone(),
                ];
                (fit(&dataset, &out, &flags), out)
            })
            .collect();
        for (mut process, out) in ranks {
            assert!(process.wait().unwrap().success(), "{}", out.display());
            let difference = largest_difference(&alone, &weights(&out));
            println!(
                "{world_size} ranks, {}: max |Δ| = {difference:e}",
                out.display()
            );
            assert!(difference < 1e-5, "{world_size} ranks: {difference}");
        }
    }
}

#[test]
fn a_rank_killed_mid_training_ends_the_others_with_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("blobs.safetensors");
    std::fs::write(&dataset, support::blobs(0..5, 400, 1)).unwrap();
    let store = format!("127.0.0.1:{}", support::free_port());
    let mut ranks: Vec<_> = (0..2)
        .map(|rank| {
            let flags = [
                "--rank".to_string(),
                rank.to_string(),
                "--world-size".into(),
                "2".into(),
                "--store".into(),
                store.clone(),
                // Long enough to be training when the kill comes.
                "--epochs".into(),
                "1000".into(),
            ];
            let out = dir.path().join(format!("rank{rank}.safetensors"));
            Command::new(support::workspace_binary("heirloom-train"))
                .args(["--threads", "1", "fit", "--arch", ARCHITECTURE])
                .arg("--dataset")
                .arg(&dataset)
                .arg("--out")
                .arg(&out)
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run heirloom-train")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(ranks[0].try_wait().unwrap().is_none(), "rank 0 is training");
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed = std::time::Instant::now();
    let survivor = ranks.remove(0).wait_with_output().unwrap();
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&survivor.stderr);
    println!("rank 0 ended {took:?} after rank 1 was killed");
    assert!(!survivor.status.success(), "rank 0 finished alone");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert!(
        stderr.contains("Connection reset") || stderr.contains("Connection closed"),
        "{stderr}"
    );
}
