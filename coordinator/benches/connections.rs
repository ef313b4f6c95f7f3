//! The connection load test (RELIABILITY.md), not a timed test: the coordinator's release
//! binary (TLS, tokens) holds `CONNECTIONS` client connections that each made one call
//! and then idle, while `RATE` calls a second — health checks and authenticated
//! ListModels, half each — arrive for `SECONDS`; then as many silent TCP connections
//! again as the cap allows arrive on top. It reports call latency, errors, the
//! coordinator's resident memory and open descriptors, and how many connections the caps
//! closed. Loopback only, bounded in count and time. Run with `bench/connections.sh`;
//! `HEIRLOOM_LOAD_CONNECTIONS`, `HEIRLOOM_LOAD_RATE` and `HEIRLOOM_LOAD_SECONDS` change
//! the defaults.

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use heirloom_testing as support;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::metrics::{sample_or_none, scrape};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The coordinator's resident memory (MiB) and open file descriptors.
fn footprint(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0);
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    (rss_kib / 1024.0, descriptors)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let connections = setting("HEIRLOOM_LOAD_CONNECTIONS", 2_000) as usize;
    let rate = setting("HEIRLOOM_LOAD_RATE", 200);
    let seconds = setting("HEIRLOOM_LOAD_SECONDS", 60);
    let metrics_port = support::free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let max = (connections + 64).to_string();
    let coordinator = support::CoordinatorProcess::start(
        support::fresh_database().await,
        &[
            "--metrics-listen",
            &metrics_listen,
            "--max-connections",
            &max,
        ],
    )
    .await;
    let pid = coordinator.pid();
    let (address, token) = (coordinator.address(), coordinator.admin_token());
    let (idle_mib, idle_fds) = footprint(pid);

    // The held connections: each makes one call (so it is not closed as silent) and idles.
    let opened = Instant::now();
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        let connection = support::connect_as(&address, None);
        HealthClient::new(connection.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("a held connection's first call");
        held.push(connection);
    }
    let opening = opened.elapsed();
    let (held_mib, held_fds) = footprint(pid);
    println!(
        "{connections} connections opened (TLS, one call each) in {:.1} s: RSS {idle_mib:.0} → \
         {held_mib:.0} MiB ({:.1} KiB a connection), descriptors {idle_fds} → {held_fds}",
        opening.as_secs_f64(),
        (held_mib - idle_mib) * 1024.0 / connections as f64
    );

    // The load: RATE calls a second on eight busy connections, for SECONDS.
    let callers: Vec<_> = (0..8)
        .map(|_| support::connect_as(&address, Some(&token)))
        .collect();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut peak_mib: f64 = held_mib;
    let mut last_sample = Instant::now();
    let mut calls = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let connection = callers[calls as usize % callers.len()].clone();
        let (latencies, errors) = (latencies.clone(), errors.clone());
        let health = calls.is_multiple_of(2);
        calls += 1;
        tasks.spawn(async move {
            let begun = Instant::now();
            let result = if health {
                HealthClient::new(connection)
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|_| ())
            } else {
                ModelServiceClient::new(connection)
                    .list_models(pb::ListModelsRequest {})
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => latencies.lock().unwrap().push(begun.elapsed()),
                Err(status) => errors.lock().unwrap().push(status.code()),
            }
        });
        while tasks.try_join_next().is_some() {}
        if last_sample.elapsed() > Duration::from_secs(1) {
            peak_mib = peak_mib.max(footprint(pid).0);
            last_sample = Instant::now();
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let errors = errors.lock().unwrap().clone();
    let still_open = held.len();
    println!(
        "| held connections | calls/s asked | calls/s done | p50 ms | p99 ms | max ms | \
         errors | RSS held → peak MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {still_open} | {rate} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {held_mib:.0} → {peak_mib:.0} |",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        errors.len(),
    );
    if !errors.is_empty() {
        println!("errors: {:?}", &errors[..errors.len().min(10)]);
    }

    // Over the cap: as many silent connections again; health and a call still answer.
    let mut silent = Vec::new();
    for _ in 0..connections {
        match tokio::net::TcpStream::connect(("127.0.0.1", coordinator.port)).await {
            Ok(stream) => silent.push(stream),
            Err(err) => {
                println!("client could not open more connections: {err}");
                break;
            }
        }
    }
    let begun = Instant::now();
    HealthClient::new(support::connect_as(&address, None))
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers over the cap");
    let health_ms = begun.elapsed().as_secs_f64() * 1e3;
    let begun = Instant::now();
    ModelServiceClient::new(support::connect_as(&address, Some(&token)))
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("a call answers over the cap");
    let call_ms = begun.elapsed().as_secs_f64() * 1e3;
    let (over_mib, over_fds) = footprint(pid);
    let metrics = scrape(metrics_port).await;
    let closed: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("heirloom_connections_closed_total{listener=\"grpc\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let open =
        sample_or_none(&metrics, "heirloom_connections_open{listener=\"grpc\"}").unwrap_or(0.0);
    println!(
        "{} silent connections more over a cap of {max}: health {health_ms:.1} ms, ListModels \
         {call_ms:.1} ms; {closed} closed by the caps, {open} open; RSS {over_mib:.0} MiB, descriptors {over_fds}",
        silent.len()
    );
}
