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
    tokio::select! {
        result = agent::run(config) => result?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
