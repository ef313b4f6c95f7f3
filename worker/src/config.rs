//! The worker's settings, from flags, `HEIRLOOM_*` environment variables and a settings
//! file, in that order (`heirloom_client::settings`); every key is in docs/CONFIGURATION.md.

use heirloom_client::connection::ConnectArgs;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "heirloom-worker", version, about = "The Heirloom worker")]
pub struct Config {
    /// A TOML file of settings (keys as the flags' names, e.g. `lease-seconds = 10`);
    /// flags and environment variables override it.
    #[arg(long, env = "HEIRLOOM_CONFIG")]
    pub config: Option<PathBuf>,
    /// How to reach the coordinator: address, TLS and token.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where downloaded blobs are cached, by hash, across jobs and restarts (default:
    /// `$XDG_CACHE_HOME/heirloom/worker`, else `~/.cache/heirloom/worker`).
    #[arg(long, env = "HEIRLOOM_CACHE_DIR")]
    pub cache: Option<PathBuf>,
    /// This worker's name, as operators see it.
    #[arg(long, env = "HEIRLOOM_WORKER_NAME", default_value = "worker")]
    pub name: String,
    /// libtorch intra-op threads (set explicitly: the default oversubscribes small machines).
    #[arg(long, env = "HEIRLOOM_THREADS", default_value_t = 1)]
    pub threads: i32,
    /// `auto` (CUDA when present), `cpu`, or `cuda`.
    #[arg(long, env = "HEIRLOOM_DEVICE", default_value = "auto")]
    pub device: String,
    /// How many jobs this worker runs at once (1 to 256).
    #[arg(long, env = "HEIRLOOM_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// A label jobs can require, as key=value (repeat the flag for more).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Log format: `human` or `json`.
    #[arg(long, env = "HEIRLOOM_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
}

impl Config {
    /// The cache directory: `--cache`, or the user's cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(default_cache)
    }
}

fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("heirloom").join("worker")
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?}: write a label as key=value"))
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
