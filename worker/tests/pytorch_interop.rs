//! Interop with real PyTorch (the pinned torch and torchvision that scripts/setup.sh
//! installs): torchvision's state dicts are Heirloom's, and a ResNet-18 made by PyTorch,
//! fine-tuned by the worker, loads back into torchvision with the same logits.

use heirloom_testing as support;

use heirloom_core::Architecture;
use heirloom_proto::v1 as pb;
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
    support::python_peer(PEER, args)
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
    let logits = predict(arch, None, weights, input, dir);
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

/// The worker's logits for `input`, written to a file in `dir`.
fn predict(
    arch: &str,
    program: Option<&Path>,
    weights: &Path,
    input: &Path,
    dir: &Path,
) -> std::path::PathBuf {
    let logits = dir.join("logits.safetensors");
    let mut command = Command::new(env!("CARGO_BIN_EXE_heirloom-train"));
    command.args(["--device", "cpu", "predict", "--arch", arch]);
    if let Some(program) = program {
        command.arg("--program").arg(program);
    }
    let status = command
        .arg("--weights")
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(&logits)
        .status()
        .expect("run heirloom-train");
    assert!(status.success());
    logits
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
            weights: std::fs::read(&weights).unwrap().into(),
            ..Default::default()
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
                epochs: Some(1),
                batch_size: Some(16),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;

    // The fine-tuned weights, exported as they are stored, load back into torchvision.
    let exported = cluster.export_to(&tuned, dir.path()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchscript_module_is_finetuned_and_used_as_a_frozen_feature_extractor() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (program, weights, data, input) = (
        path("module.pt"),
        path("module.safetensors"),
        path("data.safetensors"),
        path("input.safetensors"),
    );
    python(&[
        "make-script",
        program.to_str().unwrap(),
        weights.to_str().unwrap(),
        data.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    let cluster = Cluster::start().await;
    let architecture: Architecture =
        serde_json::from_str(r#"{"torchscript": {"input_shape": [1, 8, 8], "output_size": 10}}"#)
            .unwrap();
    let imported = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "scripted".into(),
            architecture: Some((&architecture).into()),
            weights: std::fs::read(&weights).unwrap().into(),
            program: std::fs::read(&program).unwrap(),
            ..Default::default()
        })
        .await
        .expect("import the TorchScript module")
        .into_inner()
        .model
        .unwrap();
    let dataset = cluster
        .register_dataset("small-images", std::fs::read(&data).unwrap())
        .await;
    let tuned = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "scripted-tuned".into(),
            dataset_id: dataset.id.clone(),
            parent_id: imported.id.clone(),
            trainable: vec!["5.*".into()],
            hyperparameters: hyperparameters_for(3),
            ..Default::default()
        })
        .await;
    let transferred = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "scripted-transfer".into(),
            dataset_id: dataset.id.clone(),
            parent_id: imported.id.clone(),
            num_classes: 10,
            hyperparameters: hyperparameters_for(3),
            ..Default::default()
        })
        .await;

    // Both results load back into PyTorch with the program and give the worker's logits.
    for model in [&tuned, &transferred] {
        let arch = serde_json::to_string(
            &model
                .architecture
                .as_ref()
                .unwrap()
                .to_core("architecture")
                .unwrap(),
        )
        .unwrap();
        let exported = cluster.export_to(model, dir.path()).await;
        let logits = predict(&arch, Some(&program), &exported, &input, dir.path());
        let report: serde_json::Value = serde_json::from_str(&python(&[
            "compare-script",
            program.to_str().unwrap(),
            exported.to_str().unwrap(),
            input.to_str().unwrap(),
            logits.to_str().unwrap(),
        ]))
        .unwrap();
        let difference = report["max_abs_diff"].as_f64().unwrap();
        eprintln!("{}: max abs logit difference {difference:e}", model.name);
        assert!(difference <= MAX_ABS_DIFF, "{}: {difference}", model.name);
    }

    let tuned_tensors = cluster.tensors_of("scripted-tuned").await;
    assert_eq!(
        tuned_tensors["0.weight"].status(),
        pb::TensorStatus::Inherited
    );
    assert_eq!(
        tuned_tensors["1.weight"].status(),
        pb::TensorStatus::Inherited
    );
    assert_eq!(
        tuned_tensors["5.weight"].status(),
        pb::TensorStatus::Trained
    );
    let transfer_tensors = cluster.tensors_of("scripted-transfer").await;
    let statuses: Vec<(&str, pb::TensorStatus)> = transfer_tensors
        .values()
        .map(|t| (t.name.as_str(), t.status()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("0.bias", pb::TensorStatus::Inherited),
            ("0.weight", pb::TensorStatus::Inherited),
            ("1.bias", pb::TensorStatus::Inherited),
            ("1.weight", pb::TensorStatus::Inherited),
            ("5.bias", pb::TensorStatus::Inherited),
            ("5.weight", pb::TensorStatus::Inherited),
            ("head.bias", pb::TensorStatus::New),
            ("head.weight", pb::TensorStatus::New),
        ]
    );
    // The extractor is an untrained random CNN, so no accuracy is promised; it is scored.
    assert!(transferred.metrics.is_some());
}

fn hyperparameters_for(epochs: u32) -> Option<pb::Hyperparameters> {
    Some(pb::Hyperparameters {
        epochs: Some(epochs),
        batch_size: Some(32),
        learning_rate: Some(0.01),
        ..Default::default()
    })
}
