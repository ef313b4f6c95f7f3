//! The integration-test harness every suite and bench of the workspace shares: a fresh
//! database in the PostgreSQL server that `scripts/test.sh` starts, a real coordinator on
//! 127.0.0.1:0 (the same library code as the binary), real worker processes, the test
//! TLS material, and the data the tests train on.
//!
//! It never links the worker (nor libtorch): a worker is the `heirloom-worker` binary,
//! run as a process from the build's output directory, so the coordinator's suites build
//! without libtorch. Tests call it as `support` (`use heirloom_testing as support;`).

mod data;
pub mod metrics;
mod process;
mod wait;

pub use data::*;
pub use process::CoordinatorProcess;
pub use wait::{wait_for, wait_until};

use futures::TryStreamExt;
use heirloom_client::certificates;
pub use heirloom_client::connection::{ConnectArgs, Connection};
use heirloom_coordinator::{Config, Coordinator};
use heirloom_core::sha256_hex;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use heirloom_proto::v1::dataset_service_client::DatasetServiceClient;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use heirloom_proto::v1::recipe_service_client::RecipeServiceClient;
use heirloom_proto::v1::token_service_client::TokenServiceClient;
use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
use object_store::ObjectStore;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Where the coordinator keeps artifacts in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temporary directory.
    Local,
    /// A fresh prefix in the S3-compatible server that `scripts/test.sh` starts (moto),
    /// reached through the `AWS_*` variables it sets.
    S3,
}

pub struct Cluster {
    pub address: String,
    /// The store the coordinator uses, for tests that reach under the API.
    pub store: Arc<dyn ObjectStore>,
    /// The local store and the admin token file, removed when the cluster is dropped.
    _artifacts: tempfile::TempDir,
    pub pool: PgPool,
    /// Connected as admin.
    pub channel: Connection,
    pub admin_token: String,
    /// The token of the workers `start_worker` starts.
    pub worker_token: String,
    /// Each worker process with its own cache.
    workers: Vec<(Child, tempfile::TempDir)>,
    config: Config,
    shutdown: CancellationToken,
    /// `https://127.0.0.1:PORT` of the lineage explorer, when it serves one.
    pub explorer: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The TLS material of every coordinator a test binary starts: a CA, a certificate for
/// 127.0.0.1 and a worker client certificate, made once.
pub fn certificates() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        certificates::write_all(dir.path(), &["127.0.0.1".into(), "localhost".into()])
            .expect("write test certificates");
        dir
    })
    .path()
}

/// The coordinator's TLS flags: TLS on, and mutual TLS for workers.
pub fn coordinator_tls_flags() -> Vec<String> {
    let dir = certificates();
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_string();
    vec![
        "--tls-cert".into(),
        path(certificates::SERVER_CERT),
        "--tls-key".into(),
        path(certificates::SERVER_KEY),
        "--worker-client-ca".into(),
        path(certificates::CA_CERT),
    ]
}

/// How a client reaches a test coordinator at `address` (`https://…`), trusting the
/// test CA and, with `client_certificate`, presenting the worker certificate.
pub fn connect_args(address: &str, client_certificate: bool) -> ConnectArgs {
    let dir = certificates();
    let mut args = ConnectArgs::to(address);
    args.ca_cert = Some(dir.join(certificates::CA_CERT));
    if client_certificate {
        args.client_cert = Some(dir.join(certificates::CLIENT_CERT));
        args.client_key = Some(dir.join(certificates::CLIENT_KEY));
    }
    args
}

/// A connection to `address` that carries `token` (none: no token at all).
pub fn connect_as(address: &str, token: Option<&str>) -> Connection {
    connect_args(address, token.is_some())
        .connect_lazy_as(token)
        .expect("valid connection settings")
}

/// Makes a token with `role` through the admin connection; returns its secret.
pub async fn create_token(admin: &Connection, name: &str, role: pb::Role) -> String {
    TokenServiceClient::new(admin.clone())
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            ttl_seconds: 0,
        })
        .await
        .expect("create a token")
        .into_inner()
        .secret
}

/// A `heirloom-worker` process on `address` with its own cache, one CPU thread, acting
/// with the worker token `token` over mutual TLS.
pub fn worker_process(
    address: &str,
    token: &str,
    cache: &std::path::Path,
    flags: &[&str],
) -> Child {
    let log = std::env::var_os("TEST_LOG").is_some();
    worker_command(address, token, cache, flags)
        .env("RUST_LOG", if log { "info" } else { "warn" })
        .stdout(if log { Stdio::inherit() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the worker binary")
}

/// [`worker_process`], its logs (at `info`, as JSON lines) written to `log`.
pub fn worker_process_logging_to(
    address: &str,
    token: &str,
    cache: &std::path::Path,
    log: &std::path::Path,
) -> Child {
    worker_command(address, token, cache, &[])
        .env("RUST_LOG", "info")
        .env("HEIRLOOM_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the worker's log"))
        .spawn()
        .expect("start the worker binary")
}

fn worker_command(address: &str, token: &str, cache: &std::path::Path, flags: &[&str]) -> Command {
    let dir = certificates();
    let mut command = Command::new(workspace_binary("heirloom-worker"));
    command
        .args([
            "--coordinator",
            address,
            "--threads",
            "1",
            "--device",
            "cpu",
        ])
        .arg("--ca-cert")
        .arg(dir.join(certificates::CA_CERT))
        .arg("--client-cert")
        .arg(dir.join(certificates::CLIENT_CERT))
        .arg("--client-key")
        .arg(dir.join(certificates::CLIENT_KEY))
        .env("HEIRLOOM_TOKEN", token)
        // The worker shares no directory with the coordinator: its own cache only.
        .arg("--cache")
        .arg(cache)
        .args(flags)
        .kill_on_drop(true);
    command
}

/// A binary of the workspace (`heirloom`, `heirloom-coordinator`, `heirloom-worker`),
/// beside the running test's own directory in the build's output (`target/debug/` for a
/// test in `target/debug/deps/`). Cargo builds only the binaries of the package under
/// test, so `./scripts/test.sh` builds every binary first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let mut dir = test.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: run the tests with ./scripts/test.sh, which builds every binary \
         (or `cargo build --workspace --bins` first)",
        binary.display()
    );
    binary
}

/// Runs a peer script with the PyTorch virtualenv's `python3` (scripts/test.sh puts it
/// first on PATH) and returns what it printed; panics with its error output if it fails.
pub fn python_peer(script: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (scripts/test.sh puts the PyTorch virtualenv first on PATH)");
    assert!(
        output.status.success(),
        "python3 {script} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Waits for a coordinator process at `address` to answer with the admin token it
/// writes to `token_file` at its first start; returns the token.
pub async fn wait_for_coordinator(address: &str, token_file: &std::path::Path) -> String {
    wait_for(
        Duration::from_secs(30),
        "the coordinator answers",
        || async {
            let token = std::fs::read_to_string(token_file).ok()?;
            ModelServiceClient::new(connect_as(address, Some(&token)))
                .list_models(pb::ListModelsRequest {})
                .await
                .ok()?;
            Some(token)
        },
    )
    .await
}

/// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) to a child process.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

fn s3_bucket() -> String {
    std::env::var("HEIRLOOM_TEST_S3_BUCKET").expect(
        "HEIRLOOM_TEST_S3_BUCKET is not set: run the tests with ./scripts/test.sh, which \
         starts an S3-compatible server (moto) and sets it with the AWS_* variables",
    )
}

fn admin_url() -> String {
    std::env::var("HEIRLOOM_TEST_DATABASE_URL").expect(
        "HEIRLOOM_TEST_DATABASE_URL is not set: run the tests with ./scripts/test.sh, which \
         starts a private PostgreSQL, or point it at a server you may create databases in",
    )
}

/// Runs a coordinator on `listener` until `shutdown`; returns an admin connection to it.
async fn serve(
    config: &Config,
    listener: tokio::net::TcpListener,
    explorer: Option<tokio::net::TcpListener>,
    shutdown: &CancellationToken,
) -> Connection {
    let address = format!("https://{}", listener.local_addr().expect("address"));
    let mut coordinator = Coordinator::build(config)
        .await
        .expect("coordinator starts");
    if let Some(explorer) = explorer {
        coordinator = coordinator.with_explorer(explorer).expect("explorer TLS");
    }
    tokio::spawn(coordinator.run(listener, shutdown.clone()));
    let admin = admin_token(config);
    connect_args(&address, false)
        .connect_lazy_as(Some(&admin))
        .expect("valid connection settings")
}

/// The admin token the coordinator wrote at its first start.
fn admin_token(config: &Config) -> String {
    let path = config
        .admin_token_file
        .as_ref()
        .expect("an admin token file");
    std::fs::read_to_string(path).expect("the coordinator wrote its admin token")
}

/// A new, empty database; returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("heirloom_test_{}", uuid::Uuid::new_v4().simple());
    let mut connection = PgConnection::connect(&admin)
        .await
        .expect("connect to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    let (server, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /name");
    format!("{server}/{name}")
}

impl Cluster {
    /// A coordinator with one worker connected.
    pub async fn start() -> Cluster {
        let mut cluster = Cluster::coordinator_only().await;
        cluster.start_worker();
        cluster
    }

    pub async fn coordinator_only() -> Cluster {
        Cluster::coordinator_on(Backend::Local).await
    }

    /// A coordinator with one worker connected, storing artifacts on `backend`.
    pub async fn start_on(backend: Backend) -> Cluster {
        let mut cluster = Cluster::coordinator_on(backend).await;
        cluster.start_worker();
        cluster
    }

    /// A coordinator that also serves the lineage explorer, with one worker.
    pub async fn with_explorer() -> Cluster {
        let mut cluster = Cluster::coordinator_with(Backend::Local, true).await;
        cluster.start_worker();
        cluster
    }

    pub async fn coordinator_on(backend: Backend) -> Cluster {
        Cluster::coordinator_with(backend, false).await
    }

    async fn coordinator_with(backend: Backend, explorer: bool) -> Cluster {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
        }
        let database_url = fresh_database().await;
        let artifacts = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("https://{}", listener.local_addr().expect("address"));
        let dir = certificates();
        // Bound once, here, and handed to the coordinator: no race for the port.
        let explorer_listener = match explorer {
            true => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            ),
            false => None,
        };
        let config = Config {
            listen: listener.local_addr().expect("address"),
            database_url: database_url.clone(),
            artifacts: match backend {
                Backend::Local => artifacts.path().to_str().expect("a UTF-8 path").into(),
                Backend::S3 => format!("s3://{}/{}", s3_bucket(), uuid::Uuid::new_v4()),
            },
            // Short, so that the fault-tolerance tests see leases expire quickly.
            lease_seconds: 3.0,
            retry_backoff_seconds: 0.2,
            checkpoint_every: 100,
            // Short, so that a rank nobody can reach fails its attempt quickly.
            collective_timeout_seconds: 10.0,
            tls_cert: Some(dir.join(certificates::SERVER_CERT)),
            tls_key: Some(dir.join(certificates::SERVER_KEY)),
            worker_client_ca: Some(dir.join(certificates::CA_CERT)),
            insecure_plaintext: false,
            admin_token_file: Some(artifacts.path().join("admin.token")),
            metrics_listen: None,
            explorer_listen: explorer_listener
                .as_ref()
                .map(|l| l.local_addr().expect("address")),
            max_connections: 10_000,
            max_connections_per_peer: 2_000,
            first_call_seconds: 10.0,
            idle_timeout_seconds: 300.0,
            config: None,
            log_format: "human".into(),
            max_blob_bytes: 1 << 30,
            upload_bytes_per_hour: 100 << 30,
            max_held_blobs: 1_000_000,
        };
        let store = heirloom_coordinator::artifacts::Artifacts::open(&config.artifacts)
            .expect("open the artifact store")
            .store();
        let shutdown = CancellationToken::new();
        let channel = serve(&config, listener, explorer_listener, &shutdown).await;
        let admin_token = admin_token(&config);
        let worker_token = create_token(&channel, "test-workers", pb::Role::Worker).await;
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connect to the test database");
        Cluster {
            address,
            store,
            _artifacts: artifacts,
            pool,
            channel,
            admin_token,
            worker_token,
            workers: Vec::new(),
            shutdown,
            explorer: config
                .explorer_listen
                .map(|address| format!("https://{address}")),
            config,
        }
    }

    /// The coordinator's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A connection as the cluster's workers: the worker token, with the client
    /// certificate.
    pub fn worker_connection(&self) -> Connection {
        connect_as(&self.address, Some(&self.worker_token))
    }

    /// Another coordinator replica on the same database and store; returns its address.
    pub async fn replica(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = Config {
            listen: listener.local_addr().expect("address"),
            explorer_listen: None,
            ..self.config.clone()
        };
        let address = format!("https://{}", config.listen);
        serve(&config, listener, None, &self.shutdown).await;
        address
    }

    /// Starts another worker process; returns its index for `kill_worker` and
    /// `terminate_worker`.
    pub fn start_worker(&mut self) -> usize {
        self.start_worker_with(&[])
    }

    /// Starts a worker with extra flags (labels, concurrency).
    pub fn start_worker_with(&mut self, flags: &[&str]) -> usize {
        let cache = tempfile::tempdir().expect("temp dir");
        let child = worker_process(&self.address, &self.worker_token, cache.path(), flags);
        self.workers.push((child, cache));
        self.workers.len() - 1
    }

    /// SIGKILL: the worker dies mid-whatever, without a word to the coordinator.
    pub async fn kill_worker(&mut self, index: usize) {
        let child = &mut self.workers[index].0;
        child.start_kill().expect("kill the worker");
        child.wait().await.expect("the worker exits");
    }

    /// SIGTERM: the worker drains (checkpoints, hands its jobs back) and exits.
    pub async fn terminate_worker(&mut self, index: usize) -> std::process::ExitStatus {
        let child = &mut self.workers[index].0;
        signal(child, "TERM");
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("the worker drains within a minute")
            .expect("the worker exits")
    }

    pub fn models(&self) -> ModelServiceClient<Connection> {
        ModelServiceClient::new(self.channel.clone())
    }

    pub fn recipes(&self) -> RecipeServiceClient<Connection> {
        RecipeServiceClient::new(self.channel.clone())
    }

    pub fn jobs(&self) -> JobServiceClient<Connection> {
        JobServiceClient::new(self.channel.clone())
    }

    pub fn datasets(&self) -> DatasetServiceClient<Connection> {
        DatasetServiceClient::new(self.channel.clone())
    }

    /// How many blobs the store holds.
    pub async fn stored_blobs(&self) -> usize {
        self.store
            .list(Some(&object_store::path::Path::from("blobs")))
            .try_collect::<Vec<_>>()
            .await
            .expect("list the store")
            .len()
    }

    /// Waits until every stored blob is at least `age` old by its stored time, as garbage
    /// collection's `min_age_seconds` measures it.
    pub async fn wait_until_blobs_are(&self, age: Duration) {
        let what = format!("every stored blob is {age:?} old");
        wait_until(Duration::from_secs(30), &what, || async {
            let blobs: Vec<_> = self
                .store
                .list(Some(&object_store::path::Path::from("blobs")))
                .try_collect()
                .await
                .expect("list the store");
            let now = chrono::Utc::now();
            blobs
                .iter()
                .all(|blob| (now - blob.last_modified).to_std().unwrap_or_default() >= age)
        })
        .await
    }

    pub async fn register_dataset(&self, name: &str, content: Vec<u8>) -> pb::Dataset {
        register_dataset_at(&self.channel, name, content).await
    }

    pub async fn submit(&self, spec: pb::JobSpec) -> pb::Job {
        self.try_submit(spec).await.expect("submit")
    }

    /// Submits `spec` with default placement; the refusal if there is one.
    pub async fn try_submit(&self, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
        let response = self
            .jobs()
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().job.expect("a job"))
    }

    /// Follows the job's events to its end; returns them and the final job.
    pub async fn wait(&self, job_id: &str) -> (Vec<pb::JobEvent>, pb::Job) {
        let follow = async {
            let mut stream = self
                .jobs()
                .watch_job(pb::WatchJobRequest {
                    job_id: job_id.into(),
                    after_sequence: 0,
                })
                .await
                .expect("watch")
                .into_inner();
            let mut events = Vec::new();
            while let Some(response) = stream.message().await.expect("watch stream") {
                events.push(response.event.expect("an event"));
            }
            events
        };
        let events = tokio::time::timeout(Duration::from_secs(300), follow)
            .await
            .expect("the job ends within 5 minutes");
        let job = self.job(job_id).await;
        (events, job)
    }

    pub async fn job(&self, job_id: &str) -> pb::Job {
        self.jobs()
            .get_job(pb::GetJobRequest {
                job_id: job_id.into(),
            })
            .await
            .expect("get job")
            .into_inner()
            .job
            .expect("a job")
    }

    pub async fn model(&self, model: &str) -> pb::Model {
        self.models()
            .get_model(pb::GetModelRequest {
                model: model.into(),
            })
            .await
            .expect("get model")
            .into_inner()
            .model
            .expect("a model")
    }

    /// Row counts of every table, to show that a refused request wrote nothing.
    pub async fn row_counts(&self) -> Vec<(String, i64)> {
        // Every table but the migrations' own and the upload quota's accounting (a
        // refused upload is charged what arrived).
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
               AND table_name NOT IN ('_sqlx_migrations', 'upload_usage')
             ORDER BY table_name",
        )
        .fetch_all(&self.pool)
        .await
        .expect("list the tables");
        let mut counts = Vec::new();
        for table in tables {
            let (count,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(&self.pool)
                    .await
                    .expect("count rows");
            counts.push((table, count));
        }
        counts
    }

    /// What a call can leave behind: the rows of every table and the store's blobs.
    pub async fn footprint(&self) -> Vec<(String, i64)> {
        let mut footprint = self.row_counts().await;
        footprint.push(("stored blobs".into(), self.stored_blobs().await as i64));
        footprint
    }
}

/// Asserts that `call` is refused with `code`, its message naming `fragment`, and that
/// it left nothing behind: no row of any table and no stored blob changed (counted
/// before the call and after).
pub async fn refused<T: std::fmt::Debug>(
    cluster: &Cluster,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    code: tonic::Code,
    fragment: &str,
) {
    let before = cluster.footprint().await;
    let status = call.await.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{fragment}: {}", status.message());
    assert!(
        status.message().contains(fragment),
        "message {:?} should name {fragment:?}",
        status.message()
    );
    assert_eq!(
        cluster.footprint().await,
        before,
        "nothing is written for {fragment}"
    );
}

impl Cluster {
    /// A model's tensors by name, with their provenance.
    pub async fn tensors_of(
        &self,
        model: &str,
    ) -> std::collections::BTreeMap<String, pb::TensorProvenance> {
        self.models()
            .list_model_tensors(pb::ListModelTensorsRequest {
                model: model.into(),
            })
            .await
            .expect("list model tensors")
            .into_inner()
            .tensors
            .into_iter()
            .map(|tensor| (tensor.name.clone(), tensor))
            .collect()
    }

    /// A model's weights file, exported over gRPC from `offset` on.
    pub async fn export_from(&self, model: &str, offset: u64) -> Result<Vec<u8>, tonic::Status> {
        let mut stream = ArtifactServiceClient::new(self.channel.clone())
            .export_model(pb::ExportModelRequest {
                model: model.into(),
                offset,
            })
            .await?
            .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = stream.message().await? {
            assert_eq!(
                chunk.offset,
                offset + file.len() as u64,
                "chunks arrive in order"
            );
            file.extend_from_slice(&chunk.data);
        }
        Ok(file)
    }

    /// A model's weights file, exported over gRPC and checked against its hash.
    pub async fn export(&self, model: &pb::Model) -> Vec<u8> {
        let file = self
            .export_from(&model.id, 0)
            .await
            .expect("export the model");
        assert_eq!(sha256_hex(&file), model.weights_sha256, "{}", model.name);
        file
    }

    /// The exported weights written to a file in `dir`, for PyTorch to read.
    pub async fn export_to(&self, model: &pb::Model, dir: &std::path::Path) -> PathBuf {
        let path = dir.join(format!("{}.safetensors", model.name));
        std::fs::write(&path, self.export(model).await).expect("write the export");
        path
    }

    /// A model's weights, tensor by tensor.
    pub async fn weights(&self, model: &pb::Model) -> std::collections::BTreeMap<String, Vec<u8>> {
        let file = self.export(model).await;
        let parsed = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
        parsed
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect()
    }

    /// Submits and waits; panics unless the job succeeds. Returns the new model.
    pub async fn run(&self, spec: pb::JobSpec) -> pb::Model {
        let name = spec.model_name.clone();
        let job = self.submit(spec).await;
        let (_, job) = self.wait(&job.id).await;
        assert_eq!(
            job.state(),
            pb::JobState::Succeeded,
            "{name}: {}",
            job.error
        );
        self.model(&name).await
    }
}

/// Collects garbage through `channel` (admin): blobs older than `min_age_seconds`
/// (unset: the default hour), or only reports them with `dry_run`.
pub async fn collect_garbage(
    channel: &Connection,
    min_age_seconds: Option<u64>,
    dry_run: bool,
) -> pb::CollectGarbageResponse {
    ArtifactServiceClient::new(channel.clone())
        .collect_garbage(pb::CollectGarbageRequest {
            min_age_seconds,
            dry_run,
        })
        .await
        .expect("collect garbage")
        .into_inner()
}

/// Registers a dataset with the coordinator at the other end of `channel`.
pub async fn register_dataset_at(
    channel: &Connection,
    name: &str,
    content: Vec<u8>,
) -> pb::Dataset {
    let sha256 = sha256_hex(&content);
    DatasetServiceClient::new(channel.clone())
        .register_dataset(pb::RegisterDatasetRequest {
            name: name.into(),
            content: content.into(),
            sha256,
            tokens: None,
        })
        .await
        .expect("register the dataset")
        .into_inner()
        .dataset
        .expect("a dataset")
}

/// Uploads `shards` and registers them as a token dataset with the coordinator at the
/// other end of `channel`.
pub async fn register_token_dataset_at(
    channel: &Connection,
    name: &str,
    shards: &[Vec<u8>],
    vocab_size: u32,
    pad_token_id: Option<u32>,
) -> Result<pb::Dataset, tonic::Status> {
    let blobs: Vec<(String, bytes::Bytes)> = shards
        .iter()
        .map(|shard| (sha256_hex(shard), bytes::Bytes::from(shard.clone())))
        .collect();
    heirloom_client::transfer::upload_missing(channel.clone(), &blobs, |_, _| {}).await?;
    let registered = DatasetServiceClient::new(channel.clone())
        .register_dataset(pb::RegisterDatasetRequest {
            name: name.into(),
            tokens: Some(pb::TokenDatasetManifest {
                shard_sha256: blobs.into_iter().map(|(sha256, _)| sha256).collect(),
                vocab_size,
                pad_token_id,
            }),
            ..Default::default()
        })
        .await?;
    Ok(registered.into_inner().dataset.expect("a dataset"))
}

/// Imports a model with the coordinator at the other end of `channel`.
pub async fn import_model_at(
    channel: &Connection,
    name: &str,
    architecture: pb::Architecture,
    weights: Vec<u8>,
) -> pb::Model {
    ModelServiceClient::new(channel.clone())
        .import_model(pb::ImportModelRequest {
            name: name.into(),
            architecture: Some(architecture),
            weights: weights.into(),
            ..Default::default()
        })
        .await
        .expect("import the model")
        .into_inner()
        .model
        .expect("a model")
}

/// Runs the `heirloom` CLI against the cluster with `token`; returns (success, stdout,
/// stderr).
pub fn cli(cluster: &Cluster, token: &str, args: &[&str]) -> (bool, String, String) {
    let binary = workspace_binary("heirloom");
    let output = std::process::Command::new(binary)
        .args(["--coordinator", &cluster.address, "--ca-cert"])
        .arg(certificates().join(heirloom_client::certificates::CA_CERT))
        .env("HEIRLOOM_TOKEN", token)
        .args(args)
        .output()
        .expect("run the CLI");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Registers a worker the test plays (one CPU device) with `channel`'s token; returns its id and assignments.
pub async fn scripted_worker(
    channel: &Connection,
    name: &str,
) -> (String, tonic::Streaming<pb::Assignment>) {
    let mut client = WorkerServiceClient::new(channel.clone());
    let id = client
        .register_worker(pb::RegisterWorkerRequest {
            name: name.into(),
            devices: vec![pb::Device {
                name: "cpu".into(),
                memory_bytes: 0,
            }],
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
    (id, assignments)
}
