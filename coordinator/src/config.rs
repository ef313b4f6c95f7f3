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
    /// The ranks of a job on several ranks must all meet within this long, and every
    /// collective (a gradient all-reduce) ends within it or fails the attempt: a rank
    /// whose address cannot be reached, or that stalls, is given up on this fast.
    #[arg(
        long,
        env = "HEIRLOOM_COLLECTIVE_TIMEOUT_SECONDS",
        default_value_t = 60.0
    )]
    pub collective_timeout_seconds: f64,
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
    /// At most this many open connections, all listeners together. At the cap a new
    /// connection takes the place of the one idle longest. Lowered to fit the
    /// file-descriptor limit (raised to its hard limit at start) less 128 for the
    /// database pool, the store and logs.
    #[arg(long, env = "HEIRLOOM_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// At most this many open connections from one IP address; at the cap a new one
    /// takes the place of that address's connection idle longest.
    #[arg(long, env = "HEIRLOOM_MAX_CONNECTIONS_PER_PEER", default_value_t = 2_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,
    /// A connection must begin its first call within this many seconds of opening (TLS
    /// handshake included), or it is closed.
    #[arg(long, env = "HEIRLOOM_FIRST_CALL_SECONDS", default_value_t = 10.0)]
    pub first_call_seconds: f64,
    /// A connection with no call in flight for this many seconds is closed (clients
    /// reconnect when they next call).
    #[arg(long, env = "HEIRLOOM_IDLE_TIMEOUT_SECONDS", default_value_t = 300.0)]
    pub idle_timeout_seconds: f64,
    /// Log format: `human` or `json`.
    #[arg(long, env = "HEIRLOOM_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
    /// The largest blob (a tensor, a dataset, a TorchScript program) an upload may
    /// declare, in bytes; a larger one is refused before any of it is stored. Datasets
    /// are held to 1 GiB at registration whatever this says.
    #[arg(long, env = "HEIRLOOM_MAX_BLOB_BYTES", default_value_t = 1 << 30)]
    pub max_blob_bytes: u64,
    /// Bytes each token may upload in any hour (refused uploads count what arrived);
    /// past it, uploads are refused until enough of the hour's uploads age out. One
    /// worker token serves a pool of workers, so this covers all their checkpoints and
    /// outputs.
    #[arg(long, env = "HEIRLOOM_UPLOAD_BYTES_PER_HOUR", default_value_t = 100 << 30)]
    pub upload_bytes_per_hour: u64,
    /// Blobs each token may hold from garbage collection at once (MissingBlobs holds
    /// every blob it is asked about for an hour).
    #[arg(long, env = "HEIRLOOM_MAX_HELD_BLOBS", default_value_t = 1_000_000)]
    pub max_held_blobs: u64,
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
