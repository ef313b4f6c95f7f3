//! A train → transfer → fine-tune chain through a real coordinator, PostgreSQL and
//! worker process, checked against the database rows and the weight files.

use heirloom_testing as support;

use heirloom_core::sha256_hex;
use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, hyperparameters, mlp};
use uuid::Uuid;

fn state(event: &pb::JobEvent) -> Option<pb::JobState> {
    match event.event {
        Some(pb::job_event::Event::State(state)) => pb::JobState::try_from(state).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_transfer_finetune_chain_records_exact_lineage() {
    let cluster = Cluster::start().await;
    let first_five = cluster
        .register_dataset("blobs-0-4", blobs(0..5, 120, 1))
        .await;
    let last_five = cluster
        .register_dataset("blobs-5-9", blobs(5..10, 120, 2))
        .await;

    let base_job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "base".into(),
            dataset_id: first_five.id.clone(),
            architecture: Some(mlp(64, vec![64], 5)),
            hyperparameters: hyperparameters(20, None),
            ..Default::default()
        })
        .await;
    let (events, base_job) = cluster.wait(&base_job.id).await;
    assert_eq!(
        base_job.state(),
        pb::JobState::Succeeded,
        "{}",
        base_job.error
    );
    let states: Vec<pb::JobState> = events.iter().filter_map(state).collect();
    assert_eq!(
        states,
        [
            pb::JobState::Queued,
            pb::JobState::Leased,
            pb::JobState::Running,
            pb::JobState::Succeeded
        ]
    );
    let progress: Vec<&pb::Progress> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(pb::job_event::Event::Progress(progress)) => Some(progress),
            _ => None,
        })
        .collect();
    assert!(
        progress.iter().any(|p| p.epoch == 20 && p.loss > 0.0),
        "the last epoch is reported"
    );

    let transfer_job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "transfer".into(),
            dataset_id: last_five.id.clone(),
            parent_id: base_job.model_id.clone(),
            num_classes: 5,
            hyperparameters: hyperparameters(30, 0.01),
            ..Default::default()
        })
        .await;
    let (_, transfer_job) = cluster.wait(&transfer_job.id).await;
    assert_eq!(
        transfer_job.state(),
        pb::JobState::Succeeded,
        "{}",
        transfer_job.error
    );

    let finetune_job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "finetune".into(),
            dataset_id: last_five.id.clone(),
            parent_id: transfer_job.model_id.clone(),
            trainable: vec!["hidden.0.bias".into(), "fc.*".into()],
            hyperparameters: hyperparameters(10, None),
            ..Default::default()
        })
        .await;
    let (_, finetune_job) = cluster.wait(&finetune_job.id).await;
    assert_eq!(
        finetune_job.state(),
        pb::JobState::Succeeded,
        "{}",
        finetune_job.error
    );

    let base = cluster.model("base").await;
    let transfer = cluster.model("transfer").await;
    let finetune = cluster.model("finetune").await;

    // The lineage rows, exactly.
    let id = |text: &str| Uuid::parse_str(text).unwrap();
    let edges: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT child_id, parent_id, relation FROM model_parents ORDER BY relation")
            .fetch_all(&cluster.pool)
            .await
            .unwrap();
    assert_eq!(
        edges,
        [
            (id(&finetune.id), id(&transfer.id), "finetune".to_string()),
            (id(&transfer.id), id(&base.id), "transfer".to_string()),
        ]
    );
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM model_parents WHERE child_id = $1")
            .bind(id(&finetune.id))
            .fetch_one(&cluster.pool)
            .await
            .unwrap();
    assert_eq!(
        details["trainable"],
        serde_json::json!(["hidden.0.bias", "fc.*"])
    );
    assert_eq!(details["hyperparameters"]["epochs"], 10);
    assert_eq!(
        details["hyperparameters"]["batch_size"], 64,
        "defaults are recorded"
    );
    let mut dataset_edges: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT model_id, dataset_id FROM model_datasets")
            .fetch_all(&cluster.pool)
            .await
            .unwrap();
    dataset_edges.sort();
    let mut expected = vec![
        (id(&base.id), id(&first_five.id)),
        (id(&transfer.id), id(&last_five.id)),
        (id(&finetune.id), id(&last_five.id)),
    ];
    expected.sort();
    assert_eq!(dataset_edges, expected);
    let jobs: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, model_id FROM jobs ORDER BY created_at")
            .fetch_all(&cluster.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        [
            ("succeeded".to_string(), Some(id(&base.id))),
            ("succeeded".to_string(), Some(id(&transfer.id))),
            ("succeeded".to_string(), Some(id(&finetune.id))),
        ]
    );

    // Each model names the exact dataset version it trained on.
    let data_edge = |model: &pb::Model| {
        let d = model.dataset.as_ref().expect("a dataset edge");
        (d.name.clone(), d.version, d.sha256.clone(), d.role.clone())
    };
    assert_eq!(
        data_edge(&base),
        (
            "blobs-0-4".to_string(),
            1,
            first_five.sha256.clone(),
            "train".to_string()
        )
    );
    assert_eq!(
        data_edge(&finetune),
        (
            "blobs-5-9".to_string(),
            1,
            last_five.sha256.clone(),
            "train".to_string()
        )
    );

    // Frozen tensors are byte-identical to the parent's; trained ones moved. (Each export
    // is checked against the model's recorded weights hash.)
    let (base_w, transfer_w, finetune_w) = (
        cluster.weights(&base).await,
        cluster.weights(&transfer).await,
        cluster.weights(&finetune).await,
    );
    assert_eq!(transfer_w["hidden.0.weight"], base_w["hidden.0.weight"]);
    assert_eq!(transfer_w["hidden.0.bias"], base_w["hidden.0.bias"]);
    assert_ne!(transfer_w["fc.weight"], base_w["fc.weight"]);
    assert_eq!(finetune_w["hidden.0.weight"], transfer_w["hidden.0.weight"]);
    assert_ne!(finetune_w["hidden.0.bias"], transfer_w["hidden.0.bias"]);
    assert_ne!(finetune_w["fc.weight"], transfer_w["fc.weight"]);

    // The transfer learned the new classes: chance is 0.2.
    let transfer_accuracy = transfer.metrics.as_ref().unwrap().holdout_accuracy;
    assert!(
        transfer_accuracy > 0.6,
        "transfer holdout accuracy {transfer_accuracy}"
    );
    assert!(base.metrics.as_ref().unwrap().holdout_accuracy > 0.8);

    // Lineage over gRPC, both ways.
    let ancestors = cluster
        .models()
        .list_ancestors(pb::ListAncestorsRequest {
            model: "finetune".into(),
            max_depth: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let walked: Vec<(String, u32)> = ancestors
        .iter()
        .map(|e| (e.model.as_ref().unwrap().name.clone(), e.depth))
        .collect();
    assert_eq!(
        walked,
        [("transfer".to_string(), 1), ("base".to_string(), 2)]
    );
    let descendants = cluster
        .models()
        .list_descendants(pb::ListDescendantsRequest {
            model: base.id.clone(),
            max_depth: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let walked: Vec<String> = descendants
        .iter()
        .map(|e| e.model.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(
        walked,
        ["transfer"],
        "max_depth 1 stops after one generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_model_can_be_finetuned() {
    let cluster = Cluster::start().await;
    let data = cluster.register_dataset("blobs", blobs(0..3, 60, 3)).await;
    // Weights made outside Heirloom: an MLP 64 → 8 → 3 with PyTorch state-dict names.
    let tensor = |name: &'static str, shape: Vec<usize>| {
        let count: usize = shape.iter().product();
        let data: Vec<u8> = (0..count)
            .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
            .collect();
        (name, safetensors::Dtype::F32, shape, data)
    };
    let weights = support::safetensors_file(&[
        tensor("hidden.0.weight", vec![8, 64]),
        tensor("hidden.0.bias", vec![8]),
        tensor("fc.weight", vec![3, 8]),
        tensor("fc.bias", vec![3]),
    ]);
    let imported = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "outside".into(),
            architecture: Some(mlp(64, vec![8], 3)),
            weights: weights.clone().into(),
            ..Default::default()
        })
        .await
        .expect("import")
        .into_inner()
        .model
        .unwrap();
    assert_eq!(imported.source, "import");
    assert_eq!(imported.weights_sha256, sha256_hex(&weights));

    let job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "outside-tuned".into(),
            dataset_id: data.id,
            parent_id: imported.id.clone(),
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(5, None),
            ..Default::default()
        })
        .await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    let child = cluster.model("outside-tuned").await;
    assert_eq!(child.parents.len(), 1);
    assert_eq!(child.parents[0].parent_id, imported.id);
    assert_eq!(child.parents[0].relation(), pb::Relation::Finetune);
    let child_w = cluster.weights(&child).await;
    let parent_w = cluster.weights(&imported).await;
    assert_eq!(child_w["hidden.0.weight"], parent_w["hidden.0.weight"]);
    assert_ne!(child_w["fc.weight"], parent_w["fc.weight"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cnn_trains_and_transfers() {
    let cluster = Cluster::start().await;
    // 64 features read as one 8x8 channel.
    let first_five = cluster
        .register_dataset("blobs-0-4", blobs(0..5, 60, 4))
        .await;
    let last_five = cluster
        .register_dataset("blobs-5-9", blobs(5..10, 60, 5))
        .await;
    let cnn = pb::Architecture {
        kind: Some(pb::architecture::Kind::SmallCnn(pb::SmallCnn {
            in_channels: 1,
            height: 8,
            width: 8,
            channels: vec![8, 16],
            num_classes: 5,
        })),
    };
    let base = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "cnn".into(),
            dataset_id: first_five.id,
            architecture: Some(cnn),
            hyperparameters: hyperparameters(5, 0.01),
            ..Default::default()
        })
        .await;
    let (_, base) = cluster.wait(&base.id).await;
    assert_eq!(base.state(), pb::JobState::Succeeded, "{}", base.error);
    let transfer = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "cnn-transfer".into(),
            dataset_id: last_five.id,
            parent_id: base.model_id.clone(),
            num_classes: 5,
            hyperparameters: hyperparameters(3, 0.01),
            ..Default::default()
        })
        .await;
    let (_, transfer) = cluster.wait(&transfer.id).await;
    assert_eq!(
        transfer.state(),
        pb::JobState::Succeeded,
        "{}",
        transfer.error
    );
    let base = cluster.model("cnn").await;
    let transfer = cluster.model("cnn-transfer").await;
    let (base_w, transfer_w) = (
        cluster.weights(&base).await,
        cluster.weights(&transfer).await,
    );
    let names: Vec<&String> = base_w.keys().collect();
    assert_eq!(
        names,
        [
            "conv.0.bias",
            "conv.0.weight",
            "conv.1.bias",
            "conv.1.weight",
            "fc.bias",
            "fc.weight"
        ]
    );
    assert_eq!(base_w["conv.1.weight"].len(), 16 * 8 * 3 * 3 * 4);
    assert_eq!(transfer_w["conv.0.weight"], base_w["conv.0.weight"]);
    assert_eq!(transfer_w["conv.1.bias"], base_w["conv.1.bias"]);
    assert_ne!(transfer_w["fc.weight"], base_w["fc.weight"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_content_under_a_name_is_the_next_version() {
    let cluster = Cluster::coordinator_only().await;
    let first = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let second = cluster.register_dataset("blobs", blobs(0..5, 10, 2)).await;
    let other = cluster.register_dataset("other", blobs(0..5, 10, 1)).await;
    assert_eq!((first.version, second.version, other.version), (1, 2, 1));
    assert_ne!(first.id, second.id);
    assert_eq!(
        first.sha256, other.sha256,
        "the same content may live under two names"
    );
}
