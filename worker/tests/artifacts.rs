//! The content-addressed store: tensors stored once, exports assembled byte for byte,
//! resumable, and refused when a stored blob is corrupted.

mod support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, hyperparameters, mlp};

fn stored_blobs(cluster: &Cluster) -> usize {
    std::fs::read_dir(cluster.artifact("blobs"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_are_stored_once_and_exports_resume_and_detect_corruption() {
    let cluster = Cluster::start().await;
    let data = cluster.register_dataset("blobs", blobs(0..5, 40, 1)).await;
    let base = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "base".into(),
            dataset_id: data.id.clone(),
            architecture: Some(mlp(64, vec![32, 32], 5)),
            hyperparameters: hyperparameters(2, 0.0),
            ..Default::default()
        })
        .await;
    assert_eq!(stored_blobs(&cluster), 6, "one blob per tensor");

    // A fine-tune that trains only the head stores only the head's two tensors.
    let tuned = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "tuned".into(),
            dataset_id: data.id.clone(),
            parent_id: base.id.clone(),
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(2, 0.0),
            ..Default::default()
        })
        .await;
    assert_eq!(stored_blobs(&cluster), 8);
    // An exact copy stores nothing new and exports the same bytes.
    let copy = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "copy".into(),
            parent_id: tuned.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(stored_blobs(&cluster), 8);
    assert_eq!(cluster.export(&copy).await, cluster.export(&tuned).await);

    // A broken download resumes from where it stopped.
    let whole = cluster.export(&tuned).await;
    let tail = cluster.export_from(&tuned.id, 1000).await.unwrap();
    assert_eq!(tail, whole[1000..]);
    let past_the_end = cluster.export_from(&tuned.id, whole.len() as u64 + 1).await;
    assert_eq!(
        past_the_end.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // A corrupted blob is detected and never served.
    let tensors = cluster.tensors_of("tuned").await;
    let blob = cluster.artifact(&heirloom_spec::blob_path(&tensors["fc.bias"].sha256));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let refused = cluster.export_from("tuned", 0).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::DataLoss,
        "{}",
        refused.message()
    );
    assert!(refused.message().contains(&tensors["fc.bias"].sha256));
    // The base model shares no corrupted tensor and still exports.
    cluster.export(&base).await;
}
