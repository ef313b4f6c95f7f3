//! The coordinator binary: reads its settings, binds its listeners, and runs the library's
//! [`Coordinator`] until Ctrl-C or SIGTERM (what Kubernetes and Docker send to stop it).

use anyhow::Context;
use heirloom_client::settings;
use heirloom_coordinator::{Config, Coordinator};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = settings::parse_or_exit();
    settings::init_logs(&config.log_format);
    let listener = bind(config.listen, "--listen").await?;
    let mut coordinator = Coordinator::build(&config).await?;
    if let Some(address) = config.explorer_listen {
        coordinator = coordinator.with_explorer(bind(address, "--explorer-listen").await?)?;
    }
    if let Some(address) = config.metrics_listen {
        coordinator = coordinator.with_metrics(bind(address, "--metrics-listen").await?);
    }
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let received = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = received, "stopping");
        on_signal.cancel();
    });
    coordinator.run(listener, shutdown).await?;
    Ok(())
}

async fn bind(address: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("{flag} {address}"))
}
