//! The coordinator's settings, from flags, `HEIRLOOM_*` environment variables and a settings
//! file, in that order (`heirloom_client::settings`); every key is in docs/CONFIGURATION.md.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "heirloom-coordinator",
    version,
    about = "The Heirloom coordinator"
)]
pub struct Config {
    /// A TOML file of settings (keys as the flags' names, e.g. `lease-seconds = 10`);
    /// flags and environment variables override it.
    #[arg(long, env = "HEIRLOOM_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// How long a job's lease lasts unless its worker renews it (progress, heartbeats
    /// and checkpoints renew it); a worker silent this long loses the job.
    #[arg(long, env = "HEIRLOOM_LEASE_SECONDS", default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// The delay before a failed attempt's retry; it doubles with every failure (with
    /// ±50% jitter), up to five minutes.
    #[arg(long, env = "HEIRLOOM_RETRY_BACKOFF_SECONDS", default_value_t = 2.0)]
    pub retry_backoff_seconds: f64,
    /// Workers checkpoint a training job every this many steps (0: never).
    #[arg(long, env = "HEIRLOOM_CHECKPOINT_EVERY", default_value_t = 200)]
    pub checkpoint_every: u64,
    /// The coordinator's TLS certificate chain (PEM); with `--tls-key`. TLS is on unless
    /// `--insecure-plaintext` is given.
    #[arg(long, env = "HEIRLOOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "HEIRLOOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS for workers: a CA certificate (PEM); every call with a worker token
    /// must then come with a client certificate it signed.
    #[arg(long, env = "HEIRLOOM_WORKER_CLIENT_CA", requires = "tls_cert")]
    pub worker_client_ca: Option<PathBuf>,
    /// Serve without TLS: tokens and weights cross the network readable by anyone on
    /// it. For a loopback-only setup; a warning is logged.
    #[arg(long, env = "HEIRLOOM_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    pub insecure_plaintext: bool,
    /// A file holding an admin token: added to the database if new. If the file does
    /// not exist, a new admin token is made and written there (readable by its owner
    /// only) — the way to get the first token.
    #[arg(long, env = "HEIRLOOM_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`GET /metrics`); none if not given.
    #[arg(long, env = "HEIRLOOM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the lineage explorer on: web pages of models, lineage, jobs and
    /// datasets for anyone with a reader, submitter or admin token; over TLS with the
    /// coordinator's certificate unless `--insecure-plaintext`. Off if not given.
    #[arg(long, env = "HEIRLOOM_EXPLORER_LISTEN")]
    pub explorer_listen: Option<SocketAddr>,
    /// Log format: `human` or `json`.
    #[arg(long, env = "HEIRLOOM_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
}

#[cfg(test)]
mod tests {
    /// docs/CONFIGURATION.md shows every setting; this keeps it true.
    #[test]
    fn the_configuration_reference_lists_every_setting() {
        let docs = include_str!("../../docs/CONFIGURATION.md");
        heirloom_client::settings::check_documented::<super::Config>(docs).unwrap();
    }
}
