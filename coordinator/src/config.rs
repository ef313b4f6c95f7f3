//! The coordinator's settings, from flags or `HEIRLOOM_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "heirloom-coordinator",
    version,
    about = "The Heirloom coordinator"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "HEIRLOOM_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// PostgreSQL connection URL.
    #[arg(long, env = "HEIRLOOM_DATABASE_URL")]
    pub database_url: String,
    /// The artifact directory shared with the workers.
    #[arg(long, env = "HEIRLOOM_ARTIFACTS")]
    pub artifacts: PathBuf,
    /// Log format: `human` or `json`.
    #[arg(long, env = "HEIRLOOM_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
}
