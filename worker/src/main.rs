use heirloom_client::settings;
use heirloom_worker::{Config, agent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = settings::parse_or_exit();
    settings::init_logs(&config.log_format);
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
