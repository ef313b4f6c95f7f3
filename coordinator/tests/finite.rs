//! Numbers that are not finite never enter: a dataset or a model holding NaN or ±inf is
//! refused, naming the tensor and where the first bad value lies, and writes no row; a
//! job whose weights would overflow stores no model; and one dataset row whose stored
//! statistics do not parse never breaks a listing for anyone.

use heirloom_testing as support;

use heirloom_core::sha256_hex;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use heirloom_proto::v1::dataset_service_client::DatasetServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use support::{Cluster, FEATURES, Rng, blobs, mlp, refused};
use tonic::Code;

/// A 10-row dataset of `FEATURES` features whose value at (`row`, `feature`) is `value`.
fn dataset_with(value: f32, row: usize, feature: usize) -> Vec<u8> {
    let rows = 10;
    let mut rng = Rng::new(3);
    let mut x: Vec<f32> = (0..rows * FEATURES).map(|_| rng.normal()).collect();
    x[row * FEATURES + feature] = value;
    let y: Vec<i64> = (0..rows as i64).map(|i| i % 2).collect();
    support::safetensors_file(&[
        (
            "x",
            safetensors::Dtype::F32,
            vec![rows, FEATURES],
            x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "y",
            safetensors::Dtype::I64,
            vec![rows],
            y.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ])
}

fn register(name: &str, content: Vec<u8>) -> pb::RegisterDatasetRequest {
    pb::RegisterDatasetRequest {
        name: name.into(),
        sha256: sha256_hex(&content),
        content: content.into(),
        tokens: None,
    }
}

async fn list_datasets(channel: &support::Connection) -> Result<Vec<pb::Dataset>, tonic::Status> {
    Ok(DatasetServiceClient::new(channel.clone())
        .list_datasets(pb::ListDatasetsRequest {})
        .await?
        .into_inner()
        .datasets)
}

/// Uploads every tensor of a safetensors file, as a worker or a large import does.
async fn upload_tensors(cluster: &Cluster, bytes: &[u8]) -> Vec<pb::ManifestTensor> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut manifest = Vec::new();
    let mut chunks = Vec::new();
    for (name, view) in file.tensors() {
        let sha256 = sha256_hex(view.data());
        manifest.push(pb::ManifestTensor {
            name,
            dtype: "f32".into(),
            shape: view.shape().iter().map(|&d| d as u64).collect(),
            sha256: sha256.clone(),
        });
        chunks.push(pb::UploadBlobsRequest {
            sha256,
            offset: 0,
            data: view.data().to_vec().into(),
            last: true,
            total_bytes: Some(view.data().len() as u64),
        });
    }
    ArtifactServiceClient::new(cluster.channel.clone())
        .upload_blobs(tokio_stream::iter(chunks))
        .await
        .expect("upload the tensors");
    manifest
}

fn import(name: &str, weights: Vec<u8>) -> pb::ImportModelRequest {
    pb::ImportModelRequest {
        name: name.into(),
        architecture: Some(mlp(64, vec![16], 5)),
        weights: weights.into(),
        ..Default::default()
    }
}

async fn model_count(cluster: &Cluster) -> i64 {
    let (models,): (i64,) = sqlx::query_as("SELECT count(*) FROM models")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    models
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_holding_nan_or_inf_is_refused_and_writes_nothing() {
    let cluster = Cluster::coordinator_only().await;
    let reader = support::connect_as(
        &cluster.address,
        Some(&support::create_token(&cluster.channel, "reader", pb::Role::Reader).await),
    );
    cluster.register_dataset("good", blobs(0..5, 10, 1)).await;
    let blobs_before = cluster.stored_blobs().await;
    let cases = [
        (f32::NAN, 3, 17, "content: x holds NaN at row 3, feature 17"),
        (
            f32::INFINITY,
            0,
            0,
            "content: x holds inf at row 0, feature 0",
        ),
        (
            f32::NEG_INFINITY,
            9,
            FEATURES - 1,
            "content: x holds -inf at row 9, feature 63",
        ),
    ];
    for (value, row, feature, message) in cases {
        refused(
            &cluster,
            cluster
                .datasets()
                .register_dataset(register("bad", dataset_with(value, row, feature))),
            Code::InvalidArgument,
            message,
        )
        .await;
        let status = cluster
            .datasets()
            .register_dataset(register("bad", dataset_with(value, row, feature)))
            .await
            .unwrap_err();
        assert!(
            status.message().ends_with("datasets must be finite"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        cluster.stored_blobs().await,
        blobs_before,
        "a dataset sent inline is checked before its blob is stored"
    );

    // Uploaded first, then registered by hash: refused the same way. The uploaded blob
    // stays until garbage collection, since nothing references it.
    let bad = dataset_with(f32::NAN, 1, 2);
    ArtifactServiceClient::new(cluster.channel.clone())
        .upload_blobs(tokio_stream::iter([pb::UploadBlobsRequest {
            sha256: sha256_hex(&bad),
            offset: 0,
            data: bad.clone().into(),
            last: true,
            total_bytes: Some(bad.len() as u64),
        }]))
        .await
        .expect("upload the dataset");
    refused(
        &cluster,
        cluster
            .datasets()
            .register_dataset(pb::RegisterDatasetRequest {
                name: "bad".into(),
                sha256: sha256_hex(&bad),
                content: Default::default(),
                tokens: None,
            }),
        Code::InvalidArgument,
        "content: x holds NaN at row 1, feature 2",
    )
    .await;

    // Everyone can still list, and the name is free for finite data.
    for channel in [&cluster.channel, &reader] {
        let listed = list_datasets(channel).await.expect("list datasets");
        let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["good"]);
    }
    let fixed = cluster
        .register_dataset("bad", dataset_with(0.5, 3, 17))
        .await;
    assert_eq!(fixed.version, 1);
    assert!(fixed.statistics.is_some());
    assert_eq!(list_datasets(&reader).await.unwrap().len(), 2);
}

/// A row written before registration checked for finite data holds statistics whose
/// NaN became JSON `null`: it is listed (and usable) without statistics, and lists of
/// everyone else's datasets are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_whose_statistics_do_not_parse_never_breaks_a_listing() {
    let cluster = Cluster::coordinator_only().await;
    let reader = support::connect_as(
        &cluster.address,
        Some(&support::create_token(&cluster.channel, "reader", pb::Role::Reader).await),
    );
    let good = cluster.register_dataset("good", blobs(0..5, 10, 1)).await;
    let legacy = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO datasets (id, name, version, sha256, size_bytes, num_examples,
                               num_features, num_classes, statistics)
         VALUES ($1, 'legacy', 1, $2, 100, 10, 64, 2, $3::jsonb)",
    )
    .bind(legacy)
    .bind(sha256_hex(b"legacy"))
    .bind(
        r#"{"label_counts": [5, 5], "mean": null, "std": null,
            "feature_mean": [null], "feature_std": [0.0]}"#,
    )
    .execute(&cluster.pool)
    .await
    .expect("write a legacy row under the API");

    for channel in [&cluster.channel, &reader] {
        let listed = list_datasets(channel)
            .await
            .expect("the listing still works");
        assert_eq!(listed.len(), 2);
        let legacy_listed = listed.iter().find(|d| d.name == "legacy").unwrap();
        assert_eq!(legacy_listed.id, legacy.to_string());
        assert!(legacy_listed.statistics.is_none());
        let good_listed = listed.iter().find(|d| d.name == "good").unwrap();
        assert_eq!(good_listed.statistics, good.statistics);
    }
    // Looked up by name, as a job's dataset, it is read the same way.
    let plan = cluster
        .jobs()
        .plan_job(pb::PlanJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Train as i32,
                model_name: "on-legacy".into(),
                dataset_id: "legacy".into(),
                architecture: Some(mlp(64, vec![16], 2)),
                hyperparameters: support::hyperparameters(1, 0.01),
                ..Default::default()
            }),
            requirements: None,
        })
        .await
        .expect("a plan on the legacy dataset")
        .into_inner()
        .plan
        .unwrap();
    assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_holding_nan_or_inf_are_never_imported() {
    let cluster = Cluster::coordinator_only().await;
    let blobs_before = cluster.stored_blobs().await;
    // Inline: refused before any tensor is stored.
    let cases = [
        (
            [0.1, 0.2, f32::NAN, 0.4],
            "weights: tensor fc.weight holds NaN at element 0",
        ),
        (
            [0.1, f32::INFINITY, 0.3, 0.4],
            "weights: tensor hidden.0.bias holds inf at element 0",
        ),
    ];
    for (fills, message) in cases {
        refused(
            &cluster,
            cluster
                .models()
                .import_model(import("bad", support::mlp_weights(64, 16, 5, fills))),
            Code::InvalidArgument,
            message,
        )
        .await;
    }
    assert_eq!(cluster.stored_blobs().await, blobs_before);
    let status = cluster
        .models()
        .import_model(import(
            "bad",
            support::mlp_weights(64, 16, 5, [0.1, 0.2, f32::NAN, 0.4]),
        ))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .ends_with("a model with non-finite weights is never stored"),
        "{}",
        status.message()
    );

    // One value deep inside a tensor.
    let mut weights = support::random_mlp_weights(64, &[16], 5, 1);
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let at = file.tensor("hidden.0.weight").unwrap().data().as_ptr() as usize
        - weights.as_ptr() as usize;
    let element = 5 * 64 + 7;
    weights[at + 4 * element..at + 4 * element + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    refused(
        &cluster,
        cluster.models().import_model(import("bad", weights)),
        Code::InvalidArgument,
        &format!("weights: tensor hidden.0.weight holds NaN at element {element}"),
    )
    .await;

    // From uploaded tensors: the coordinator reads them and refuses the same way.
    let manifest = upload_tensors(
        &cluster,
        &support::mlp_weights(64, 16, 5, [0.1, 0.2, 0.3, f32::NEG_INFINITY]),
    )
    .await;
    refused(
        &cluster,
        cluster.models().import_model(pb::ImportModelRequest {
            tensors: manifest,
            ..import("bad", Vec::new())
        }),
        Code::InvalidArgument,
        "tensors: tensor fc.bias holds -inf at element 0",
    )
    .await;

    // Finite weights still import, under the name the refusals left free.
    cluster
        .models()
        .import_model(import(
            "bad",
            support::mlp_weights(64, 16, 5, [0.1, 0.2, 0.3, 0.4]),
        ))
        .await
        .expect("finite weights import");
    assert_eq!(model_count(&cluster).await, 1);
}

fn direct(name: &str, parent: &pb::Model, scale: f64) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Direct as i32,
        model_name: name.into(),
        parent_id: parent.id.clone(),
        scale,
        ..Default::default()
    }
}

/// A real worker scales a real parent: a scale past float32's range is refused at
/// submission; one in range that still overflows these weights fails the job naming the
/// tensor, and stores nothing; an ordinary scale works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_that_overflows_stores_no_model() {
    let cluster = Cluster::start().await;
    let parent = cluster
        .models()
        .import_model(import(
            "parent",
            support::mlp_weights(64, 16, 5, [4.0, 0.5, -4.0, 0.5]),
        ))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    for scale in [1e300, -1e39, f64::INFINITY, f64::NAN] {
        refused(
            &cluster,
            cluster.try_submit(direct("huge", &parent, scale)),
            Code::InvalidArgument,
            "spec.scale",
        )
        .await;
    }

    // 1e38 is a float32, but 4 × 1e38 is not. The worker finds it before uploading
    // (the coordinator would too: see the next test) and the job fails for good.
    let job = cluster.submit(direct("overflowed", &parent, 1e38)).await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(
        job.error,
        "weights: tensor fc.weight holds -inf at element 0: \
         a model with non-finite weights is never stored"
    );
    assert_eq!(job.attempts.len(), 1, "a permanent failure is not retried");
    assert!(job.model_id.is_empty());
    assert_eq!(model_count(&cluster).await, 1, "only the parent exists");

    let halved = cluster.run(direct("halved", &parent, 0.5)).await;
    let weights = cluster.weights(&halved).await;
    assert!(
        support::floats(&weights["hidden.0.weight"])
            .iter()
            .all(|&w| w == 2.0)
    );
    assert!(
        support::floats(&weights["fc.weight"])
            .iter()
            .all(|&w| w == -2.0)
    );
}

/// The coordinator never takes the worker's word that its weights are finite: a
/// scripted worker claims an overflowed tensor, and the job fails with nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_non_finite_output_whatever_the_worker_claims() {
    let cluster = Cluster::coordinator_only().await;
    let parent = cluster
        .models()
        .import_model(import(
            "parent",
            support::mlp_weights(64, 16, 5, [4.0, 0.5, -4.0, 0.5]),
        ))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let mut worker = WorkerServiceClient::new(cluster.worker_connection());
    let (worker_id, mut assignments) =
        support::scripted_worker(&cluster.worker_connection(), "careless").await;
    let job = cluster.submit(direct("overflowed", &parent, 1e38)).await;
    let assignment = assignments.message().await.unwrap().expect("an assignment");
    assert_eq!(assignment.job_id, job.id);

    // What scaling by 1e38 makes of these weights, had the worker not checked.
    let output = support::mlp_weights(64, 16, 5, [f32::INFINITY, 5e37, f32::NEG_INFINITY, 5e37]);
    let manifest = upload_tensors(&cluster, &output).await;
    let claims = manifest
        .into_iter()
        .map(|tensor| pb::TensorProvenance {
            status: pb::TensorStatus::Interpolated as i32,
            origin_model_id: parent.id.clone(),
            origin_tensor: tensor.name.clone(),
            name: tensor.name,
            sha256: tensor.sha256,
            dtype: tensor.dtype,
            shape: tensor.shape,
            ..Default::default()
        })
        .collect();
    let completed = worker
        .complete_job(pb::CompleteJobRequest {
            worker_id,
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
    assert_eq!(
        completed.state(),
        pb::JobState::Failed,
        "{}",
        completed.error
    );
    assert!(
        completed.error.contains(
            "weights rejected: output.tensors: tensor fc.weight holds -inf at element 0: \
             a model with non-finite weights is never stored"
        ),
        "{}",
        completed.error
    );
    assert!(completed.model_id.is_empty());
    assert_eq!(model_count(&cluster).await, 1, "only the parent exists");
    let (tensors,): (i64,) = sqlx::query_as("SELECT count(*) FROM model_tensors")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(tensors, 4, "only the parent's tensors are recorded");
}

/// A model stored before weights were checked (written here under the API, as an older
/// coordinator wrote it): fine-tuning it fails naming the tensor, not the learning rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_stored_before_the_check_is_named_not_the_learning_rate() {
    let cluster = Cluster::start().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let parent = cluster
        .models()
        .import_model(import(
            "parent",
            support::mlp_weights(64, 16, 5, [0.1, 0.2, 0.3, 0.4]),
        ))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let bad = upload_tensors(
        &cluster,
        &support::mlp_weights(64, 16, 5, [0.1, 0.2, 0.3, f32::INFINITY]),
    )
    .await;
    let bad_bias = bad.iter().find(|t| t.name == "fc.bias").unwrap();
    let legacy = uuid::Uuid::new_v4();
    let parent_id = uuid::Uuid::parse_str(&parent.id).unwrap();
    let mut tx = cluster.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO models (id, name, architecture, weights_sha256, weights_bytes, source)
         SELECT $1, 'legacy', architecture, weights_sha256, weights_bytes, 'import'
           FROM models WHERE id = $2",
    )
    .bind(legacy)
    .bind(parent_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO model_tensors
             (model_id, name, sha256, dtype, shape, status, origin_model_id, origin_tensor)
         SELECT $1, name, CASE name WHEN 'fc.bias' THEN $3 ELSE sha256 END, dtype, shape,
                status, origin_model_id, origin_tensor
           FROM model_tensors WHERE model_id = $2",
    )
    .bind(legacy)
    .bind(parent_id)
    .bind(&bad_bias.sha256)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "child".into(),
            parent_id: legacy.to_string(),
            dataset_id: dataset.id.clone(),
            hyperparameters: support::hyperparameters(1, 0.01),
            ..Default::default()
        })
        .await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert!(
        job.error.contains(&format!(
            "tensor fc.bias (blob {}) holds inf at element 0: weights that are not finite",
            bad_bias.sha256
        )),
        "{}",
        job.error
    );
    assert!(!job.error.contains("learning rate"), "{}", job.error);
    assert_eq!(job.attempts.len(), 1, "a permanent failure is not retried");
    assert_eq!(model_count(&cluster).await, 2);
}
