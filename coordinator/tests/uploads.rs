//! Uploads are held to their size and to their token's quotas before anything is stored:
//! a blob declares its size with its first chunk, one larger than the coordinator takes
//! is refused at once, a stream that sends more than it declared is cut, each token's
//! hourly upload bytes and its held blobs are bounded (in PostgreSQL, so across
//! replicas), and garbage collection finds what uploads that died left behind (a
//! directory's staging files, a bucket's multipart uploads). The CLI says the limit
//! before it sends a byte, and the server's words when it refuses.

use heirloom_testing as support;

use heirloom_coordinator::{Config, Coordinator};
use heirloom_core::sha256_hex;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use support::{Cluster, Connection, refused};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Code;

/// Another coordinator on the cluster's database and store, with `settings` changed;
/// it stops when dropped.
struct Replica {
    address: String,
    _stop: DropGuard,
}

async fn replica(cluster: &Cluster, settings: impl FnOnce(&mut Config)) -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = Config {
        listen: listener.local_addr().expect("address"),
        explorer_listen: None,
        metrics_listen: None,
        ..cluster.config().clone()
    };
    settings(&mut config);
    let coordinator = Coordinator::build(&config)
        .await
        .expect("the replica starts");
    let stop = CancellationToken::new();
    tokio::spawn(coordinator.run(listener, stop.clone()));
    Replica {
        address: format!("https://{}", config.listen),
        _stop: stop.drop_guard(),
    }
}

/// A connection to `address` with a new token of `role` made by the cluster's admin.
async fn new_token(cluster: &Cluster, address: &str, name: &str, role: pb::Role) -> Connection {
    let secret = support::create_token(&cluster.channel, name, role).await;
    support::connect_as(address, Some(&secret))
}

/// One chunk of blob `sha256`: `data` at `offset`, declaring `total_bytes`.
fn chunk(
    sha256: &str,
    data: &[u8],
    offset: u64,
    total_bytes: Option<u64>,
    last: bool,
) -> pb::UploadBlobsRequest {
    pb::UploadBlobsRequest {
        sha256: sha256.into(),
        offset,
        data: data.to_vec().into(),
        last,
        total_bytes,
    }
}

/// Every chunk of `blob`, 2 MiB each, the first declaring its size.
fn chunks_of(blob: &[u8]) -> Vec<pb::UploadBlobsRequest> {
    let sha256 = sha256_hex(blob);
    let starts: Vec<usize> = (0..blob.len().max(1)).step_by(2 << 20).collect();
    let count = starts.len();
    starts
        .into_iter()
        .enumerate()
        .map(|(i, start)| {
            chunk(
                &sha256,
                &blob[start..(start + (2 << 20)).min(blob.len())],
                start as u64,
                (i == 0).then_some(blob.len() as u64),
                i + 1 == count,
            )
        })
        .collect()
}

/// Uploads whole blobs; the stored hashes or the refusal.
async fn upload(channel: &Connection, blobs: &[&[u8]]) -> Result<Vec<String>, tonic::Status> {
    let chunks: Vec<_> = blobs.iter().flat_map(|blob| chunks_of(blob)).collect();
    Ok(ArtifactServiceClient::new(channel.clone())
        .upload_blobs(tokio_stream::iter(chunks))
        .await?
        .into_inner()
        .stored)
}

/// Sends `chunks` and keeps the stream open: the answer must come without its end. Returns
/// the answer and how long it took.
async fn upload_held_open(
    channel: &Connection,
    chunks: Vec<pb::UploadBlobsRequest>,
) -> (Result<Vec<String>, tonic::Status>, Duration) {
    let (send, receive) = tokio::sync::mpsc::channel(chunks.len().max(1));
    for chunk in chunks {
        send.send(chunk).await.expect("the stream is open");
    }
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        ArtifactServiceClient::new(channel.clone()).upload_blobs(ReceiverStream::new(receive)),
    )
    .await
    .expect("answered while the stream was still open");
    let took = started.elapsed();
    drop(send);
    (answer.map(|answer| answer.into_inner().stored), took)
}

/// Every file under the directory store's `blobs/`, staging files included (which the
/// store's own listing hides).
fn store_files(cluster: &Cluster) -> Vec<String> {
    let blobs = Path::new(&cluster.config().artifacts).join("blobs");
    let mut names: Vec<String> = match std::fs::read_dir(&blobs) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn assert_mentions(status: &tonic::Status, code: Code, fragments: &[&str]) {
    assert_eq!(status.code(), code, "{}", status.message());
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{:?} should say {fragment:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_size_over_the_limit_is_refused_before_any_byte_is_stored() {
    let cluster = Cluster::coordinator_only().await;
    let small = replica(&cluster, |config| config.max_blob_bytes = 1000).await;
    let channel = support::connect_as(&small.address, Some(&cluster.admin_token));
    let sha256 = sha256_hex(b"the first of 2 GiB");

    // One small chunk declaring 2 GiB, and nothing more: refused at once, the stream
    // still open, against the default limit and against a small one.
    for (address, limit) in [(&cluster.address, "1073741824"), (&small.address, "1000")] {
        let channel = support::connect_as(address, Some(&cluster.admin_token));
        let before = cluster.row_counts().await;
        let first = chunk(&sha256, &[7; 1024], 0, Some(2 << 30), false);
        let (answer, took) = upload_held_open(&channel, vec![first]).await;
        let status = answer.expect_err("refused");
        assert_mentions(
            &status,
            Code::InvalidArgument,
            &[
                &sha256,
                "declares 2147483648 bytes (2.0 GiB)",
                limit,
                "nothing was stored",
            ],
        );
        assert!(took < Duration::from_secs(5), "answered in {took:?}");
        assert_eq!(cluster.row_counts().await, before);
        assert_eq!(
            store_files(&cluster),
            Vec::<String>::new(),
            "no staging file"
        );
    }

    // At the limit it is taken; one byte over, refused.
    let at_limit = vec![3u8; 1000];
    assert_eq!(
        upload(&channel, &[&at_limit]).await.unwrap(),
        [sha256_hex(&at_limit)]
    );
    let over = vec![3u8; 1001];
    let status = upload(&channel, &[&over]).await.unwrap_err();
    assert_mentions(
        &status,
        Code::InvalidArgument,
        &["declares 1001 bytes", "at most 1000"],
    );
    assert_eq!(store_files(&cluster), [sha256_hex(&at_limit)]);

    // MissingBlobs says the limit, so that clients check before they send.
    let answer = ArtifactServiceClient::new(channel.clone())
        .missing_blobs(pb::MissingBlobsRequest { sha256: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.max_blob_bytes, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_chunk_must_declare_its_size_and_start_at_zero() {
    let cluster = Cluster::coordinator_only().await;
    let channel = cluster.channel.clone();
    let data = b"a tensor of a few bytes".to_vec();
    let sha256 = sha256_hex(&data);
    let undeclared = chunk(&sha256, &data, 0, None, true);
    refused(
        &cluster,
        async { upload_held_open(&channel, vec![undeclared]).await.0 },
        Code::InvalidArgument,
        "its first chunk declares no total_bytes; send the blob's size in bytes with its \
         first chunk",
    )
    .await;
    let late = chunk(&sha256, &data[4..], 4, Some(data.len() as u64), true);
    refused(
        &cluster,
        async { upload_held_open(&channel, vec![late]).await.0 },
        Code::InvalidArgument,
        "its first chunk starts at offset 4",
    )
    .await;
    assert_eq!(store_files(&cluster), Vec::<String>::new());
    // The empty blob declares 0.
    assert_eq!(upload(&channel, &[b""]).await.unwrap(), [sha256_hex(b"")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sends_more_than_it_declared_is_cut() {
    let cluster = Cluster::coordinator_only().await;
    let channel = cluster.channel.clone();

    // Small: 16 bytes where 10 were declared. The answer comes with the stream open.
    let sha256 = sha256_hex(b"ten bytes!");
    let (answer, _) = upload_held_open(
        &channel,
        vec![
            chunk(&sha256, &[1; 8], 0, Some(10), false),
            chunk(&sha256, &[1; 8], 8, None, false),
        ],
    )
    .await;
    assert_mentions(
        &answer.unwrap_err(),
        Code::InvalidArgument,
        &[
            &sha256,
            "16 bytes arrived, more than the 10 it declared",
            "cut",
        ],
    );

    // Large enough to be streamed to the store in parts (a staging file): 18 MiB arrive
    // of 17 MiB declared. The chunk past it is refused, and the staging file goes.
    let blob = vec![5u8; 18 << 20];
    let mut chunks = chunks_of(&blob);
    chunks[0].total_bytes = Some(17 << 20);
    chunks.last_mut().unwrap().last = false;
    let (answer, _) = upload_held_open(&channel, chunks).await;
    assert_mentions(
        &answer.unwrap_err(),
        Code::InvalidArgument,
        &["18874368 bytes arrived, more than the 17825792 it declared"],
    );

    // Fewer than declared, then marked last: refused too.
    let mut chunks = chunks_of(b"short");
    chunks[0].total_bytes = Some(6);
    let status = ArtifactServiceClient::new(channel.clone())
        .upload_blobs(tokio_stream::iter(chunks))
        .await
        .unwrap_err();
    assert_mentions(
        &status,
        Code::InvalidArgument,
        &["its last chunk ends at 5 bytes, not the 6 it declared"],
    );
    support::wait_until(
        Duration::from_secs(10),
        "no staging file is left",
        || async { store_files(&cluster).is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_files_of_dead_uploads_are_collected() {
    let cluster = Cluster::coordinator_only().await;
    let mut client = ArtifactServiceClient::new(cluster.channel.clone());
    // Asked about first, as clients do, which holds it.
    let kept = b"a blob stored whole".to_vec();
    client
        .missing_blobs(pb::MissingBlobsRequest {
            sha256: vec![sha256_hex(&kept)],
        })
        .await
        .unwrap();
    client
        .upload_blobs(tokio_stream::iter(chunks_of(&kept)))
        .await
        .unwrap();
    // What a coordinator killed mid-upload leaves: `<sha256>#<n>` beside the blobs. One
    // last written two hours ago, one ten minutes ago, one just now.
    let blobs = PathBuf::from(&cluster.config().artifacts).join("blobs");
    let staged = |name: &str, bytes: usize, age: Duration| {
        let sha256 = sha256_hex(name.as_bytes());
        let path = blobs.join(format!("{sha256}#1"));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(bytes as u64).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        format!("{sha256}#1")
    };
    let dead = staged("dead", 128 << 10, Duration::from_secs(2 * 3600));
    let stalled = staged("stalled", 1000, Duration::from_secs(600));
    let live = staged("live", 1000, Duration::ZERO);
    let collect = |min_age_seconds: Option<u64>, dry_run| {
        support::collect_garbage(&cluster.channel, min_age_seconds, dry_run)
    };

    // By default (an hour), only the dead one; a dry run reports it and keeps it.
    let dry = collect(None, true).await;
    assert_eq!(
        (dry.deleted_staging_files, dry.deleted_staging_bytes),
        (1, 128 << 10)
    );
    assert_eq!(dry.deleted_blobs, 0, "staging files are not blobs");
    assert!(store_files(&cluster).contains(&dead));
    let done = collect(None, false).await;
    assert_eq!((done.deleted_staging_files, done.kept_blobs), (1, 1));
    assert!(!store_files(&cluster).contains(&dead));

    // Five minutes: the stalled one too. Any age (0): the live one too, the held blob
    // never.
    let done = collect(Some(300), false).await;
    assert_eq!(
        (done.deleted_staging_files, done.deleted_staging_bytes),
        (1, 1000)
    );
    assert!(!store_files(&cluster).contains(&stalled));
    assert!(store_files(&cluster).contains(&live));
    let done = collect(Some(0), false).await;
    assert_eq!((done.deleted_staging_files, done.kept_blobs), (1, 1));
    assert_eq!(store_files(&cluster), [sha256_hex(&kept)]);
}

/// On S3 a dead upload is an incomplete multipart upload, which no object listing shows:
/// listed with the bucket's multipart uploads, reported by a dry run, then aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_multipart_uploads_are_collected_on_s3() {
    use object_store::ObjectStoreExt;
    let cluster = Cluster::coordinator_on(support::Backend::S3).await;
    // What a coordinator killed mid-upload leaves: a multipart upload with a part.
    let key = object_store::path::Path::from(format!("blobs/{}", sha256_hex(b"dead")));
    let mut upload = cluster.store.put_multipart(&key).await.unwrap();
    upload.put_part(vec![1u8; 5 << 20].into()).await.unwrap();
    drop(upload);
    let collect = |min_age_seconds: Option<u64>, dry_run| {
        support::collect_garbage(&cluster.channel, min_age_seconds, dry_run)
    };
    // (moto dates every multipart upload 2010, so age is tested on a directory only.)
    let dry = collect(Some(0), true).await;
    assert_eq!(
        (dry.deleted_staging_files, dry.deleted_staging_bytes),
        (1, 5 << 20)
    );
    assert_eq!(collect(Some(0), false).await.deleted_staging_files, 1);
    assert_eq!(
        collect(Some(0), true).await.deleted_staging_files,
        0,
        "aborted"
    );
    assert_eq!(cluster.stored_blobs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_quota_refuses_past_its_bytes_per_hour_per_token_on_every_replica() {
    let cluster = Cluster::coordinator_only().await;
    let quota = |config: &mut Config| config.upload_bytes_per_hour = 1000;
    let (one, two) = (
        replica(&cluster, quota).await,
        replica(&cluster, quota).await,
    );
    let alice = new_token(&cluster, &one.address, "alice", pb::Role::Submitter).await;
    let bob = new_token(&cluster, &one.address, "bob", pb::Role::Submitter).await;

    upload(&alice, &[&[1; 600]])
        .await
        .expect("600 of 1000 bytes");
    let before = cluster.row_counts().await;
    let second = [2u8; 600];
    let status = upload(&alice, &[&second]).await.unwrap_err();
    assert_mentions(
        &status,
        Code::ResourceExhausted,
        &[
            "upload quota: this token uploaded 600 bytes (600 B) in the last hour",
            "of the 1000 bytes (1000 B) it may upload per hour (--upload-bytes-per-hour)",
            &format!("blob {} of 600 bytes does not fit", sha256_hex(&second)),
            "; it fits from 20",
            " s)",
        ],
    );
    assert_eq!(cluster.row_counts().await, before);
    assert!(!store_files(&cluster).contains(&sha256_hex(&second)));
    // Another token is unaffected.
    upload(&bob, &[&second]).await.expect("bob's own quota");

    // Usage is the database's: what one replica let in counts on the other.
    let secret = support::create_token(&cluster.channel, "erin", pb::Role::Submitter).await;
    let erin_on_one = support::connect_as(&one.address, Some(&secret));
    let erin_on_two = support::connect_as(&two.address, Some(&secret));
    upload(&erin_on_one, &[&[3; 900]]).await.unwrap();
    let status = upload(&erin_on_two, &[&[4; 200]]).await.unwrap_err();
    assert_mentions(&status, Code::ResourceExhausted, &["uploaded 900 bytes"]);

    // An upload that dies is charged only what arrived.
    let carol = new_token(&cluster, &one.address, "carol", pb::Role::Submitter).await;
    let mut begun = chunks_of(&[5; 900]);
    begun[0].last = false;
    begun[0].data = begun[0].data.slice(..100);
    // 100 of 900 declared bytes, then the stream ends.
    let status = ArtifactServiceClient::new(carol.clone())
        .upload_blobs(tokio_stream::iter(vec![begun.remove(0)]))
        .await
        .unwrap_err();
    assert_mentions(
        &status,
        Code::InvalidArgument,
        &["the stream ended inside blob"],
    );
    upload(&carol, &[&[6; 900]])
        .await
        .expect("100 bytes charged, not 900");

    // A blob larger than the quota itself never fits.
    let dave = new_token(&cluster, &one.address, "dave", pb::Role::Submitter).await;
    let status = upload(&dave, &[&[7; 1001]]).await.unwrap_err();
    assert_mentions(
        &status,
        Code::ResourceExhausted,
        &["does not fit in any hour"],
    );

    // A worker token's uploads (checkpoints, outputs) count like any other.
    let worker = new_token(&cluster, &one.address, "pool", pb::Role::Worker).await;
    upload(&worker, &[&[8; 1000]]).await.unwrap();
    let status = upload(&worker, &[&[9; 1]]).await.unwrap_err();
    assert_mentions(&status, Code::ResourceExhausted, &["uploaded 1000 bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holds_quota_refuses_past_its_blobs_per_token() {
    let cluster = Cluster::coordinator_only().await;
    let limited = replica(&cluster, |config| config.max_held_blobs = 3).await;
    let alice = new_token(&cluster, &limited.address, "alice", pb::Role::Submitter).await;
    let bob = new_token(&cluster, &limited.address, "bob", pb::Role::Submitter).await;
    let hash = |n: u8| sha256_hex(&[n]);
    let ask = |channel: &Connection, hashes: Vec<String>| {
        let mut client = ArtifactServiceClient::new(channel.clone());
        async move {
            client
                .missing_blobs(pb::MissingBlobsRequest { sha256: hashes })
                .await
                .map(|answer| answer.into_inner().sha256)
        }
    };
    let held = |token: &'static str| {
        let pool = cluster.pool.clone();
        async move {
            let (count,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM blob_holds h JOIN tokens t ON t.id = h.token_id
                  WHERE t.name = $1",
            )
            .bind(token)
            .fetch_one(&pool)
            .await
            .unwrap();
            count
        }
    };

    ask(&alice, vec![hash(1), hash(2)]).await.unwrap();
    // Asking again about a blob it holds renews the hold and takes no more room.
    ask(&alice, vec![hash(2), hash(3), hash(3)]).await.unwrap();
    assert_eq!(held("alice").await, 3);
    let before = cluster.row_counts().await;
    let status = ask(&alice, vec![hash(3), hash(4)]).await.unwrap_err();
    assert_mentions(
        &status,
        Code::ResourceExhausted,
        &[
            "holds quota: this token holds 3 blobs from garbage collection",
            "of the 3 it may hold (--max-held-blobs); 1 more do not fit",
            "; they fit from 20",
        ],
    );
    assert_eq!(cluster.row_counts().await, before);
    assert_eq!(held("alice").await, 3, "nothing of a refused call is held");
    let status = ask(&alice, (10..14).map(hash).collect()).await.unwrap_err();
    assert_mentions(
        &status,
        Code::ResourceExhausted,
        &["at once; ask about fewer"],
    );

    // Another token holds the same blobs, and its own.
    ask(&bob, vec![hash(1), hash(4), hash(5)]).await.unwrap();
    assert_eq!(held("bob").await, 3);

    // Holds that ended make room again.
    sqlx::query(
        "UPDATE blob_holds SET held_until = now() - interval '1 second'
          WHERE sha256 = $1 AND token_id = (SELECT id FROM tokens WHERE name = 'alice')",
    )
    .bind(hash(1))
    .execute(&cluster.pool)
    .await
    .unwrap();
    ask(&alice, vec![hash(4)]).await.expect("a hold ended");
}

/// `heirloom ARGS` against `address` with `token`, in `dir`: (exit status, stdout, stderr).
fn heirloom(address: &str, token: &str, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(support::workspace_binary("heirloom"))
        .args(["--coordinator", address, "--ca-cert"])
        .arg(support::certificates().join(heirloom_client::certificates::CA_CERT))
        .env("HEIRLOOM_TOKEN", token)
        .env_remove("HEIRLOOM_OUTPUT")
        .current_dir(dir)
        .stdin(Stdio::null())
        .args(args)
        .output()
        .expect("run the CLI");
    (
        output.status.code().expect("an exit status"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_the_limit_before_it_uploads_and_the_server_s_words_after() {
    let cluster = Cluster::coordinator_only().await;
    let small = replica(&cluster, |config| config.max_blob_bytes = 1024).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.safetensors"), vec![1u8; 2048]).unwrap();
    let weights = support::mlp_weights(64, 16, 5, [0.0; 4]);
    std::fs::write(dir.path().join("weights.safetensors"), &weights).unwrap();
    let run = |address: String, args: &'static [&'static str]| {
        let (token, dir) = (cluster.admin_token.clone(), dir.path().to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || heirloom(&address, &token, &dir, args))
                .await
                .unwrap()
        }
    };

    let (status, stdout, stderr) = run(
        small.address.clone(),
        &["dataset", "register", "big", "big.safetensors"],
    )
    .await;
    assert_eq!((status, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: big.safetensors is 2.0 KiB; the coordinator takes blobs of at most 1.0 KiB \
         (1024 bytes)"
    );
    // A model's tensors are blobs: the one over the limit (16 x 64 floats) is named.
    let (status, _, stderr) = run(
        small.address.clone(),
        &[
            "model",
            "import",
            "root",
            "--arch",
            r#"{"mlp": {"input_features": 64, "hidden": [16], "num_classes": 5}}"#,
            "--weights",
            "weights.safetensors",
        ],
    )
    .await;
    assert_eq!(status, 1, "{stderr}");
    assert!(
        stderr.contains(
            "error: weights.safetensors: tensor hidden.0.weight is 4.0 KiB; the coordinator \
             takes blobs of at most 1.0 KiB (1024 bytes)"
        ),
        "{stderr}"
    );
    assert_eq!(
        store_files(&cluster),
        Vec::<String>::new(),
        "nothing was sent"
    );

    // Refused mid-upload (here by the upload quota, at the first of 32 chunks): the
    // server's words, not a transport error.
    let quota = replica(&cluster, |config| config.upload_bytes_per_hour = 1 << 20).await;
    std::fs::write(dir.path().join("large.safetensors"), vec![2u8; 64 << 20]).unwrap();
    let (status, _, stderr) = run(
        quota.address.clone(),
        &["dataset", "register", "large", "large.safetensors"],
    )
    .await;
    assert_eq!(status, 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ResourceExhausted: upload quota: this token uploaded 0 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("transport error"), "{stderr}");
}
