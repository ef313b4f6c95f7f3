//! The Heirloom coordinator: keeps model lineage and the job queue in PostgreSQL and
//! serves them over gRPC to clients and workers.
//!
//! A coordinator is `Config` → [`Coordinator::build`] → [`Coordinator::run`]; it holds no
//! state of its own beyond the database and the artifact directory, so several can run
//! against one database.

pub mod artifacts;
pub mod auth;
pub mod config;
mod connections;
pub mod db;
mod dispatch;
pub mod domain;
pub mod error;
mod explorer;
mod grpc;
pub mod metrics;
mod notifier;
mod planning;
pub mod recipes;

pub use config::Config;
pub use error::{Error, Result, StartupError};

use artifacts::Artifacts;
use db::Db;
use notifier::Notifier;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a stopping coordinator waits for open calls to end before it closes their
/// connections: under the 10 s Docker and the 30 s Kubernetes give before SIGKILL.
pub const DRAIN: Duration = Duration::from_secs(8);

/// What every request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    db: Db,
    artifacts: Artifacts,
    notifier: Notifier,
    tokens: auth::TokenCache,
    policy: domain::Policy,
    /// What each token may upload per hour and hold from garbage collection.
    quotas: db::Quotas,
    metrics: metrics::Metrics,
    /// Cancelled when the coordinator begins to stop: streams that would otherwise stay
    /// open (WatchJob, StreamAssignments, the explorer's job stream) end on it, so the
    /// servers can drain.
    stopping: CancellationToken,
}

pub struct Coordinator {
    services: Services,
    transport: grpc::Transport,
    /// The listeners of the optional servers, bound by the caller like the gRPC one.
    metrics: Option<TcpListener>,
    explorer: Option<(TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
    /// The certificate and key the explorer serves TLS with (the coordinator's).
    explorer_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Caps and deadlines for the connections of every listener.
    connections: connections::Connections,
    /// Stops the background tasks (notifications, lease expiry, metrics) once the
    /// servers have drained.
    background: CancellationToken,
}

impl Coordinator {
    /// Connects to the database, applies the migrations and opens the artifact directory.
    /// Listening is the caller's: it binds `config.listen` for [`Coordinator::run`], and
    /// hands the explorer and metrics listeners, when it wants them, to
    /// [`Coordinator::with_explorer`] and [`Coordinator::with_metrics`].
    pub async fn build(config: &Config) -> Result<Coordinator, StartupError> {
        let transport = grpc::Transport::from_config(config)?;
        let db = Db::connect(&config.database_url).await?;
        db.migrate().await?;
        if let Some(path) = &config.admin_token_file {
            bootstrap_admin(&db, path).await?;
        }
        let artifacts =
            Artifacts::open(&config.artifacts)?.with_max_blob_bytes(config.max_blob_bytes);
        let policy = domain::Policy {
            lease: Duration::from_secs_f64(config.lease_seconds),
            retry_backoff: Duration::from_secs_f64(config.retry_backoff_seconds),
            checkpoint_every: config.checkpoint_every,
            collective_timeout: Duration::from_secs_f64(config.collective_timeout_seconds),
        };
        let background = CancellationToken::new();
        let notifier = Notifier::start(db.pool().clone(), background.child_token());
        let metrics = metrics::Metrics::new();
        let connections = connections::Connections::start(
            connection_limits(config)?,
            metrics.clone(),
            background.child_token(),
        );
        Ok(Coordinator {
            services: Services {
                db,
                artifacts,
                tokens: auth::TokenCache::start(&notifier),
                notifier,
                policy,
                quotas: db::Quotas {
                    upload_bytes_per_hour: config.upload_bytes_per_hour,
                    max_held_blobs: config.max_held_blobs,
                },
                metrics,
                stopping: CancellationToken::new(),
            },
            transport,
            connections,
            metrics: None,
            explorer: None,
            explorer_tls: config.tls_cert.clone().zip(config.tls_key.clone()),
            background,
        })
    }

    /// Also serves the lineage explorer on `listener`: over TLS with the coordinator's
    /// certificate, unless the coordinator serves plain text.
    pub fn with_explorer(mut self, listener: TcpListener) -> Result<Coordinator, StartupError> {
        let tls = match &self.explorer_tls {
            Some((cert, key)) => Some(explorer::tls(cert, key)?),
            None => None,
        };
        self.explorer = Some((listener, tls));
        Ok(self)
    }

    /// Also serves Prometheus metrics on `listener` (`GET /metrics`).
    pub fn with_metrics(mut self, listener: TcpListener) -> Coordinator {
        self.metrics = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled. Then it stops accepting, ends
    /// its open streams, and returns once the calls in flight have ended, or after
    /// [`DRAIN`], closing the connections that still hold calls.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartupError> {
        let Coordinator {
            services,
            transport,
            metrics,
            explorer,
            connections,
            background,
            ..
        } = self;
        let address = listener
            .local_addr()
            .map_err(|err| StartupError::Setting(format!("--listen: {err}")))?;
        tracing::info!(%address, "coordinator listening");
        tokio::spawn(dispatch::expire_leases(
            services.clone(),
            background.child_token(),
        ));
        if let Some(listener) = metrics {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "metrics at /metrics");
            }
            tokio::spawn(connections::serve_http(
                connections.guard(listener, "metrics"),
                metrics::router(services.metrics.clone(), services.db.clone()),
                background.child_token(),
            ));
        }
        if let Some((listener, tls)) = explorer {
            if let Ok(address) = listener.local_addr() {
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(url = %format!("{scheme}://{address}/"), "lineage explorer");
            }
            // It stops accepting when the gRPC server does; its job streams end then too.
            let (services, stop) = (services.clone(), services.stopping.clone());
            let listener = connections.guard(listener, "explorer");
            tokio::spawn(async move {
                if let Err(err) = explorer::serve(services, listener, tls, stop).await {
                    tracing::error!(error = %err, "the lineage explorer stopped");
                }
            });
        }
        let stopping = services.stopping.clone();
        let listener = connections.guard(listener, "grpc");
        let serving = grpc::serve(services, transport, listener, shutdown.clone());
        let drained = async {
            shutdown.cancelled().await;
            tracing::info!("stopping: no new connections; ending streams");
            stopping.cancel();
            tokio::time::sleep(DRAIN).await;
        };
        let result = tokio::select! {
            result = serving => result,
            () = drained => {
                // Dropping the server stops it; its connection tasks end with the runtime.
                tracing::warn!(drain = ?DRAIN, "calls still open after the drain; closing them");
                Ok(())
            }
        };
        stopping.cancel();
        background.cancel();
        Ok(result?)
    }
}

fn connection_limits(config: &Config) -> Result<connections::Limits, StartupError> {
    let seconds = |flag: &str, value: f64| {
        if value.is_finite() && value > 0.0 && value <= 86_400.0 {
            Ok(Duration::from_secs_f64(value))
        } else {
            Err(StartupError::Setting(format!(
                "{flag} {value}: must be a number of seconds above 0 and at most 86400"
            )))
        }
    };
    let budget = connections::descriptor_budget();
    let max_open = (config.max_connections as usize).min(budget);
    if max_open < config.max_connections as usize {
        tracing::warn!(
            max_connections = max_open,
            asked = config.max_connections,
            "--max-connections lowered to fit the file-descriptor limit (`ulimit -n`, less \
             128 for the database, the store and logs); raise the hard limit for more"
        );
    }
    Ok(connections::Limits {
        max_open,
        max_per_peer: config.max_connections_per_peer as usize,
        first_call_deadline: seconds("--first-call-seconds", config.first_call_seconds)?,
        idle_timeout: seconds("--idle-timeout-seconds", config.idle_timeout_seconds)?,
    })
}

/// Makes sure the admin token in `path` works, writing a new one there first if the
/// file does not exist.
async fn bootstrap_admin(db: &Db, path: &std::path::Path) -> Result<(), StartupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let unusable = |err: &dyn std::fmt::Display| {
        StartupError::Setting(format!("--admin-token-file {shown}: {err}"))
    };
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(auth::new_secret().as_bytes())
                .map_err(|err| unusable(&err))?;
            tracing::info!(file = %shown, "wrote a new admin token");
        }
        // Another replica may have written it a moment ago: use that one.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(unusable(&err)),
    }
    let secret = std::fs::read_to_string(path).map_err(|err| unusable(&err))?;
    let secret = secret.trim();
    if secret.len() < 32 {
        return Err(unusable(&"holds no token of at least 32 characters"));
    }
    let hash = auth::secret_sha256(secret);
    if db
        .ensure_admin_token(&hash, &format!("bootstrap-admin-{}", &hash[..8]))
        .await
        .map_err(StartupError::AdminToken)?
    {
        tracing::info!(file = %shown, "admin token added");
    } else if db
        .caller(&hash)
        .await
        .map_err(StartupError::AdminToken)?
        .is_none()
    {
        tracing::warn!(file = %shown, "the admin token in this file was revoked or expired");
    }
    Ok(())
}
