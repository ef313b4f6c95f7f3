//! Every inheritance method end to end through a real worker, with the tensor provenance
//! the coordinator verified and recorded.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, floats, hyperparameters, mlp};

fn status_and_origin(
    tensors: &std::collections::BTreeMap<String, pb::TensorProvenance>,
) -> Vec<(String, pb::TensorStatus, String)> {
    tensors
        .values()
        .map(|t| (t.name.clone(), t.status(), t.origin_model_name.clone()))
        .collect()
}

fn expect(rows: &[(&str, pb::TensorStatus, &str)]) -> Vec<(String, pb::TensorStatus, String)> {
    let mut rows: Vec<_> = rows
        .iter()
        .map(|(name, status, origin)| (name.to_string(), *status, origin.to_string()))
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inheritance_method_records_verified_provenance() {
    use pb::TensorStatus::{Inherited, Interpolated, New, Trained};
    let cluster = Cluster::start().await;
    let first = cluster
        .register_dataset("blobs-0-4", blobs(0..5, 80, 1))
        .await;
    let second = cluster
        .register_dataset("blobs-5-9", blobs(5..10, 80, 2))
        .await;
    let train = |name: &str, seed: u64| pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: name.into(),
        dataset_id: first.id.clone(),
        architecture: Some(mlp(64, vec![32, 32], 5)),
        hyperparameters: Some(pb::Hyperparameters {
            epochs: Some(10),
            seed,
            ..Default::default()
        }),
        ..Default::default()
    };
    let base = cluster.run(train("base", 1)).await;
    let sibling = cluster.run(train("sibling", 2)).await;
    assert!(
        cluster
            .tensors_of("base")
            .await
            .values()
            .all(|t| t.status() == New)
    );

    let transfer = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "transfer".into(),
            dataset_id: second.id.clone(),
            parent_id: base.id.clone(),
            num_classes: 5,
            unfreeze_blocks: 1,
            hyperparameters: hyperparameters(10, None),
            ..Default::default()
        })
        .await;
    assert_eq!(
        status_and_origin(&cluster.tensors_of("transfer").await),
        expect(&[
            ("hidden.0.weight", Inherited, "base"),
            ("hidden.0.bias", Inherited, "base"),
            ("hidden.1.weight", Trained, "base"),
            ("hidden.1.bias", Trained, "base"),
            ("fc.weight", New, ""),
            ("fc.bias", New, ""),
        ])
    );
    assert!(transfer.metrics.as_ref().unwrap().holdout_accuracy > 0.6);

    let wise = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "wise".into(),
            dataset_id: second.id.clone(),
            parent_id: transfer.id.clone(),
            trainable: vec!["fc.*".into()],
            alpha: 0.5,
            hyperparameters: hyperparameters(5, None),
            ..Default::default()
        })
        .await;
    assert_eq!(
        status_and_origin(&cluster.tensors_of("wise").await),
        expect(&[
            ("hidden.0.weight", Inherited, "transfer"),
            ("hidden.0.bias", Inherited, "transfer"),
            ("hidden.1.weight", Inherited, "transfer"),
            ("hidden.1.bias", Inherited, "transfer"),
            ("fc.weight", Trained, "transfer"),
            ("fc.bias", Trained, "transfer"),
        ])
    );
    assert!(
        wise.parents[0].details_json.contains("wise_ft"),
        "{}",
        wise.parents[0].details_json
    );

    // Interpolation halfway between two siblings, scored on the first dataset.
    let halfway = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "halfway".into(),
            dataset_id: first.id.clone(),
            parent_id: base.id.clone(),
            second_parent_id: sibling.id.clone(),
            alpha: 0.5,
            ..Default::default()
        })
        .await;
    let (a, b, mid) = (
        cluster.weights(&base).await,
        cluster.weights(&sibling).await,
        cluster.weights(&halfway).await,
    );
    for ((x, y), z) in floats(&a["hidden.0.weight"])
        .iter()
        .zip(floats(&b["hidden.0.weight"]))
        .zip(floats(&mid["hidden.0.weight"]))
    {
        assert!((x + 0.5 * (y - x) - z).abs() < 1e-6);
    }
    assert!(
        cluster
            .tensors_of("halfway")
            .await
            .values()
            .all(|t| t.status() == Interpolated)
    );
    let relations: Vec<(String, pb::Relation)> = halfway
        .parents
        .iter()
        .map(|p| (p.parent_name.clone(), p.relation()))
        .collect();
    assert_eq!(
        relations,
        [
            ("base".to_string(), pb::Relation::Direct),
            ("sibling".to_string(), pb::Relation::Direct)
        ]
    );
    assert!(halfway.metrics.is_some(), "scored on the dataset given");

    // A scale needs no data; a plain copy inherits every tensor unchanged.
    let doubled = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "doubled".into(),
            parent_id: base.id.clone(),
            scale: 2.0,
            ..Default::default()
        })
        .await;
    let twice: Vec<f32> = floats(&a["fc.bias"]).iter().map(|v| v * 2.0).collect();
    assert_eq!(floats(&cluster.weights(&doubled).await["fc.bias"]), twice);
    assert!(doubled.metrics.is_none() && doubled.dataset_id.is_empty());
    let copy = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "copy".into(),
            parent_id: base.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        copy.weights_sha256, base.weights_sha256,
        "an exact copy has the same bytes"
    );
    assert!(
        cluster
            .tensors_of("copy")
            .await
            .values()
            .all(|t| t.status() == Inherited)
    );

    // Compose: the first block from base, the second from the WiSE-FT model, a new head.
    let module = |target: &str, parent: &pb::Model, source: &str| pb::ModuleMapping {
        target_prefix: target.into(),
        parent_id: parent.id.clone(),
        source_prefix: source.into(),
    };
    let composed = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Compose as i32,
            model_name: "composed".into(),
            dataset_id: second.id.clone(),
            architecture: Some(mlp(64, vec![32, 32], 5)),
            modules: vec![
                module("hidden.0", &base, "hidden.0"),
                module("hidden.1", &wise, "hidden.1"),
            ],
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(10, 0.01),
            ..Default::default()
        })
        .await;
    assert_eq!(
        status_and_origin(&cluster.tensors_of("composed").await),
        expect(&[
            ("hidden.0.weight", Inherited, "base"),
            ("hidden.0.bias", Inherited, "base"),
            ("hidden.1.weight", Inherited, "wise"),
            ("hidden.1.bias", Inherited, "wise"),
            ("fc.weight", New, ""),
            ("fc.bias", New, ""),
        ])
    );
    let composed_w = cluster.weights(&composed).await;
    assert_eq!(composed_w["hidden.0.weight"], a["hidden.0.weight"]);
    assert_eq!(
        composed_w["hidden.1.weight"],
        cluster.weights(&wise).await["hidden.1.weight"]
    );
    let mut edges: Vec<(String, pb::Relation)> = composed
        .parents
        .iter()
        .map(|p| (p.parent_name.clone(), p.relation()))
        .collect();
    edges.sort();
    assert_eq!(
        edges,
        [
            ("base".to_string(), pb::Relation::Module),
            ("wise".to_string(), pb::Relation::Module)
        ]
    );
    assert!(
        composed
            .parents
            .iter()
            .all(|p| p.details_json.contains("target_prefix"))
    );

    // The lineage DAG: every ancestor once, at its shortest distance.
    let ancestors: Vec<(String, u32)> = cluster
        .models()
        .list_ancestors(pb::ListAncestorsRequest {
            model: "composed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .map(|e| (e.model.as_ref().unwrap().name.clone(), e.depth))
        .collect();
    assert_eq!(
        ancestors,
        [
            ("base".to_string(), 1),
            ("wise".to_string(), 1),
            ("transfer".to_string(), 2)
        ]
    );
    let roles: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, d.role FROM model_datasets d JOIN models m ON m.id = d.model_id
          WHERE m.name IN ('halfway', 'composed') ORDER BY m.name",
    )
    .fetch_all(&cluster.pool)
    .await
    .unwrap();
    assert_eq!(
        roles,
        [
            ("composed".to_string(), "train".to_string()),
            ("halfway".to_string(), "eval".to_string())
        ]
    );
}

/// Interpolating two fine-tunes that froze the same layers leaves those layers' bytes
/// as they were: they are recorded `inherited` (not `interpolated`), and blame follows
/// them past the blend to where they last changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpolation_that_changes_no_bytes_of_a_tensor_records_it_inherited() {
    use pb::TensorStatus::{Inherited, Interpolated};
    let cluster = Cluster::start().await;
    let data = cluster.register_dataset("blobs", blobs(0..5, 60, 3)).await;
    let base = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "base".into(),
            dataset_id: data.id.clone(),
            architecture: Some(mlp(64, vec![16], 5)),
            hyperparameters: hyperparameters(3, None),
            ..Default::default()
        })
        .await;
    let head_only = |name: &str, seed: u64| pb::JobSpec {
        kind: pb::JobKind::Finetune as i32,
        model_name: name.into(),
        dataset_id: data.id.clone(),
        parent_id: base.id.clone(),
        trainable: vec!["fc.*".into()],
        hyperparameters: Some(pb::Hyperparameters {
            epochs: Some(2),
            seed,
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = cluster.run(head_only("head-a", 1)).await;
    let second = cluster.run(head_only("head-b", 2)).await;
    cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "blend".into(),
            dataset_id: data.id.clone(),
            parent_id: first.id.clone(),
            second_parent_id: second.id.clone(),
            alpha: 0.5,
            ..Default::default()
        })
        .await;
    assert_eq!(
        status_and_origin(&cluster.tensors_of("blend").await),
        expect(&[
            ("hidden.0.weight", Inherited, "head-a"),
            ("hidden.0.bias", Inherited, "head-a"),
            ("fc.weight", Interpolated, "head-a"),
            ("fc.bias", Interpolated, "head-a"),
        ])
    );
    let blame = cluster
        .models()
        .blame_tensor(pb::BlameTensorRequest {
            model: "blend".into(),
            tensor: "hidden.0.weight".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let chain: Vec<&str> = blame
        .steps
        .iter()
        .map(|step| step.model_name.as_str())
        .collect();
    assert_eq!(chain, ["blend", "head-a", "base"], "last changed in base");
}
