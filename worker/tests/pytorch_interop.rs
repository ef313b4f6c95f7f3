//! Interop with real PyTorch (the pinned torch and torchvision that scripts/setup.sh
//! installs): torchvision's state dicts are Heirloom's, and a ResNet-18 made by PyTorch,
//! fine-tuned by the worker, loads back into torchvision with the same logits.

mod support;

use heirloom_proto::v1 as pb;
use heirloom_spec::Architecture;
use std::path::Path;
use std::process::Command;
use support::Cluster;

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/torchvision_peer.py"
);
/// What the issue allows between PyTorch's logits and the worker's.
const MAX_ABS_DIFF: f64 = 1e-4;

fn python(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(PEER)
        .args(args)
        .output()
        .expect("python3 runs (scripts/test.sh puts the PyTorch virtualenv first on PATH)");
    assert!(
        output.status.success(),
        "python3 {PEER} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn state_dicts_match_torchvision() {
    for arch in [
        r#"{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}"#,
        r#"{"resnet": {"depth": 34, "in_channels": 3, "height": 64, "width": 64, "num_classes": 7}}"#,
        r#"{"vgg": {"depth": 11, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}"#,
        r#"{"vgg": {"depth": 16, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}"#,
        r#"{"vgg": {"depth": 11, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10, "batch_norm": true}}"#,
    ] {
        let torchvision: Vec<(String, Vec<usize>, String)> =
            serde_json::from_str(&python(&["state-dict", arch])).unwrap();
        let torchvision: Vec<(String, Vec<usize>, String)> = torchvision
            .into_iter()
            .map(|(name, shape, dtype)| {
                (
                    name,
                    shape,
                    dtype
                        .replace("torch.float32", "f32")
                        .replace("torch.int64", "i64"),
                )
            })
            .collect();
        let architecture: Architecture = serde_json::from_str(arch).unwrap();
        let ours: Vec<(String, Vec<usize>, String)> = architecture
            .parameters()
            .into_iter()
            .map(|t| (t.name, t.shape, t.dtype.to_string()))
            .collect();
        assert_eq!(ours, torchvision, "{arch}");
    }
}

/// Runs the worker's forward pass (`heirloom-train predict`) and PyTorch's on the same
/// input and returns the max abs difference of their logits.
fn logits_difference(arch: &str, weights: &Path, input: &Path, dir: &Path) -> f64 {
    let logits = dir.join("logits.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_heirloom-train"))
        .args(["--device", "cpu", "predict", "--arch", arch])
        .arg("--weights")
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(&logits)
        .status()
        .expect("run heirloom-train");
    assert!(status.success());
    let report: serde_json::Value = serde_json::from_str(&python(&[
        "compare",
        arch,
        weights.to_str().unwrap(),
        input.to_str().unwrap(),
        logits.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["shape"], serde_json::json!([8, 10]));
    report["max_abs_diff"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnet18_from_pytorch_is_finetuned_and_gives_pytorchs_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (weights, data, input) = (
        dir.path().join("resnet18.safetensors"),
        dir.path().join("data.safetensors"),
        dir.path().join("input.safetensors"),
    );
    python(&[
        "make-resnet",
        weights.to_str().unwrap(),
        data.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    let arch = r#"{"resnet": {"depth": 18, "in_channels": 3, "height": 32, "width": 32, "num_classes": 10}}"#;
    let imported_difference = logits_difference(arch, &weights, &input, dir.path());
    eprintln!("resnet18 as PyTorch saved it: max abs logit difference {imported_difference:e}");
    assert!(imported_difference <= MAX_ABS_DIFF, "{imported_difference}");

    let cluster = Cluster::start().await;
    let architecture: Architecture = serde_json::from_str(arch).unwrap();
    let parent = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "resnet".into(),
            architecture: Some((&architecture).into()),
            weights: std::fs::read(&weights).unwrap(),
        })
        .await
        .expect("import the PyTorch ResNet-18")
        .into_inner()
        .model
        .unwrap();
    let dataset = cluster
        .register_dataset("images", std::fs::read(&data).unwrap())
        .await;
    let tuned = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "resnet-tuned".into(),
            dataset_id: dataset.id,
            parent_id: parent.id.clone(),
            trainable: vec!["layer4.*".into(), "fc.*".into()],
            hyperparameters: Some(pb::Hyperparameters {
                epochs: 1,
                batch_size: 16,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;

    // The fine-tuned weights, exported as they are stored, load back into torchvision.
    let exported = cluster.artifact(&format!("models/{}.safetensors", tuned.weights_sha256));
    let tuned_difference = logits_difference(arch, &exported, &input, dir.path());
    eprintln!("resnet18 fine-tuned by the worker: max abs logit difference {tuned_difference:e}");
    assert!(tuned_difference <= MAX_ABS_DIFF, "{tuned_difference}");

    let parent_tensors = cluster.tensors_of("resnet").await;
    let tensors = cluster.tensors_of("resnet-tuned").await;
    let check = |name: &str, status: pb::TensorStatus, same_bytes: bool| {
        let tensor = &tensors[name];
        assert_eq!(tensor.status(), status, "{name}");
        assert_eq!(tensor.origin_model_name, "resnet", "{name}");
        assert_eq!(
            tensor.sha256 == parent_tensors[name].sha256,
            same_bytes,
            "{name}"
        );
    };
    check("conv1.weight", pb::TensorStatus::Inherited, true);
    check(
        "layer1.0.bn1.running_mean",
        pb::TensorStatus::Inherited,
        true,
    );
    check(
        "layer3.1.bn2.num_batches_tracked",
        pb::TensorStatus::Inherited,
        true,
    );
    check("layer4.0.conv1.weight", pb::TensorStatus::Trained, false);
    check(
        "layer4.0.bn1.running_mean",
        pb::TensorStatus::Trained,
        false,
    );
    check(
        "layer4.1.bn2.num_batches_tracked",
        pb::TensorStatus::Trained,
        false,
    );
    check("fc.weight", pb::TensorStatus::Trained, false);
}
