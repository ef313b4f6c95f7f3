use clap::Parser;
use heirloom_worker::{Config, agent};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    // SIGTERM drains: checkpoint what runs, hand it back, then exit. Ctrl-C stops at once.
    let drain = tokio_util::sync::CancellationToken::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let on_terminate = drain.clone();
    tokio::spawn(async move {
        terminate.recv().await;
        tracing::info!("SIGTERM: draining");
        on_terminate.cancel();
    });
    tokio::select! {
        result = agent::run(config, drain) => result?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
