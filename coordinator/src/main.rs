use heirloom_coordinator::{Config, Coordinator};
use heirloom_proto::settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = settings::parse_or_exit();
    settings::init_logs(&config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let coordinator = Coordinator::build(&config).await?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    coordinator.run(listener, shutdown).await
}
