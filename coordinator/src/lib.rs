//! The Heirloom coordinator: keeps model lineage and the job queue in PostgreSQL and
//! serves them over gRPC to clients and workers.
//!
//! A coordinator is `Config` → [`Coordinator::build`] → [`Coordinator::run`]; it holds no
//! state of its own beyond the database and the artifact directory, so several can run
//! against one database.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod db;
mod dispatch;
pub mod domain;
pub mod error;
mod explorer;
mod grpc;
pub mod metrics;
mod notifier;
mod planning;
mod recipes;

pub use config::Config;
pub use error::{Error, Result};

use artifacts::Artifacts;
use db::Db;
use notifier::Notifier;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    db: Db,
    artifacts: Artifacts,
    notifier: Notifier,
    tokens: auth::TokenCache,
    policy: domain::Policy,
    metrics: metrics::Metrics,
}

pub struct Coordinator {
    services: Services,
    transport: grpc::Transport,
    metrics_listen: Option<std::net::SocketAddr>,
    explorer_listen: Option<std::net::SocketAddr>,
    /// The certificate and key the explorer serves TLS with (the coordinator's).
    explorer_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    shutdown: CancellationToken,
}

impl Coordinator {
    /// Connects to the database, applies the migrations and opens the artifact directory.
    pub async fn build(config: &Config) -> anyhow::Result<Coordinator> {
        let transport = grpc::Transport::from_config(config)?;
        let db = Db::connect(&config.database_url).await?;
        db.migrate().await?;
        if let Some(path) = &config.admin_token_file {
            bootstrap_admin(&db, path).await?;
        }
        let artifacts = Artifacts::open(&config.artifacts)?;
        let policy = domain::Policy {
            lease: std::time::Duration::from_secs_f64(config.lease_seconds),
            retry_backoff: std::time::Duration::from_secs_f64(config.retry_backoff_seconds),
            checkpoint_every: config.checkpoint_every,
        };
        let shutdown = CancellationToken::new();
        let notifier = Notifier::start(db.pool().clone(), shutdown.child_token());
        Ok(Coordinator {
            services: Services {
                db,
                artifacts,
                tokens: auth::TokenCache::start(&notifier),
                notifier,
                policy,
                metrics: metrics::Metrics::new(),
            },
            transport,
            metrics_listen: config.metrics_listen,
            explorer_listen: config.explorer_listen,
            explorer_tls: config.tls_cert.clone().zip(config.tls_key.clone()),
            shutdown,
        })
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(%address, "coordinator listening");
        tokio::spawn(dispatch::expire_leases(
            self.services.clone(),
            self.shutdown.child_token(),
        ));
        if let Some(metrics_address) = self.metrics_listen {
            let metrics_listener = TcpListener::bind(metrics_address)
                .await
                .map_err(|err| anyhow::anyhow!("--metrics-listen {metrics_address}: {err}"))?;
            tracing::info!(address = %metrics_listener.local_addr()?, "metrics at /metrics");
            tokio::spawn(metrics::serve(
                self.services.metrics.clone(),
                self.services.db.clone(),
                metrics_listener,
                self.shutdown.child_token(),
            ));
        }
        if let Some(explorer_address) = self.explorer_listen {
            let explorer_listener = TcpListener::bind(explorer_address)
                .await
                .map_err(|err| anyhow::anyhow!("--explorer-listen {explorer_address}: {err}"))?;
            let scheme = if self.explorer_tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(
                url = %format!("{scheme}://{}/", explorer_listener.local_addr()?),
                "lineage explorer"
            );
            let (services, tls, stop) = (
                self.services.clone(),
                self.explorer_tls.clone(),
                self.shutdown.child_token(),
            );
            tokio::spawn(async move {
                let tls = tls
                    .as_ref()
                    .map(|(cert, key)| (cert.as_path(), key.as_path()));
                if let Err(err) = explorer::serve(services, explorer_listener, tls, stop).await {
                    tracing::error!(error = %err, "the lineage explorer stopped");
                }
            });
        }
        let result = grpc::serve(self.services, self.transport, listener, shutdown).await;
        self.shutdown.cancel();
        Ok(result?)
    }
}

/// Makes sure the admin token in `path` works, writing a new one there first if the
/// file does not exist.
async fn bootstrap_admin(db: &Db, path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(auth::new_secret().as_bytes())?;
            tracing::info!(file = %shown, "wrote a new admin token");
        }
        // Another replica may have written it a moment ago: use that one.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => anyhow::bail!("--admin-token-file {shown}: {err}"),
    }
    let secret = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("--admin-token-file {shown}: {err}"))?;
    let secret = secret.trim();
    anyhow::ensure!(
        secret.len() >= 32,
        "--admin-token-file {shown}: holds no token of at least 32 characters"
    );
    let hash = auth::secret_sha256(secret);
    if db
        .ensure_admin_token(&hash, &format!("bootstrap-admin-{}", &hash[..8]))
        .await?
    {
        tracing::info!(file = %shown, "admin token added");
    } else if db.caller(&hash).await?.is_none() {
        tracing::warn!(file = %shown, "the admin token in this file was revoked or expired");
    }
    Ok(())
}
