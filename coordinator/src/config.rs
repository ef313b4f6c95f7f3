//! The coordinator's settings, from flags or `HEIRLOOM_*` environment variables.

use std::net::SocketAddr;

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
    /// Where artifacts are stored: a directory, or `s3://bucket[/prefix]` for any
    /// S3-compatible store (endpoint and credentials from the `AWS_*` variables).
    /// Workers never see it: they reach artifacts over gRPC.
    #[arg(long, env = "HEIRLOOM_ARTIFACTS")]
    pub artifacts: String,
    /// Log format: `human` or `json`.
    #[arg(long, env = "HEIRLOOM_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
}
