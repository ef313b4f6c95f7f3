//! Connection hygiene against the coordinator binary: idle connections over the cap never
//! lock out health checks or real calls, one address cannot hold more than its share, a
//! connection that never calls and one left idle are closed, and when every connection
//! is busy a few more are let in for health checks alone.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use std::time::{Duration, Instant};
use support::metrics::{sample, sample_or_none, scrape};
use support::{Connection, CoordinatorProcess, connect_as, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A coordinator with `flags` and a metrics port; returns it with the metrics port.
async fn coordinator(flags: &[&str]) -> (CoordinatorProcess, u16) {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut all = vec!["--metrics-listen", &metrics];
    all.extend_from_slice(flags);
    let process = CoordinatorProcess::start(support::fresh_database().await, &all).await;
    (process, metrics_port)
}

/// A TCP connection to `port` from `source` (any 127.0.0.0/8 address) that sends nothing.
async fn idle_connection(source: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("connect")
}

/// Whether the coordinator has closed `stream` (its read ends or fails within `wait`).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn count_closed(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    for stream in streams {
        if closed_within(stream, Duration::from_millis(20)).await {
            closed += 1;
        }
    }
    closed
}

/// One health check on a fresh connection; its status and how long it took.
async fn health(address: &str) -> (Result<ServingStatus, tonic::Status>, Duration) {
    let started = Instant::now();
    let mut client = HealthClient::new(connect_as(address, None));
    let answer = within_five_seconds(client.check(HealthCheckRequest::default()))
        .await
        .map(|response| response.into_inner().status());
    (answer, started.elapsed())
}

/// One authenticated call (ListModels) on a fresh connection, and how long it took.
async fn list_models(address: &str, token: &str) -> (Result<usize, tonic::Status>, Duration) {
    let started = Instant::now();
    let mut client = ModelServiceClient::new(connect_as(address, Some(token)));
    let answer = within_five_seconds(client.list_models(pb::ListModelsRequest {}))
        .await
        .map(|response| response.into_inner().models.len());
    (answer, started.elapsed())
}

/// A call's answer, or DEADLINE_EXCEEDED when it takes over five seconds (a coordinator
/// out of descriptors accepts nothing, and a call to it would hang).
async fn within_five_seconds<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 5 s")))
}

/// A connection with a new worker token (and the worker certificate).
async fn worker_connection(coordinator: &CoordinatorProcess) -> Connection {
    let token = support::create_token(&coordinator.admin(), "workers", pb::Role::Worker).await;
    connect_as(&coordinator.address(), Some(&token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_over_the_cap_never_lock_out_health_or_calls() {
    let (coordinator, metrics_port) =
        coordinator(&["--max-connections", "64", "--first-call-seconds", "60"]).await;
    let address = coordinator.address();
    let admin = coordinator.admin();
    // A worker's assignment stream: a call in flight the whole time, never evicted.
    let worker = worker_connection(&coordinator).await;
    let (worker_id, mut assignments) = support::scripted_worker(&worker, "steady").await;

    // Three times the cap in silent connections, then some that made one call and idle.
    let mut silent = Vec::new();
    for _ in 0..192 {
        silent.push(idle_connection("127.0.0.1", coordinator.port).await);
    }
    let mut called_once = Vec::new();
    for _ in 0..16 {
        let connection = connect_as(&address, None);
        let _ = HealthClient::new(connection.clone())
            .check(HealthCheckRequest::default())
            .await;
        called_once.push(connection);
    }

    let (status, health_took) = health(&address).await;
    assert_eq!(status.expect("health answers"), ServingStatus::Serving);
    let token = coordinator.admin_token();
    let (models, call_took) = list_models(&address, &token).await;
    assert_eq!(models.expect("an authenticated call answers"), 0);
    println!(
        "at the cap of 64 with {} idle connections opened: health {health_took:?}, \
         ListModels {call_took:?}",
        silent.len() + called_once.len()
    );
    assert!(health_took < Duration::from_secs(1), "{health_took:?}");
    assert!(call_took < Duration::from_secs(1), "{call_took:?}");

    let closed = count_closed(&mut silent).await;
    assert!(
        closed >= 192 - 64,
        "only {closed} of 192 idle connections were closed"
    );
    let metrics = scrape(metrics_port).await;
    let evicted = sample(
        &metrics,
        "heirloom_connections_closed_total{listener=\"grpc\",reason=\"evicted_at_cap\"}",
    );
    assert!(evicted >= (192 - 64) as f64, "{evicted}");
    let open = sample(&metrics, "heirloom_connections_open{listener=\"grpc\"}");
    assert!(open <= 64.0, "{open} connections open over a cap of 64");

    // The worker's stream was never idle, so never evicted: it still gets its job.
    let job = JobServiceClient::new(admin.clone())
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Train.into(),
                model_name: "after-the-flood".into(),
                dataset_id: support::register_dataset_at(
                    &admin,
                    "flood",
                    support::blobs(0..2, 8, 1),
                )
                .await
                .id,
                architecture: Some(support::mlp(support::FEATURES as u32, vec![4], 2)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .unwrap();
    let assignment = tokio::time::timeout(Duration::from_secs(10), assignments.message())
        .await
        .expect("the worker's stream still delivers")
        .expect("the stream is open")
        .expect("an assignment");
    assert_eq!(assignment.job_id, job.id, "worker {worker_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_never_takes_the_last_file_descriptor() {
    // 300 descriptors: the cap falls to 172, under what the flood would take.
    let database_url = support::fresh_database().await;
    let coordinator =
        CoordinatorProcess::start_under(&["prlimit", "--nofile=300:300", "--"], database_url, &[])
            .await;
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(idle_connection("127.0.0.1", coordinator.port).await);
    }
    let (status, health_took) = health(&coordinator.address()).await;
    assert_eq!(status.expect("health answers"), ServingStatus::Serving);
    let (models, call_took) = list_models(&coordinator.address(), &coordinator.admin_token()).await;
    assert!(models.is_ok(), "{models:?}");
    println!(
        "400 idle connections against 300 descriptors: health {health_took:?}, ListModels {call_took:?}"
    );
    assert!(health_took < Duration::from_secs(1) && call_took < Duration::from_secs(1));
    assert!(count_closed(&mut flood).await >= 400 - 172);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share() {
    let (coordinator, metrics_port) = coordinator(&[
        "--max-connections-per-peer",
        "20",
        "--first-call-seconds",
        "60",
    ])
    .await;
    let mut from_other = Vec::new();
    for _ in 0..50 {
        from_other.push(idle_connection("127.0.0.2", coordinator.port).await);
    }
    // The newest twenty are left; the thirty before them made room.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count_closed(&mut from_other[..30]).await, 30);
    assert_eq!(count_closed(&mut from_other[30..]).await, 0);
    let token = coordinator.admin_token();
    let (models, took) = list_models(&coordinator.address(), &token).await;
    assert!(
        models.is_ok() && took < Duration::from_secs(1),
        "{models:?} {took:?}"
    );
    let metrics = scrape(metrics_port).await;
    assert_eq!(
        sample(
            &metrics,
            "heirloom_connections_closed_total{listener=\"grpc\",reason=\"evicted_at_peer_cap\"}"
        ),
        30.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_calls_and_one_left_idle_are_closed() {
    let (coordinator, metrics_port) =
        coordinator(&["--first-call-seconds", "1", "--idle-timeout-seconds", "2"]).await;
    let address = coordinator.address();
    // Silent, and a TLS handshake begun and never finished.
    let mut silent = idle_connection("127.0.0.1", coordinator.port).await;
    let mut half_handshake = idle_connection("127.0.0.1", coordinator.port).await;
    half_handshake
        .write_all(&[0x16, 0x03, 0x01, 0x02])
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).await);
    assert!(closed_within(&mut half_handshake, Duration::from_secs(4)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "closed after {took:?}, before the deadline"
    );

    // A worker's stream outlives the idle timeout: a call is in flight on it.
    let worker = worker_connection(&coordinator).await;
    let (_, mut assignments) = support::scripted_worker(&worker, "steady").await;
    // A client that made one call and then went quiet.
    let quiet = connect_as(&address, None);
    HealthClient::new(quiet.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = scrape(metrics_port).await;
    assert!(
        sample(
            &metrics,
            "heirloom_connections_closed_total{listener=\"grpc\",reason=\"idle\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "heirloom_connections_closed_total{listener=\"grpc\",reason=\"no_call_in_time\"}"
        ) >= 2.0
    );
    // The quiet client reconnects on its next call.
    HealthClient::new(quiet)
        .check(HealthCheckRequest::default())
        .await
        .expect("a closed idle connection is opened again");
    // And the worker's stream is still open: it ends only when the coordinator does.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), assignments.message())
            .await
            .is_err(),
        "the assignment stream ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_health_still_answers() {
    let (coordinator, metrics_port) =
        coordinator(&["--max-connections", "6", "--first-call-seconds", "60"]).await;
    let address = coordinator.address();
    let token = coordinator.admin_token();
    let worker_token =
        support::create_token(&coordinator.admin(), "workers", pb::Role::Worker).await;
    // Six connections, each with a call in flight: a worker's assignment stream apiece.
    let mut busy = Vec::new();
    for index in 0..6 {
        let connection = connect_as(&address, Some(&worker_token));
        busy.push(support::scripted_worker(&connection, &format!("busy-{index}")).await);
    }
    let (status, took) = health(&address).await;
    assert_eq!(
        status.expect("health answers at the cap"),
        ServingStatus::Serving
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (refused, _) = list_models(&address, &token).await;
    let refused = refused.expect_err("only health is served over the cap");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("connection cap"),
        "{}",
        refused.message()
    );
    let metrics = scrape(metrics_port).await;
    assert_eq!(
        sample_or_none(
            &metrics,
            "heirloom_connections_closed_total{listener=\"grpc\",reason=\"evicted_at_cap\"}"
        ),
        None,
        "a busy connection was evicted"
    );
    drop(busy);
}
