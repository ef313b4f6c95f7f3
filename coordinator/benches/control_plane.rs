//! The control plane, not a timed test: how long a submitted job takes to reach an idle
//! worker, how many jobs per second the queue moves (claim + complete), and what a
//! thousand connected workers cost the coordinator. Runs the coordinator's binary as
//! deployed (TLS, tokens, mutual TLS for workers) against the PostgreSQL that
//! `bench/control_plane.sh` starts; workers are simulated over gRPC in this process, and
//! every job is a real `direct` copy of a small parent whose completion is verified and
//! written as a model with its lineage. Run with `bench/control_plane.sh`.

use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use heirloom_testing as support;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Streaming;

const LATENCY_JOBS: usize = 300;
const THROUGHPUT_JOBS: usize = 2_000;
const THROUGHPUT_WORKERS: usize = 8;
const IDLE_WORKERS: usize = 1_000;
const IDLE_SECONDS: u64 = 30;

struct Coordinator {
    child: Child,
    address: String,
    admin_token: String,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    async fn start(database_url: &str) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_heirloom-coordinator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .arg("--artifacts")
            .arg(dir.path().join("artifacts"))
            .args(support::coordinator_tls_flags())
            .arg("--admin-token-file")
            .arg(dir.path().join("admin.token"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the coordinator binary");
        let address = format!("https://127.0.0.1:{port}");
        let admin_token =
            support::wait_for_coordinator(&address, &dir.path().join("admin.token")).await;
        Coordinator {
            child,
            address,
            admin_token,
            _dir: dir,
        }
    }

    /// A worker's connection: `token`, with the client certificate.
    fn connect(&self, token: &str) -> Connection {
        support::connect_as(&self.address, Some(token))
    }

    fn admin(&self) -> Connection {
        support::connect_args(&self.address, false)
            .connect_lazy_as(Some(&self.admin_token))
            .unwrap()
    }

    /// Seconds of CPU the coordinator process has used, and its resident memory.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        (ticks / 100.0, rss_kib * 1024)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker played by this process: registered, its assignment stream open.
struct Simulated {
    client: WorkerServiceClient<Connection>,
    id: String,
    assignments: Streaming<pb::Assignment>,
}

impl Simulated {
    async fn register(channel: Connection, name: &str, concurrency: u32) -> Simulated {
        let mut client = WorkerServiceClient::new(channel);
        let id = client
            .register_worker(pb::RegisterWorkerRequest {
                name: name.into(),
                devices: vec![pb::Device {
                    name: "cpu".into(),
                    memory_bytes: 0,
                }],
                concurrency: Some(concurrency),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let assignments = client
            .stream_assignments(pb::StreamAssignmentsRequest {
                worker_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        Simulated {
            client,
            id,
            assignments,
        }
    }

    async fn complete(&mut self, assignment: &pb::Assignment) {
        complete(&mut self.client, &self.id, assignment).await;
    }
}

/// Completes a direct copy: every tensor inherited from the one parent, as is.
async fn complete(
    client: &mut WorkerServiceClient<Connection>,
    worker_id: &str,
    assignment: &pb::Assignment,
) {
    let parent = &assignment.parents[0];
    let tensors = parent
        .tensors
        .iter()
        .map(|tensor| pb::TensorProvenance {
            name: tensor.name.clone(),
            sha256: tensor.sha256.clone(),
            status: pb::TensorStatus::Inherited.into(),
            origin_model_id: parent.model_id.clone(),
            origin_tensor: tensor.name.clone(),
            dtype: tensor.dtype.clone(),
            shape: tensor.shape.clone(),
            ..Default::default()
        })
        .collect();
    client
        .complete_job(pb::CompleteJobRequest {
            worker_id: worker_id.into(),
            job_id: assignment.job_id.clone(),
            attempt: assignment.attempt,
            result: Some(pb::complete_job_request::Result::Output(pb::JobOutput {
                tensors,
                metrics: None,
            })),
            retryable: false,
        })
        .await
        .expect("the completion is accepted");
}

fn copy_job(name: String, parent_id: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            kind: pb::JobKind::Direct.into(),
            model_name: name,
            parent_id: parent_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let coordinator = Coordinator::start(&support::fresh_database().await).await;
    let admin = coordinator.admin();
    let worker_token = support::create_token(&admin, "bench-workers", pb::Role::Worker).await;
    let parent = support::import_model_at(
        &admin,
        "parent",
        support::mlp(8, vec![16], 5),
        support::mlp_weights(8, 16, 5, [0.0; 4]),
    )
    .await;
    let mut jobs = JobServiceClient::new(admin.clone());
    println!(
        "coordinator: {} (TLS, tokens, mutual TLS for workers)",
        coordinator.address
    );

    // Phases named on the command line (`-- throughput`), or all three.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let runs = |phase: &str| named.is_empty() || named.iter().any(|name| name == phase);
    if runs("latency") {
        latency(&coordinator, &worker_token, &mut jobs, &parent.id).await;
    }
    if runs("throughput") {
        let count = std::env::var("HEIRLOOM_BENCH_QUEUE_JOBS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(THROUGHPUT_JOBS);
        throughput(&coordinator, &worker_token, &mut jobs, &parent.id, count).await;
    }
    if runs("idle") {
        idle_workers(&coordinator, &worker_token).await;
    }
}

/// Submit → an idle worker has the job: four idle workers, one job at a time.
async fn latency(
    coordinator: &Coordinator,
    worker_token: &str,
    jobs: &mut JobServiceClient<Connection>,
    parent_id: &str,
) {
    let mut idle = Vec::new();
    for i in 0..4 {
        let channel = coordinator.connect(worker_token);
        idle.push(Simulated::register(channel, &format!("idle-{i}"), 1).await);
    }
    let mut latencies = Vec::new();
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let mut idle_tasks = Vec::new();
    for mut worker in idle {
        let arrivals_tx = arrivals_tx.clone();
        idle_tasks.push(tokio::spawn(async move {
            while let Ok(Some(assignment)) = worker.assignments.message().await {
                let at = Instant::now();
                worker.complete(&assignment).await;
                let _ = arrivals_tx.send((assignment.job_id, at));
            }
        }));
    }
    for i in 0..LATENCY_JOBS {
        let started = Instant::now();
        let job = jobs
            .submit_job(copy_job(format!("latency-{i}"), parent_id))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        let (job_id, at) = arrivals.recv().await.unwrap();
        assert_eq!(job_id, job.id);
        latencies.push(at - started);
    }
    // These workers leave: the next phase has workers of its own.
    for task in idle_tasks {
        task.abort();
    }
    latencies.sort();
    println!(
        "submit → an idle worker has it ({LATENCY_JOBS} jobs, one at a time): p50 {}  p99 {}  max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
}

/// Queue throughput: a full queue drained by workers that complete at once.
async fn throughput(
    coordinator: &Coordinator,
    worker_token: &str,
    jobs: &mut JobServiceClient<Connection>,
    parent_id: &str,
    count: usize,
) {
    for i in 0..count {
        jobs.submit_job(copy_job(format!("queued-{i}"), parent_id))
            .await
            .unwrap();
    }
    println!("{count} jobs queued; draining");
    let (cpu_before, _) = coordinator.usage();
    let started = Instant::now();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..THROUGHPUT_WORKERS {
        let channel = coordinator.connect(worker_token);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let mut worker = Simulated::register(channel, &format!("busy-{i}"), 4).await;
            let mut running = tokio::task::JoinSet::new();
            while let Ok(Some(assignment)) = worker.assignments.message().await {
                let (mut client, id) = (worker.client.clone(), worker.id.clone());
                let done_tx = done_tx.clone();
                running.spawn(async move {
                    complete(&mut client, &id, &assignment).await;
                    let _ = done_tx.send(());
                });
            }
        });
    }
    for _ in 0..count {
        done.recv().await.unwrap();
    }
    let elapsed = started.elapsed();
    let (cpu_after, rss) = coordinator.usage();
    println!(
        "queue throughput ({count} queued jobs, {THROUGHPUT_WORKERS} workers × 4 slots, claim + verified completion + model written): {:.0} jobs/s ({:.2} s); coordinator CPU {:.2} s ({:.0}% of one core), RSS {:.0} MiB",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu_after - cpu_before,
        100.0 * (cpu_after - cpu_before) / elapsed.as_secs_f64(),
        rss as f64 / (1 << 20) as f64
    );
}

/// A thousand idle workers connected, each heartbeating three times a lease.
async fn idle_workers(coordinator: &Coordinator, worker_token: &str) {
    let mut sessions = Vec::new();
    let registered = Instant::now();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..IDLE_WORKERS {
        let channel = coordinator.connect(worker_token);
        let ready_tx = ready_tx.clone();
        sessions.push(tokio::spawn(async move {
            let mut worker = Simulated::register(channel, &format!("many-{i}"), 1).await;
            let _ = ready_tx.send(());
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                worker
                    .client
                    .heartbeat(pb::HeartbeatRequest {
                        worker_id: worker.id.clone(),
                        leases: Vec::new(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for _ in 0..IDLE_WORKERS {
        ready.recv().await.unwrap();
    }
    println!(
        "{IDLE_WORKERS} workers registered and streaming in {:.1} s",
        registered.elapsed().as_secs_f64()
    );
    let (cpu_before, _) = coordinator.usage();
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let (cpu_after, rss) = coordinator.usage();
    println!(
        "{IDLE_WORKERS} connected workers heartbeating every 10 s, over {IDLE_SECONDS} s: coordinator CPU {:.1}% of one core, RSS {:.0} MiB",
        100.0 * (cpu_after - cpu_before) / IDLE_SECONDS as f64,
        rss as f64 / (1 << 20) as f64
    );
    for session in sessions {
        session.abort();
    }
}
