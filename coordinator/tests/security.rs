//! Every refusal of the security model, each with its status and nothing written: no
//! token, the wrong role, a revoked or expired token, a worker acting for another
//! worker or on another's lease, a download no lease needs, an oversized message,
//! malformed safetensors, names that try to become paths, and TLS that is not the
//! coordinator's.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use heirloom_proto::v1::token_service_client::TokenServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use std::time::Duration;
use support::{Cluster, Connection, blobs, connect_as, create_token, mlp, refused};
use tonic::Code;

fn training(name: &str, dataset_id: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: name.into(),
            dataset_id: dataset_id.into(),
            architecture: Some(mlp(64, vec![8], 5)),
            hyperparameters: support::hyperparameters(1, None),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn list_models() -> pb::ListModelsRequest {
    pb::ListModelsRequest {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_or_the_right_role_are_refused() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let address = cluster.address.clone();
    let as_token = |token: &str| connect_as(&address, Some(token));

    // No token at all: everything but health is UNAUTHENTICATED.
    let anonymous = connect_as(&address, None);
    refused(
        &cluster,
        ModelServiceClient::new(anonymous.clone()).list_models(list_models()),
        Code::Unauthenticated,
        "no token",
    )
    .await;
    refused(
        &cluster,
        JobServiceClient::new(anonymous.clone()).submit_job(training("anon", &dataset.id)),
        Code::Unauthenticated,
        "no token",
    )
    .await;
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is open");
    assert_eq!(
        health.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    refused(
        &cluster,
        ModelServiceClient::new(as_token("heirloom_not-a-real-token-but-long-enough"))
            .list_models(list_models()),
        Code::Unauthenticated,
        "unknown, revoked or expired",
    )
    .await;

    // Reflection needs a token too; a reader may list the services.
    refused(
        &cluster,
        reflection_services(anonymous.clone()),
        Code::Unauthenticated,
        "no token",
    )
    .await;
    let reader = create_token(&cluster.channel, "reader", pb::Role::Reader).await;
    let services = reflection_services(as_token(&reader)).await.unwrap();
    for service in ["heirloom.v1.ModelService", "heirloom.v1.TokenService"] {
        assert!(services.iter().any(|s| s == service), "{services:?}");
    }

    // The wrong role: PERMISSION_DENIED naming the roles that may.
    ModelServiceClient::new(as_token(&reader))
        .list_models(list_models())
        .await
        .expect("a reader reads");
    refused(
        &cluster,
        JobServiceClient::new(as_token(&reader)).submit_job(training("by-reader", &dataset.id)),
        Code::PermissionDenied,
        "needs a token with role admin or submitter; this one (reader) has role reader",
    )
    .await;
    let submitter = create_token(&cluster.channel, "submitter", pb::Role::Submitter).await;
    refused(
        &cluster,
        TokenServiceClient::new(as_token(&submitter)).create_token(pb::CreateTokenRequest {
            name: "escalated".into(),
            role: pb::Role::Admin.into(),
            ttl_seconds: 0,
        }),
        Code::PermissionDenied,
        "role admin",
    )
    .await;
    refused(
        &cluster,
        ArtifactServiceClient::new(as_token(&submitter))
            .collect_garbage(pb::CollectGarbageRequest::default()),
        Code::PermissionDenied,
        "role admin",
    )
    .await;
    refused(
        &cluster,
        WorkerServiceClient::new(as_token(&submitter)).register_worker(pb::RegisterWorkerRequest {
            name: "impostor".into(),
            ..Default::default()
        }),
        Code::PermissionDenied,
        "role worker",
    )
    .await;
    // A worker token runs jobs; it reads no lineage and submits nothing.
    refused(
        &cluster,
        ModelServiceClient::new(cluster.worker_connection()).list_models(list_models()),
        Code::PermissionDenied,
        "has role worker",
    )
    .await;
    refused(
        &cluster,
        JobServiceClient::new(cluster.worker_connection())
            .submit_job(training("by-worker", &dataset.id)),
        Code::PermissionDenied,
        "has role worker",
    )
    .await;
    JobServiceClient::new(as_token(&submitter))
        .submit_job(training("by-submitter", &dataset.id))
        .await
        .expect("a submitter submits");
}

/// The services reflection lists, with the connection's token.
async fn reflection_services(channel: Connection) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_tokens_are_refused_at_once() {
    let cluster = Cluster::coordinator_only().await;
    let address = cluster.address.clone();
    let mut admin = TokenServiceClient::new(cluster.channel.clone());

    let reader = create_token(&cluster.channel, "soon-revoked", pb::Role::Reader).await;
    let mut models = ModelServiceClient::new(connect_as(&address, Some(&reader)));
    models.list_models(list_models()).await.expect("valid");
    let revoked = admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "soon-revoked".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(!revoked.revoked_at.is_empty());
    refused(
        &cluster,
        models.list_models(list_models()),
        Code::Unauthenticated,
        "unknown, revoked or expired",
    )
    .await;
    // Another replica, which cached a token, drops it on the revocation's NOTIFY.
    let replica = cluster.replica().await;
    let cached = create_token(&cluster.channel, "cached-elsewhere", pb::Role::Reader).await;
    let mut on_replica = ModelServiceClient::new(connect_as(&replica, Some(&cached)));
    on_replica
        .list_models(list_models())
        .await
        .expect("valid, and now cached");
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "cached-elsewhere".into(),
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while on_replica.list_models(list_models()).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the replica still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A revoked name is free again; the old secret stays dead.
    let again = create_token(&cluster.channel, "soon-revoked", pb::Role::Reader).await;
    assert_ne!(again, reader);
    refused(
        &cluster,
        models.list_models(list_models()),
        Code::Unauthenticated,
        "revoked",
    )
    .await;

    // A token with a time to live stops working when it runs out.
    let brief = admin
        .create_token(pb::CreateTokenRequest {
            name: "brief".into(),
            role: pb::Role::Reader.into(),
            ttl_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!brief.token.unwrap().expires_at.is_empty());
    let mut brief_models = ModelServiceClient::new(connect_as(&address, Some(&brief.secret)));
    brief_models
        .list_models(list_models())
        .await
        .expect("valid");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refused(
        &cluster,
        brief_models.list_models(list_models()),
        Code::Unauthenticated,
        "expired",
    )
    .await;

    // Bad token requests name the field; the last admin cannot be revoked.
    refused(
        &cluster,
        admin.create_token(pb::CreateTokenRequest {
            name: "../../etc/passwd".into(),
            role: pb::Role::Reader.into(),
            ttl_seconds: 0,
        }),
        Code::InvalidArgument,
        "name",
    )
    .await;
    refused(
        &cluster,
        admin.create_token(pb::CreateTokenRequest {
            name: "roleless".into(),
            role: pb::Role::Unspecified.into(),
            ttl_seconds: 0,
        }),
        Code::InvalidArgument,
        "role",
    )
    .await;
    let me = admin
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(me.role(), pb::Role::Admin);
    refused(
        &cluster,
        admin.revoke_token(pb::RevokeTokenRequest {
            token: me.id.clone(),
        }),
        Code::FailedPrecondition,
        "last working admin token",
    )
    .await;
    refused(
        &cluster,
        admin.revoke_token(pb::RevokeTokenRequest {
            token: "no-such-token".into(),
        }),
        Code::NotFound,
        "no-such-token",
    )
    .await;
    let listed = admin
        .list_tokens(pb::ListTokensRequest {
            include_revoked: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(
        listed
            .iter()
            .any(|t| t.name == "soon-revoked" && !t.revoked_at.is_empty())
    );
    assert!(listed.iter().all(|t| !t.name.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_token_acts_only_for_its_own_workers_and_leases() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mallory_token = create_token(&cluster.channel, "mallory", pb::Role::Worker).await;
    let honest = cluster.worker_connection();
    let mallory = connect_as(&cluster.address, Some(&mallory_token));

    let (honest_id, mut honest_assignments) = support::scripted_worker(&honest, "honest").await;
    let job = cluster
        .submit(training("victim", &dataset.id).spec.unwrap())
        .await;
    let assignment = tokio::time::timeout(Duration::from_secs(10), honest_assignments.message())
        .await
        .expect("assigned in time")
        .unwrap()
        .expect("an assignment");
    assert_eq!(assignment.job_id, job.id);
    let (mallory_id, _mallory_assignments) = support::scripted_worker(&mallory, "mallory").await;
    let mut as_mallory = WorkerServiceClient::new(mallory.clone());
    let forged_output = |worker_id: &str| pb::CompleteJobRequest {
        worker_id: worker_id.into(),
        job_id: job.id.clone(),
        attempt: assignment.attempt,
        result: Some(pb::complete_job_request::Result::Error("sabotage".into())),
        retryable: false,
    };

    // Speaking as the honest worker: PERMISSION_DENIED, whatever the call.
    refused(
        &cluster,
        as_mallory.complete_job(forged_output(&honest_id)),
        Code::PermissionDenied,
        "registered with another token",
    )
    .await;
    refused(
        &cluster,
        as_mallory.heartbeat(pb::HeartbeatRequest {
            worker_id: honest_id.clone(),
            leases: Vec::new(),
        }),
        Code::PermissionDenied,
        "registered with another token",
    )
    .await;
    refused(
        &cluster,
        as_mallory.stream_assignments(pb::StreamAssignmentsRequest {
            worker_id: honest_id.clone(),
        }),
        Code::PermissionDenied,
        "registered with another token",
    )
    .await;
    refused(
        &cluster,
        as_mallory.register_worker(pb::RegisterWorkerRequest {
            name: "hijack".into(),
            worker_id: honest_id.clone(),
            ..Default::default()
        }),
        Code::PermissionDenied,
        "registered with another token",
    )
    .await;
    // As itself, on a lease it does not hold: FAILED_PRECONDITION, nothing written.
    refused(
        &cluster,
        as_mallory.complete_job(forged_output(&mallory_id)),
        Code::FailedPrecondition,
        &job.id,
    )
    .await;
    // The honest worker with a stale fencing token is refused as well.
    let mut as_honest = WorkerServiceClient::new(honest.clone());
    refused(
        &cluster,
        as_honest.complete_job(pb::CompleteJobRequest {
            attempt: assignment.attempt + 1,
            ..forged_output(&honest_id)
        }),
        Code::FailedPrecondition,
        &job.id,
    )
    .await;

    // Downloads: only what the token's leases need.
    let dataset_blob = pb::DownloadBlobRequest {
        sha256: assignment.dataset_sha256.clone(),
        offset: 0,
    };
    refused(
        &cluster,
        download(mallory.clone(), dataset_blob.clone()),
        Code::PermissionDenied,
        "not needed by any job leased to this token's workers",
    )
    .await;
    let bytes = download(honest.clone(), dataset_blob)
        .await
        .expect("the lease holder downloads its dataset");
    assert_eq!(heirloom_core::sha256_hex(&bytes), assignment.dataset_sha256);

    let after = cluster.job(&job.id).await;
    assert_eq!(after.state(), pb::JobState::Leased, "the job is untouched");
    assert_eq!(after.attempt, assignment.attempt);
}

async fn download(
    channel: Connection,
    request: pb::DownloadBlobRequest,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = ArtifactServiceClient::new(channel)
        .download_blob(request)
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_path_like_input_is_refused() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let mut jobs = cluster.jobs();
    let mut models = cluster.models();
    let mut artifacts = ArtifactServiceClient::new(cluster.channel.clone());

    // A message past the service's limit (4 MiB for jobs) is refused before decoding.
    let mut huge = training("huge", &dataset.id);
    huge.request_id = "x".repeat(5 << 20);
    let before = cluster.row_counts().await;
    let status = jobs.submit_job(huge).await.expect_err("refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    assert_eq!(cluster.row_counts().await, before);

    // Safetensors that lie about themselves.
    let good = support::mlp_weights(64, 16, 5, [0.0; 4]);
    let header_length = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut malformed: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short", vec![1, 2, 3]),
        ("a header longer than the file", {
            let mut bytes = good.clone();
            bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            bytes
        }),
        ("a header that is not JSON", {
            let mut bytes = good.clone();
            bytes[8] = b'!';
            bytes
        }),
        ("a file cut short", good[..good.len() - 3].to_vec()),
    ];
    let mut overlapping = good.clone();
    let header = String::from_utf8(good[8..8 + header_length].to_vec()).unwrap();
    let shifted = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[4,", 1);
    if shifted != header && shifted.len() == header.len() {
        overlapping[8..8 + header_length].copy_from_slice(shifted.as_bytes());
        malformed.push(("offsets that do not tile the data", overlapping));
    }
    for (what, weights) in malformed {
        refused(
            &cluster,
            models.import_model(pb::ImportModelRequest {
                name: "malformed".into(),
                architecture: Some(mlp(64, vec![16], 5)),
                weights: weights.into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "weights",
        )
        .await;
        let _ = what;
    }

    // Names and keys that try to be paths.
    for name in ["../../etc/passwd", "a/b", "..", "x\0y", "/abs"] {
        refused(
            &cluster,
            models.import_model(pb::ImportModelRequest {
                name: name.into(),
                architecture: Some(mlp(64, vec![16], 5)),
                weights: good.clone().into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "name",
        )
        .await;
        refused(
            &cluster,
            jobs.submit_job(training(name, &dataset.id)),
            Code::InvalidArgument,
            "model_name",
        )
        .await;
    }
    for sha256 in [
        "../../../../etc/passwd",
        "blobs/../../x",
        &"A".repeat(64),
        &format!("{}/", "a".repeat(63)),
    ] {
        refused(
            &cluster,
            download(
                cluster.channel.clone(),
                pb::DownloadBlobRequest {
                    sha256: sha256.to_string(),
                    offset: 0,
                },
            ),
            Code::InvalidArgument,
            "sha256",
        )
        .await;
        refused(
            &cluster,
            artifacts.missing_blobs(pb::MissingBlobsRequest {
                sha256: vec![sha256.to_string()],
            }),
            Code::InvalidArgument,
            "sha256",
        )
        .await;
    }
}

/// A call that never reached a handler: the connection failed or was closed.
fn refused_by_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && std::error::Error::source(status).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_coordinator_s_tls_is_accepted() {
    let cluster = Cluster::coordinator_only().await;
    let list = |channel: Connection| async move {
        ModelServiceClient::new(channel)
            .list_models(list_models())
            .await
    };

    // Plain text to a TLS port fails; so does TLS that trusts another CA.
    let plain = support::ConnectArgs::to(cluster.address.replace("https://", "http://"))
        .connect_lazy_as(Some(&cluster.admin_token))
        .unwrap();
    let status = list(plain).await.expect_err("plain text is refused");
    assert!(refused_by_transport(&status), "{status:?}");
    let elsewhere = tempfile::tempdir().unwrap();
    heirloom_client::certificates::write_all(elsewhere.path(), &["127.0.0.1".into()]).unwrap();
    let mut strange_ca = support::ConnectArgs::to(cluster.address.clone());
    strange_ca.ca_cert = Some(elsewhere.path().join("ca.pem"));
    let status = list(
        strange_ca
            .connect_lazy_as(Some(&cluster.admin_token))
            .unwrap(),
    )
    .await
    .expect_err("a server the client's CA did not sign is refused");
    assert!(refused_by_transport(&status), "{status:?}");
    // An https address without a CA says what to pass.
    let error = support::ConnectArgs::to(cluster.address.clone())
        .connect_lazy_as(None)
        .expect_err("no CA given");
    assert!(error.to_string().contains("--ca-cert"), "{error}");

    // Mutual TLS for workers: a worker token without a client certificate is refused;
    // a client certificate from another CA does not get through the handshake.
    let mut no_certificate = support::connect_args(&cluster.address, false);
    no_certificate.client_cert = None;
    let status = WorkerServiceClient::new(
        no_certificate
            .connect_lazy_as(Some(&cluster.worker_token))
            .unwrap(),
    )
    .register_worker(pb::RegisterWorkerRequest {
        name: "certless".into(),
        ..Default::default()
    })
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
    let mut foreign_certificate = support::connect_args(&cluster.address, false);
    foreign_certificate.client_cert = Some(elsewhere.path().join("worker.pem"));
    foreign_certificate.client_key = Some(elsewhere.path().join("worker.key"));
    let status = list(
        foreign_certificate
            .connect_lazy_as(Some(&cluster.admin_token))
            .unwrap(),
    )
    .await
    .expect_err("a client certificate from another CA is refused");
    assert!(refused_by_transport(&status), "{status:?}");
    list(cluster.channel.clone())
        .await
        .expect("the real thing works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_tls_starts_only_when_told_to() {
    let cluster = Cluster::coordinator_only().await;
    let mut config = cluster.config().clone();
    config.tls_cert = None;
    config.tls_key = None;
    config.worker_client_ca = None;
    let error = heirloom_coordinator::Coordinator::build(&config)
        .await
        .err()
        .expect("refused without TLS");
    assert!(
        error.to_string().contains("--insecure-plaintext"),
        "{error}"
    );
    config.insecure_plaintext = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let coordinator = heirloom_coordinator::Coordinator::build(&config)
        .await
        .expect("starts when told to");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(coordinator.run(listener, shutdown.clone()));
    let plain = support::ConnectArgs::to(address)
        .connect_lazy_as(Some(&cluster.admin_token))
        .unwrap();
    // Still every call needs a token.
    ModelServiceClient::new(plain)
        .list_models(list_models())
        .await
        .expect("plain text, with a token");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_tokens_and_writes_certificates() {
    let cluster = Cluster::coordinator_only().await;
    let admin = cluster.admin_token.clone();
    let (ok, secret, _) = support::cli(
        &cluster,
        &admin,
        &["token", "create", "cli-reader", "--role", "reader"],
    );
    assert!(ok);
    let secret = secret.trim().to_string();
    assert!(
        secret.starts_with("heirloom_"),
        "only the secret on stdout: {secret:?}"
    );
    let (ok, whoami, _) = support::cli(&cluster, &secret, &["token", "whoami"]);
    assert!(
        ok && whoami.contains("cli-reader") && whoami.contains("reader"),
        "{whoami}"
    );
    let (ok, listed, _) = support::cli(&cluster, &admin, &["token", "list"]);
    assert!(
        ok && listed.contains("cli-reader") && listed.contains("NAME"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "secrets are never listed");
    let (ok, _, denied) = support::cli(&cluster, &secret, &["token", "list"]);
    assert!(!ok && denied.contains("PermissionDenied"), "{denied}");
    let (ok, _, _) = support::cli(&cluster, &admin, &["token", "revoke", "cli-reader"]);
    assert!(ok);
    let (ok, _, refused) = support::cli(&cluster, &secret, &["token", "whoami"]);
    assert!(!ok && refused.contains("Unauthenticated"), "{refused}");
    let (ok, listed, _) = support::cli(&cluster, &admin, &["token", "list", "--all"]);
    assert!(ok && listed.contains("revoked"), "{listed}");

    let dir = tempfile::tempdir().unwrap();
    let (ok, said, _) = support::cli(&cluster, &admin, &["certs", dir.path().to_str().unwrap()]);
    assert!(ok, "{said}");
    for file in [
        "ca.pem",
        "coordinator.pem",
        "coordinator.key",
        "worker.pem",
        "worker.key",
    ] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("coordinator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "private keys are readable by their owner only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_token_is_refused_stops_instead_of_retrying() {
    let cluster = Cluster::coordinator_only().await;
    let cache = tempfile::tempdir().unwrap();
    let reader = create_token(&cluster.channel, "not-a-worker", pb::Role::Reader).await;
    for token in [
        "heirloom_never-issued-token-of-some-length",
        reader.as_str(),
    ] {
        let mut worker = support::worker_process(&cluster.address, token, cache.path(), &[]);
        let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
            .await
            .expect("the worker stops by itself")
            .unwrap();
        assert!(!status.success(), "it exits with an error");
    }
    let (workers,): (i64,) = sqlx::query_as("SELECT count(*) FROM workers")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "no worker was registered");
}
