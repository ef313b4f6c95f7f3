//! Every refused request gets a precise status naming what to fix, and writes nothing.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, hyperparameters, mlp, refused};
use tonic::Code;

fn train(dataset_id: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: "child".into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![16], 5)),
        hyperparameters: hyperparameters(1, None),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_the_field_named() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let weights = support::mlp_weights(64, 16, 5, [0.0; 4]);
    let root = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "root".into(),
            architecture: Some(mlp(64, vec![16], 5)),
            weights: weights.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let finetune = |parent_id: &str| pb::JobSpec {
        kind: pb::JobKind::Finetune as i32,
        parent_id: parent_id.into(),
        ..train(&dataset.id)
    };
    let no_architecture = pb::JobSpec {
        architecture: None,
        ..finetune(&root.id)
    };

    let unknown = uuid::Uuid::new_v4().to_string();
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            architecture: None,
            ..finetune(&unknown)
        }),
        Code::NotFound,
        &unknown,
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(train(&unknown)),
        Code::NotFound,
        &unknown,
    )
    .await;
    // A reference that could be a name is looked up as one; one that cannot is refused.
    refused(
        &cluster,
        cluster.try_submit(train("not-an-id")),
        Code::NotFound,
        "spec.dataset_id: no dataset is named \"not-an-id\"",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(train("not an id")),
        Code::InvalidArgument,
        "spec.dataset_id",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            architecture: Some(mlp(64, vec![16, 0], 5)),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.architecture.mlp.hidden[1]",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            architecture: Some(pb::Architecture { kind: None }),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.architecture",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            architecture: None,
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.architecture",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            hyperparameters: hyperparameters(1, -0.5),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.hyperparameters.learning_rate",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            hyperparameters: Some(pb::Hyperparameters {
                holdout_fraction: Some(0.9),
                ..Default::default()
            }),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.hyperparameters.holdout_fraction",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            kind: 0,
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.kind",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            model_name: "has space".into(),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.model_name",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            model_name: "root".into(),
            ..train(&dataset.id)
        }),
        Code::AlreadyExists,
        "root",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            parent_id: root.id.clone(),
            ..train(&dataset.id)
        }),
        Code::InvalidArgument,
        "spec.parent_id",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            architecture: Some(mlp(32, vec![16], 5)),
            ..train(&dataset.id)
        }),
        Code::FailedPrecondition,
        "64 features",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            trainable: vec!["layer4.*".into()],
            ..no_architecture.clone()
        }),
        Code::InvalidArgument,
        "spec.trainable[0]",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            ..no_architecture.clone()
        }),
        Code::InvalidArgument,
        "spec.num_classes",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            num_classes: 2,
            ..no_architecture.clone()
        }),
        Code::FailedPrecondition,
        "the new head has 2 outputs",
    )
    .await;
    // A second model of another shape: interpolating with it, or composing from it where
    // the shapes differ, is refused before anything runs.
    let narrow = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "narrow".into(),
            architecture: Some(mlp(64, vec![4], 5)),
            weights: support::mlp_weights(64, 4, 5, [0.0; 4]).into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let direct = pb::JobSpec {
        kind: pb::JobKind::Direct as i32,
        model_name: "mix".into(),
        parent_id: root.id.clone(),
        ..Default::default()
    };
    let interpolate_with = |second: &pb::Model| pb::JobSpec {
        second_parent_id: second.id.clone(),
        alpha: 0.5,
        ..direct.clone()
    };
    refused(
        &cluster,
        cluster.try_submit(interpolate_with(&narrow)),
        Code::InvalidArgument,
        "architectures differ",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            alpha: 0.5,
            ..direct.clone()
        }),
        Code::InvalidArgument,
        "spec.alpha",
    )
    .await;
    let compose = |source: &pb::Model, trainable: Vec<String>| pb::JobSpec {
        kind: pb::JobKind::Compose as i32,
        model_name: "composed".into(),
        dataset_id: dataset.id.clone(),
        architecture: Some(mlp(64, vec![16], 5)),
        modules: vec![pb::ModuleMapping {
            target_prefix: "hidden.0".into(),
            parent_id: source.id.clone(),
            source_prefix: "hidden.0".into(),
        }],
        trainable,
        ..Default::default()
    };
    let head = vec!["fc.*".to_string()];
    refused(
        &cluster,
        cluster.try_submit(compose(&narrow, head)),
        Code::InvalidArgument,
        "shape mismatch",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(compose(&root, vec![])),
        Code::InvalidArgument,
        "no module provides fc.weight",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            num_classes: 5,
            unfreeze_blocks: 3,
            ..no_architecture.clone()
        }),
        Code::InvalidArgument,
        "spec.unfreeze_blocks",
    )
    .await;

    // A queued job holds its model's name against imports too.
    let queued = cluster
        .try_submit(pb::JobSpec {
            model_name: "reserved".into(),
            ..train(&dataset.id)
        })
        .await
        .unwrap();
    let mut models = cluster.models();
    let import_reserved = models.import_model(pb::ImportModelRequest {
        name: "reserved".into(),
        architecture: Some(mlp(64, vec![16], 5)),
        weights: support::mlp_weights(64, 16, 5, [0.5; 4]).into(),
        ..Default::default()
    });
    refused(&cluster, import_reserved, Code::AlreadyExists, &queued.id).await;

    let mut jobs = cluster.jobs();
    refused(
        &cluster,
        jobs.get_job(pb::GetJobRequest {
            job_id: unknown.clone(),
        }),
        Code::NotFound,
        &unknown,
    )
    .await;
    refused(
        &cluster,
        jobs.cancel_job(pb::CancelJobRequest { job_id: "x".into() }),
        Code::InvalidArgument,
        "job_id",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_imports_and_datasets_are_refused() {
    let cluster = Cluster::coordinator_only().await;
    let mut models = cluster.models();
    let import =
        |architecture: pb::Architecture, weights: Vec<u8>, name: &str| pb::ImportModelRequest {
            name: name.into(),
            architecture: Some(architecture),
            weights: weights.into(),
            ..Default::default()
        };
    let wrong_shape = support::mlp_weights(32, 16, 5, [0.0; 4]);
    refused(
        &cluster,
        models.import_model(import(mlp(64, vec![16], 5), wrong_shape, "m")),
        Code::InvalidArgument,
        "hidden.0.weight",
    )
    .await;
    refused(
        &cluster,
        models.import_model(import(
            mlp(64, vec![16], 5),
            b"not safetensors".to_vec(),
            "m",
        )),
        Code::InvalidArgument,
        "weights: not a safetensors file",
    )
    .await;
    refused(
        &cluster,
        models.get_model(pb::GetModelRequest {
            model: "nobody".into(),
        }),
        Code::NotFound,
        "nobody",
    )
    .await;

    let script: pb::Architecture = (&serde_json::from_str::<heirloom_core::Architecture>(
        r#"{"torchscript": {"input_shape": [64], "output_size": 5}}"#,
    )
    .unwrap())
        .into();
    let weights = blobs(0..2, 5, 1); // any safetensors file
    for (architecture, program, fragment) in [
        (
            script.clone(),
            Vec::new(),
            "program: a torchscript architecture needs",
        ),
        (script, b"not a zip".to_vec(), "not a TorchScript archive"),
        (
            mlp(64, vec![16], 5),
            b"PK\x03\x04".to_vec(),
            "only a torchscript architecture",
        ),
    ] {
        let request = pb::ImportModelRequest {
            name: "scripted".into(),
            architecture: Some(architecture),
            weights: weights.clone().into(),
            program,
            ..Default::default()
        };
        refused(
            &cluster,
            models.import_model(request),
            Code::InvalidArgument,
            fragment,
        )
        .await;
    }

    let mut datasets = cluster.datasets();
    let content = blobs(0..2, 5, 1);
    refused(
        &cluster,
        datasets.register_dataset(pb::RegisterDatasetRequest {
            name: "d".into(),
            content: content.clone().into(),
            sha256: "0".repeat(64),
            tokens: None,
        }),
        Code::InvalidArgument,
        "sha256",
    )
    .await;
    let no_labels =
        support::safetensors_file(&[("x", safetensors::Dtype::F32, vec![2, 2], vec![0; 16])]);
    refused(
        &cluster,
        datasets.register_dataset(pb::RegisterDatasetRequest {
            name: "d".into(),
            sha256: heirloom_core::sha256_hex(&no_labels),
            content: no_labels.into(),
            tokens: None,
        }),
        Code::InvalidArgument,
        "content: has no tensor `y`",
    )
    .await;
    cluster.register_dataset("d", content.clone()).await;
    refused(
        &cluster,
        datasets.register_dataset(pb::RegisterDatasetRequest {
            name: "d".into(),
            sha256: heirloom_core::sha256_hex(&content),
            content: content.into(),
            tokens: None,
        }),
        Code::AlreadyExists,
        "\"d\"",
    )
    .await;
}
