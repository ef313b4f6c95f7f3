//! The chaos suite: real processes only — a PostgreSQL of its own, the coordinator's
//! binary, worker processes (one behind a TCP proxy the test controls) — and, while a
//! batch of training and fine-tuning jobs runs: workers killed with SIGKILL again and
//! again, the coordinator killed and restarted, PostgreSQL restarted, and the proxied
//! worker cut off past its lease and healed. Then it checks that every job reached a
//! final state, none has two results, nothing a stale worker sent landed, and the
//! lineage agrees with the jobs.
//!
//! Short by default (one round, as CI runs it). The long form:
//! `HEIRLOOM_CHAOS_ROUNDS=10 ./scripts/test.sh -p heirloom-coordinator --test chaos -- --nocapture`
//! prints the figures RELIABILITY.md quotes.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{blobs, free_port, mlp, signal, worker_process};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const LEASE_SECONDS: &str = "2";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Runs a function of `scripts/lib.sh` (which knows how to run PostgreSQL as root).
fn lib_sh(function: &str, args: &[&str]) {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/lib.sh && {function} \"$@\""))
        .arg("lib.sh")
        .args(args)
        .current_dir(repository())
        .status()
        .expect("run bash");
    assert!(status.success(), "{function} {args:?} failed");
}

/// A PostgreSQL cluster of this test's own: restarting it disturbs no other test.
struct Postgres {
    dir: PathBuf,
    port: u16,
    _work: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        let work = tempfile::tempdir().expect("temp dir");
        let dir = work.path().join("pg");
        let port = free_port();
        lib_sh("pg_start", &[dir.to_str().unwrap(), &port.to_string()]);
        Postgres {
            dir,
            port,
            _work: work,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&self) {
        lib_sh("pg_stop", &[self.dir.to_str().unwrap()]);
    }

    fn run(&self) {
        lib_sh(
            "pg_run",
            &[self.dir.to_str().unwrap(), &self.port.to_string()],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        lib_sh("pg_stop", &[self.dir.to_str().unwrap()]);
    }
}

/// A TCP proxy the test can cut (every connection dropped, new ones refused) and heal.
#[derive(Clone)]
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            cut: Arc::new(AtomicBool::new(false)),
        };
        let cut = proxy.cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let pipe = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let severed = async {
                        while !cut.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = pipe => {}
                        _ = severed => {}
                    }
                });
            }
        });
        proxy
    }

    fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

struct Workers {
    coordinator: String,
    /// The worker token they all act with.
    token: String,
    proxied: String,
    /// Each worker process, its name (how the database knows it) and its cache.
    processes: Vec<(Child, String, tempfile::TempDir)>,
}

/// A worker's SIGKILL: when, and which jobs it held then.
struct Kill {
    at: chrono::DateTime<chrono::Utc>,
    jobs: Vec<uuid::Uuid>,
}

impl Workers {
    fn start(&mut self, behind_proxy: bool) -> usize {
        let cache = tempfile::tempdir().expect("temp dir");
        let address = if behind_proxy {
            &self.proxied
        } else {
            &self.coordinator
        };
        let name = format!("chaos-{}", self.processes.len());
        let child = worker_process(address, &self.token, cache.path(), &["--name", &name]);
        self.processes.push((child, name, cache));
        self.processes.len() - 1
    }

    /// SIGKILLs the worker; returns what it held.
    async fn kill(&mut self, index: usize, pool: &PgPool) -> Kill {
        let name = self.processes[index].1.clone();
        let jobs: Vec<(uuid::Uuid,)> = query_retrying(|| async {
            sqlx::query_as(
                "SELECT j.id FROM jobs j JOIN workers w ON w.id = j.worker_id
                  WHERE w.name = $1 AND j.state IN ('leased', 'running')",
            )
            .bind(&name)
            .fetch_all(pool)
            .await
        })
        .await;
        let at = chrono::Utc::now();
        let child = &mut self.processes[index].0;
        signal(child, "KILL");
        child.wait().await.expect("the worker exits");
        Kill {
            at,
            jobs: jobs.into_iter().map(|(id,)| id).collect(),
        }
    }
}

/// What one round did, for the figures.
#[derive(Default)]
struct Tally {
    jobs: usize,
    coordinator_kills: usize,
    postgres_restarts: usize,
    proxy_cuts: usize,
    kills: Vec<Kill>,
}

/// Retries a database read through a restart of the database.
async fn query_retrying<T, F, Fut>(mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    for _ in 0..100 {
        if let Ok(value) = read().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the database did not come back");
}

/// Waits until the coordinator's health check reports `wanted` for the whole server.
async fn wait_for_health(address: &str, wanted: ServingStatus) {
    // Health is open: no token.
    let mut health = HealthClient::new(support::connect_as(address, None));
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status());
        if status.as_ref().ok() == Some(&wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never reported {wanted:?}");
}

async fn jobs_client(
    coordinator: &support::CoordinatorProcess,
) -> JobServiceClient<support::Connection> {
    JobServiceClient::new(coordinator.admin())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_killed_workers_coordinators_and_databases_and_cut_networks() {
    let rounds: usize = std::env::var("HEIRLOOM_CHAOS_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(1);
    let postgres = Postgres::start();
    let flags = [
        "--lease-seconds",
        LEASE_SECONDS,
        "--retry-backoff-seconds",
        "0.2",
        "--checkpoint-every",
        "50",
    ];
    let mut coordinator = support::CoordinatorProcess::start(postgres.url(), &flags).await;
    let pool = PgPool::connect(&postgres.url()).await.expect("connect");
    let proxy = Proxy::start(coordinator.port).await;
    let channel = coordinator.admin();
    let mut workers = Workers {
        coordinator: coordinator.address(),
        token: support::create_token(&channel, "chaos-workers", pb::Role::Worker).await,
        proxied: proxy.address(),
        processes: Vec::new(),
    };
    let dataset = support::register_dataset_at(&channel, "blobs", blobs(0..5, 100, 1)).await;
    let base = support::import_model_at(
        &channel,
        "base",
        mlp(64, vec![128, 128], 5),
        support::random_mlp_weights(64, &[128, 128], 5, 11),
    )
    .await;
    let mut direct = vec![workers.start(false), workers.start(false)];
    let mut proxied = workers.start(true);
    let mut tally = Tally::default();
    let mut job_ids = Vec::new();
    let started = Instant::now();

    for round in 0..rounds {
        // Half train from scratch, half fine-tune the base: the lineage has edges to check.
        let mut client = jobs_client(&coordinator).await;
        for i in 0..6 {
            let name = format!("r{round}-j{i}");
            let spec = if i % 2 == 0 {
                pb::JobSpec {
                    kind: pb::JobKind::Train as i32,
                    architecture: Some(mlp(64, vec![128, 128], 5)),
                    ..chaos_job(&name, &dataset.id)
                }
            } else {
                pb::JobSpec {
                    kind: pb::JobKind::Finetune as i32,
                    parent_id: base.id.clone(),
                    trainable: vec!["hidden.1.*".into(), "fc.*".into()],
                    ..chaos_job(&name, &dataset.id)
                }
            };
            let job = client
                .submit_job(pb::SubmitJobRequest {
                    spec: Some(spec),
                    request_id: name.clone(),
                    max_attempts: Some(20),
                    ..Default::default()
                })
                .await
                .expect("submit")
                .into_inner()
                .job
                .unwrap();
            job_ids.push(job.id);
        }
        tally.jobs += 6;

        // SIGKILL the oldest direct worker, twice, starting a fresh one each time.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let victim = direct.remove(0);
            tally.kills.push(workers.kill(victim, &pool).await);
            direct.push(workers.start(false));
        }

        // Kill the coordinator and bring it back on the same port.
        coordinator.kill().await;
        tally.coordinator_kills += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        coordinator.spawn().await;

        // Restart PostgreSQL under the running coordinator: health reports the outage
        // and the recovery, and the coordinator goes on without a restart.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        postgres.stop();
        wait_for_health(&coordinator.address(), ServingStatus::NotServing).await;
        postgres.run();
        wait_for_health(&coordinator.address(), ServingStatus::Serving).await;
        tally.postgres_restarts += 1;

        // Cut the proxied worker off past its lease, then heal it.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        proxy.cut.store(true, Ordering::SeqCst);
        tally.proxy_cuts += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.cut.store(false, Ordering::SeqCst);

        // And a SIGKILL of the proxied worker for good measure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tally.kills.push(workers.kill(proxied, &pool).await);
        proxied = workers.start(true);
    }

    // Every job reaches a final state.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let unfinished: (i64,) = query_retrying(|| async {
            sqlx::query_as(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
            )
            .fetch_one(&pool)
            .await
        })
        .await;
        if unfinished.0 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} jobs still unfinished after 10 minutes",
            unfinished.0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    check_invariants(&pool, &base.id).await;
    let (mut requeued, mut resumed) = resume_times(&pool, &tally.kills).await;

    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    let lease_expiries: (i64,) =
        sqlx::query_as("SELECT count(*) FROM job_attempts WHERE outcome = 'lease_expired'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let summary = |seconds: &mut Vec<f64>| {
        seconds.sort_by(f64::total_cmp);
        let at = |p: f64| seconds[((seconds.len() as f64 - 1.0) * p).round() as usize];
        match seconds.len() {
            0 => "none".to_string(),
            n => format!("p50 {:.2} s, p99 {:.2} s (n = {n})", at(0.5), at(0.99)),
        }
    };
    println!(
        "chaos: {rounds} rounds, {} jobs in {:.0} s; worker SIGKILLs {}, coordinator SIGKILLs {}, \
         PostgreSQL restarts {}, network cuts {}; job states {states:?}; expired leases {}; \
         lost jobs 0, duplicate results 0; a killed worker's job back in the queue {}, \
         leased again {}",
        tally.jobs,
        elapsed.as_secs_f64(),
        tally.kills.len(),
        tally.coordinator_kills,
        tally.postgres_restarts,
        tally.proxy_cuts,
        lease_expiries.0,
        summary(&mut requeued),
        summary(&mut resumed),
    );
    let succeeded = states
        .iter()
        .find(|(state, _)| state == "succeeded")
        .map_or(0, |(_, count)| *count);
    let errors: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, error FROM jobs WHERE state <> 'succeeded'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        succeeded as usize, tally.jobs,
        "every job succeeds within its 20 attempts: {states:?}; the others: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_its_lease_across_a_coordinator_restart_shorter_than_the_lease() {
    let postgres = Postgres::start();
    let flags = [
        "--lease-seconds",
        "10",
        "--retry-backoff-seconds",
        "0.2",
        "--checkpoint-every",
        "50",
    ];
    let mut coordinator = support::CoordinatorProcess::start(postgres.url(), &flags).await;
    let pool = PgPool::connect(&postgres.url()).await.expect("connect");
    let channel = coordinator.admin();
    let dataset = support::register_dataset_at(&channel, "blobs", blobs(0..5, 100, 1)).await;
    let mut workers = Workers {
        coordinator: coordinator.address(),
        token: support::create_token(&channel, "chaos-workers", pb::Role::Worker).await,
        proxied: coordinator.address(),
        processes: Vec::new(),
    };
    workers.start(false);
    let job = jobs_client(&coordinator)
        .await
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Train as i32,
                architecture: Some(mlp(64, vec![128, 128], 5)),
                ..chaos_job("outlives", &dataset.id)
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .job
        .unwrap();
    let job_id: uuid::Uuid = job.id.parse().unwrap();
    let state = |pool: PgPool| async move {
        let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        state
    };
    support::wait_until(Duration::from_secs(120), "the job runs", || async {
        state(pool.clone()).await == "running"
    })
    .await;
    // Down for 3 s of a 10 s lease, while the worker trains on.
    coordinator.kill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    coordinator.spawn().await;
    support::wait_until(Duration::from_secs(300), "the job ends", || async {
        ["succeeded", "failed"].contains(&state(pool.clone()).await.as_str())
    })
    .await;
    let attempts: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, outcome FROM job_attempts WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        [(1, "succeeded".to_string())],
        "one attempt, never taken back: the worker kept its lease"
    );
}

fn chaos_job(name: &str, dataset_id: &str) -> pb::JobSpec {
    pb::JobSpec {
        model_name: name.into(),
        dataset_id: dataset_id.into(),
        hyperparameters: Some(pb::Hyperparameters {
            epochs: Some(500),
            batch_size: Some(16),
            seed: 5,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// No job has two results, nothing a stale attempt sent landed, and the lineage agrees
/// with the jobs.
async fn check_invariants(pool: &PgPool, base_id: &str) {
    let one = |sql: &'static str| async move {
        let (count,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
        count
    };
    assert_eq!(
        one(
            "SELECT count(*) FROM (SELECT job_id FROM models WHERE job_id IS NOT NULL
              GROUP BY job_id HAVING count(*) > 1) twice"
        )
        .await,
        0,
        "a job with two models"
    );
    assert_eq!(
        one("SELECT count(*) FROM jobs j WHERE j.state = 'succeeded' AND
              (SELECT count(*) FROM models m WHERE m.job_id = j.id) <> 1")
        .await,
        0,
        "a succeeded job without exactly one model"
    );
    assert_eq!(
        one(
            "SELECT count(*) FROM models m JOIN jobs j ON j.id = m.job_id
              WHERE j.state <> 'succeeded'"
        )
        .await,
        0,
        "a model from a job that did not succeed"
    );
    // The result came from the job's last lease: a stale attempt's result never lands.
    assert_eq!(
        one(
            "SELECT count(*) FROM jobs j WHERE j.state = 'succeeded' AND NOT EXISTS (
              SELECT 1 FROM job_attempts a WHERE a.job_id = j.id AND a.attempt = j.attempt
                 AND a.outcome = 'succeeded')"
        )
        .await,
        0,
        "a result recorded for an attempt other than the last lease"
    );
    assert_eq!(
        one(
            "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded'
              GROUP BY job_id HAVING count(*) > 1) twice"
        )
        .await,
        0,
        "two succeeded attempts of one job"
    );
    assert_eq!(
        one(
            "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id
              WHERE a.outcome = 'running' AND j.state IN ('succeeded', 'failed', 'cancelled')"
        )
        .await,
        0,
        "an attempt left running after its job ended"
    );
    // Lineage: fine-tunes have exactly one parent edge, to the base; trained models none;
    // every model has its dataset edge and all its tensors.
    let base: uuid::Uuid = base_id.parse().unwrap();
    let edges: Vec<(String, i64, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT m.source, (SELECT count(*) FROM model_parents p WHERE p.child_id = m.id),
                (SELECT min(p.parent_id::text)::uuid FROM model_parents p WHERE p.child_id = m.id)
           FROM models m WHERE m.job_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (source, parents, parent) in edges {
        match source.as_str() {
            "finetune" => assert_eq!((parents, parent), (1, Some(base))),
            "train" => assert_eq!(parents, 0),
            other => panic!("unexpected source {other}"),
        }
    }
    assert_eq!(
        one(
            "SELECT count(*) FROM models m WHERE m.job_id IS NOT NULL AND NOT EXISTS (
              SELECT 1 FROM model_datasets d WHERE d.model_id = m.id)"
        )
        .await,
        0,
        "a model without its dataset edge"
    );
    assert_eq!(
        one("SELECT count(*) FROM models m WHERE
              (SELECT count(*) FROM model_tensors t WHERE t.model_id = m.id) <> 6")
        .await,
        0,
        "a model without all six tensors"
    );
}

/// For every job a killed worker held: the seconds from the kill to the job's return to
/// the queue (its lease expired), and to its next lease (when a worker had room).
async fn resume_times(pool: &PgPool, kills: &[Kill]) -> (Vec<f64>, Vec<f64>) {
    let (mut requeued, mut leased) = (Vec::new(), Vec::new());
    for kill in kills {
        for job in &kill.jobs {
            let first_after = |state: &'static str| async move {
                let at: Option<(chrono::DateTime<chrono::Utc>,)> = sqlx::query_as(
                    "SELECT min(at) FROM job_events
                      WHERE job_id = $1 AND state = $2 AND at > $3
                     HAVING min(at) IS NOT NULL",
                )
                .bind(job)
                .bind(state)
                .bind(kill.at)
                .fetch_optional(pool)
                .await
                .unwrap();
                at.map(|(at,)| (at - kill.at).as_seconds_f64())
            };
            requeued.extend(first_after("queued").await);
            leased.extend(first_after("leased").await);
        }
    }
    (requeued, leased)
}
