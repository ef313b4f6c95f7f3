//! A worker that lies about provenance: the test plays the worker over real gRPC, and
//! the coordinator must fail each job with the reason and write no model.

use heirloom_testing as support;

use heirloom_core::sha256_hex;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use support::{Cluster, blobs, hyperparameters, mlp};

/// An MLP 64 → 8 → 5 where every value of a tensor is its fill.
fn weights(fills: [f32; 4]) -> Vec<u8> {
    support::mlp_weights(64, 8, 5, fills)
}

fn claim(
    name: &str,
    bytes: &[u8],
    status: pb::TensorStatus,
    origin: (&str, &str),
) -> pb::TensorProvenance {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensor = file.tensor(name).unwrap();
    pb::TensorProvenance {
        name: name.into(),
        sha256: sha256_hex(tensor.data()),
        status: status as i32,
        origin_model_id: origin.0.into(),
        origin_tensor: origin.1.into(),
        dtype: "f32".into(),
        shape: tensor.shape().iter().map(|&d| d as u64).collect(),
        ..Default::default()
    }
}

/// Uploads every tensor of a weights file, as a worker does before completing a job.
async fn upload(cluster: &Cluster, bytes: &[u8]) {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let chunks: Vec<pb::UploadBlobsRequest> = file
        .tensors()
        .into_iter()
        .map(|(_, view)| pb::UploadBlobsRequest {
            sha256: sha256_hex(view.data()),
            offset: 0,
            data: view.data().to_vec().into(),
            last: true,
            total_bytes: Some(view.data().len() as u64),
        })
        .collect();
    ArtifactServiceClient::new(cluster.channel.clone())
        .upload_blobs(tokio_stream::iter(chunks))
        .await
        .expect("upload the tensors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_provenance_claims_fail_the_job_and_write_no_model() {
    use pb::TensorStatus::{Inherited, Trained};
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let parent_bytes = weights([0.1, 0.2, 0.3, 0.4]);
    let parent = cluster
        .models()
        .import_model(pb::ImportModelRequest {
            name: "parent".into(),
            architecture: Some(mlp(64, vec![8], 5)),
            weights: parent_bytes.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let mut worker = WorkerServiceClient::new(cluster.worker_connection());
    let (worker_id, mut assignments) =
        support::scripted_worker(&cluster.worker_connection(), "liar").await;
    let p = parent.id.as_str();

    // Each case: the child's bytes, its claims, and what the refusal must say.
    let moved = weights([0.1, 0.25, 0.35, 0.45]);
    let trained_head = weights([0.1, 0.2, 0.35, 0.45]);
    let cases: Vec<(&str, Vec<u8>, Vec<pb::TensorProvenance>, &str)> = vec![
        (
            "claimed-inherited-but-changed",
            moved.clone(),
            vec![
                claim("hidden.0.weight", &moved, Inherited, (p, "hidden.0.weight")),
                claim("hidden.0.bias", &moved, Inherited, (p, "hidden.0.bias")),
                claim("fc.weight", &moved, Trained, (p, "fc.weight")),
                claim("fc.bias", &moved, Trained, (p, "fc.bias")),
            ],
            "bytes differ",
        ),
        (
            "frozen-tensor-moved",
            moved.clone(),
            vec![
                claim("hidden.0.weight", &moved, Inherited, (p, "hidden.0.weight")),
                claim("hidden.0.bias", &moved, Trained, (p, "hidden.0.bias")),
                claim("fc.weight", &moved, Trained, (p, "fc.weight")),
                claim("fc.bias", &moved, Trained, (p, "fc.bias")),
            ],
            "frozen",
        ),
        (
            "origin-does-not-exist",
            trained_head.clone(),
            vec![
                claim(
                    "hidden.0.weight",
                    &trained_head,
                    Inherited,
                    (p, "hidden.0.weight"),
                ),
                claim(
                    "hidden.0.bias",
                    &trained_head,
                    Inherited,
                    (p, "hidden.0.bias"),
                ),
                claim("fc.weight", &trained_head, Trained, (p, "layer4.weight")),
                claim("fc.bias", &trained_head, Trained, (p, "fc.bias")),
            ],
            "does not exist",
        ),
    ];
    // A claim naming a stored blob of the wrong size for the tensor.
    let mut misfit = vec![
        claim(
            "hidden.0.weight",
            &trained_head,
            Inherited,
            (p, "hidden.0.weight"),
        ),
        claim(
            "hidden.0.bias",
            &trained_head,
            Inherited,
            (p, "hidden.0.bias"),
        ),
        claim("fc.weight", &trained_head, Trained, (p, "fc.weight")),
        claim("fc.bias", &trained_head, Trained, (p, "fc.bias")),
    ];
    misfit[3].sha256 = misfit[1].sha256.clone(); // hidden.0.bias holds 8 floats, fc.bias 5
    let mut cases = cases;
    cases.push((
        "blob-of-the-wrong-size",
        trained_head.clone(),
        misfit,
        "holds 32 bytes",
    ));
    for (name, bytes, claims, reason) in cases {
        let job = cluster
            .submit(pb::JobSpec {
                kind: pb::JobKind::Finetune as i32,
                model_name: name.into(),
                dataset_id: dataset.id.clone(),
                parent_id: parent.id.clone(),
                trainable: vec!["fc.*".into()],
                hyperparameters: hyperparameters(1, None),
                ..Default::default()
            })
            .await;
        let assignment = assignments.message().await.unwrap().expect("an assignment");
        assert_eq!(assignment.job_id, job.id);
        upload(&cluster, &bytes).await;
        let completed = worker
            .complete_job(pb::CompleteJobRequest {
                worker_id: worker_id.clone(),
                job_id: job.id.clone(),
                attempt: assignment.attempt,
                result: Some(pb::complete_job_request::Result::Output(pb::JobOutput {
                    metrics: None,
                    tensors: claims,
                })),
                retryable: false,
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(completed.state(), pb::JobState::Failed, "{name}");
        assert!(
            completed.error.contains(reason),
            "{name}: {:?} should say {reason:?}",
            completed.error
        );
        assert!(completed.model_id.is_empty());
    }
    let (models,): (i64,) = sqlx::query_as("SELECT count(*) FROM models")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(models, 1, "only the imported parent exists");
    let (tensors,): (i64,) = sqlx::query_as("SELECT count(*) FROM model_tensors")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(tensors, 4, "only the parent's tensors are recorded");
}
