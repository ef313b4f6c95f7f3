//! The Heirloom coordinator: keeps model lineage and the job queue in PostgreSQL and
//! serves them over gRPC to clients and workers.
//!
//! A coordinator is `Config` → [`Coordinator::build`] → [`Coordinator::run`]; it holds no
//! state of its own beyond the database and the artifact directory, so several can run
//! against one database.

pub mod artifacts;
pub mod config;
pub mod db;
mod dispatch;
pub mod domain;
pub mod error;
mod grpc;
mod notifier;
mod planning;

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
    policy: domain::Policy,
}

pub struct Coordinator {
    services: Services,
    shutdown: CancellationToken,
}

impl Coordinator {
    /// Connects to the database, applies the migrations and opens the artifact directory.
    pub async fn build(config: &Config) -> anyhow::Result<Coordinator> {
        let db = Db::connect(&config.database_url).await?;
        db.migrate().await?;
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
                notifier,
                policy,
            },
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
        let result = grpc::serve(self.services, listener, shutdown).await;
        self.shutdown.cancel();
        Ok(result?)
    }
}
