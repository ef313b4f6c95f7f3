//! The content-addressed store: tensors stored once, exports assembled byte for byte,
//! resumable, and refused when a stored blob is corrupted. Every test runs twice: on a
//! local directory and on an S3-compatible server (moto, started by `scripts/test.sh`).

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use object_store::ObjectStoreExt;
use support::{Backend, Cluster, blobs, hyperparameters, mlp};

/// Runs each named test once per backend, as `local::name` and `s3::name`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Local).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::S3).await
                }
            )*
        }
    };
}

on_every_backend!(
    tensors_are_stored_once_and_exports_resume_and_detect_corruption,
    an_upload_that_does_not_match_its_hash_is_refused_and_not_stored,
    garbage_collection_deletes_only_what_nothing_references_or_holds,
    a_model_of_any_size_is_imported_from_uploaded_tensors,
    a_dataset_uploaded_first_is_registered_by_its_hash,
);

async fn tensors_are_stored_once_and_exports_resume_and_detect_corruption(backend: Backend) {
    let cluster = Cluster::start_on(backend).await;
    let data = cluster.register_dataset("blobs", blobs(0..5, 40, 1)).await;
    let base = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "base".into(),
            dataset_id: data.id.clone(),
            architecture: Some(mlp(64, vec![32, 32], 5)),
            hyperparameters: hyperparameters(2, None),
            ..Default::default()
        })
        .await;
    assert_eq!(
        cluster.stored_blobs().await,
        7,
        "one blob per tensor, and the dataset"
    );

    // A fine-tune that trains only the head stores only the head's two tensors.
    let tuned = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "tuned".into(),
            dataset_id: data.id.clone(),
            parent_id: base.id.clone(),
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(2, None),
            ..Default::default()
        })
        .await;
    assert_eq!(cluster.stored_blobs().await, 9);
    // An exact copy stores nothing new and exports the same bytes.
    let copy = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "copy".into(),
            parent_id: tuned.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(cluster.stored_blobs().await, 9);
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
    let blob = object_store::path::Path::from(format!("blobs/{}", tensors["fc.bias"].sha256));
    let mut bytes = cluster
        .store
        .get(&blob)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[0] ^= 0xff;
    cluster.store.put(&blob, bytes.into()).await.unwrap();
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

async fn an_upload_that_does_not_match_its_hash_is_refused_and_not_stored(backend: Backend) {
    let cluster = Cluster::coordinator_on(backend).await;
    let mut client = ArtifactServiceClient::new(cluster.channel.clone());
    let data = b"the bytes of a tensor".to_vec();
    let honest = heirloom_core::sha256_hex(&data);
    let claimed = heirloom_core::sha256_hex(b"other bytes");
    let whole = data.len() as u64;
    let chunk = |sha256: &str, offset: u64, data: &[u8], last: bool| pb::UploadBlobsRequest {
        sha256: sha256.into(),
        offset,
        data: data.to_vec().into(),
        last,
        total_bytes: (offset == 0).then_some(whole),
    };
    let refused = client
        .upload_blobs(tokio_stream::iter(vec![chunk(&claimed, 0, &data, true)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("nothing was stored"),
        "{}",
        refused.message()
    );
    let missing = client
        .missing_blobs(pb::MissingBlobsRequest {
            sha256: vec![claimed.clone(), honest.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .sha256;
    assert_eq!(missing, [claimed, honest.clone()]);

    // In two chunks, in order, it is stored; out of order it is refused.
    let gap = client
        .upload_blobs(tokio_stream::iter(vec![
            chunk(&honest, 0, &data[..5], false),
            chunk(&honest, 9, &data[5..], true),
        ]))
        .await
        .unwrap_err();
    assert!(gap.message().contains("expected 5"), "{}", gap.message());
    let stored = client
        .upload_blobs(tokio_stream::iter(vec![
            chunk(&honest, 0, &data[..5], false),
            chunk(&honest, 5, &data[5..], true),
        ]))
        .await
        .unwrap()
        .into_inner()
        .stored;
    assert_eq!(stored, std::slice::from_ref(&honest));
    let downloaded = client
        .download_blob(pb::DownloadBlobRequest {
            sha256: honest,
            offset: 4,
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(downloaded.data, data[4..]);
}

async fn garbage_collection_deletes_only_what_nothing_references_or_holds(backend: Backend) {
    let cluster = Cluster::start_on(backend).await;
    let data = cluster.register_dataset("blobs", blobs(0..5, 40, 1)).await;
    let base = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: "base".into(),
            dataset_id: data.id.clone(),
            architecture: Some(mlp(64, vec![16], 5)),
            hyperparameters: hyperparameters(1, None),
            ..Default::default()
        })
        .await;
    let mut client = ArtifactServiceClient::new(cluster.channel.clone());
    let upload = |data: &[u8]| pb::UploadBlobsRequest {
        sha256: heirloom_core::sha256_hex(data),
        offset: 0,
        data: data.to_vec().into(),
        last: true,
        total_bytes: Some(data.len() as u64),
    };
    let orphan = b"a tensor nobody will claim".to_vec();
    client
        .upload_blobs(tokio_stream::iter(vec![upload(&orphan)]))
        .await
        .unwrap();
    // A blob a job is about to refer to: asked about first, as workers do, which holds it.
    let awaited = b"a tensor a running job will claim".to_vec();
    client
        .missing_blobs(pb::MissingBlobsRequest {
            sha256: vec![heirloom_core::sha256_hex(&awaited)],
        })
        .await
        .unwrap();
    client
        .upload_blobs(tokio_stream::iter(vec![upload(&awaited)]))
        .await
        .unwrap();
    let collect = |min_age_seconds: Option<u64>, dry_run| {
        support::collect_garbage(&cluster.channel, min_age_seconds, dry_run)
    };
    // Young blobs are spared by default: they may belong to a job still running.
    assert_eq!(collect(None, false).await.deleted_blobs, 0);
    cluster
        .wait_until_blobs_are(std::time::Duration::from_secs(1))
        .await;
    let dry = collect(Some(1), true).await;
    assert_eq!(
        (dry.deleted_blobs, dry.deleted_bytes),
        (1, orphan.len() as u64)
    );
    assert_eq!(cluster.stored_blobs().await, 7, "a dry run deletes nothing");
    let done = collect(Some(1), false).await;
    assert_eq!(done.deleted_blobs, 1);
    // 4 tensors, the dataset and the held blob stay.
    assert_eq!(done.kept_blobs, 6);
    assert_eq!(cluster.stored_blobs().await, 6);
    cluster.export(&base).await;
}

async fn a_model_of_any_size_is_imported_from_uploaded_tensors(backend: Backend) {
    let cluster = Cluster::coordinator_on(backend).await;
    let weights = support::mlp_weights(64, 16, 5, [0.25, 0.5, 0.75, 1.0]);
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut manifest = Vec::new();
    let mut chunks = Vec::new();
    for (name, view) in file.tensors() {
        let sha256 = heirloom_core::sha256_hex(view.data());
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
    let import =
        |name: &str, tensors: Vec<pb::ManifestTensor>, weights: Vec<u8>| pb::ImportModelRequest {
            name: name.into(),
            architecture: Some(mlp(64, vec![16], 5)),
            weights: weights.into(),
            tensors,
            ..Default::default()
        };
    // Before the upload, the manifest names blobs the store lacks.
    let refused = cluster
        .models()
        .import_model(import("uploaded", manifest.clone(), vec![]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("was never uploaded"),
        "{}",
        refused.message()
    );

    ArtifactServiceClient::new(cluster.channel.clone())
        .upload_blobs(tokio_stream::iter(chunks))
        .await
        .unwrap();
    let uploaded = cluster
        .models()
        .import_model(import("uploaded", manifest, vec![]))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let inline = cluster
        .models()
        .import_model(import("inline", vec![], weights))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        uploaded.weights_sha256, inline.weights_sha256,
        "the same tensors, the same canonical file"
    );
    assert_eq!(
        cluster.export(&uploaded).await,
        cluster.export(&inline).await
    );
}

async fn a_dataset_uploaded_first_is_registered_by_its_hash(backend: Backend) {
    let cluster = Cluster::coordinator_on(backend).await;
    let content = blobs(0..3, 10, 7);
    let sha256 = heirloom_core::sha256_hex(&content);
    let register = |sha256: &str| pb::RegisterDatasetRequest {
        name: "uploaded".into(),
        content: Default::default(),
        sha256: sha256.into(),
        tokens: None,
    };
    let refused = cluster
        .datasets()
        .register_dataset(register(&sha256))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("upload it first"),
        "{}",
        refused.message()
    );
    // Large enough to go in several chunks and, on the store, in several parts.
    let big = vec![0u8; 40 << 20];
    let blobs = [
        (sha256.clone(), bytes::Bytes::from(content.clone())),
        (heirloom_core::sha256_hex(&big), bytes::Bytes::from(big)),
    ];
    let sent =
        heirloom_client::transfer::upload_missing(cluster.channel.clone(), &blobs, |_, _| {})
            .await
            .unwrap();
    assert_eq!(sent, (content.len() + (40 << 20)) as u64);
    let again =
        heirloom_client::transfer::upload_missing(cluster.channel.clone(), &blobs, |_, _| {})
            .await
            .unwrap();
    assert_eq!(again, 0, "stored blobs are not sent again");
    let dataset = cluster
        .datasets()
        .register_dataset(register(&sha256))
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(
        (dataset.num_examples, dataset.size_bytes),
        (30, content.len() as u64)
    );
    // The multipart blob comes back whole.
    let mut stream = ArtifactServiceClient::new(cluster.channel.clone())
        .download_blob(pb::DownloadBlobRequest {
            sha256: blobs[1].0.clone(),
            offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut downloaded = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        downloaded.extend_from_slice(&chunk.data);
    }
    assert_eq!(heirloom_core::sha256_hex(&downloaded), blobs[1].0);
}
