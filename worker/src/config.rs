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
    /// The address other workers reach this one's ranks of a multi-rank job at (on
    /// Kubernetes, the pod IP: `status.podIP`); its ranks' collective connections bind
    /// to it too.
    #[arg(long, env = "HEIRLOOM_ADVERTISE_ADDRESS", default_value = "127.0.0.1")]
    pub advertise_address: String,
    /// The ports for the c10d store its rank 0 hosts, as `FIRST-LAST`: the first free one
    /// is taken at start. Unset: any free port. `none`: this worker takes no ranks of
    /// multi-rank jobs.
    #[arg(long, env = "HEIRLOOM_COLLECTIVE_PORTS")]
    pub collective_ports: Option<String>,
}

/// Where a worker's ranks meet their peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collective {
    pub address: String,
    pub store_port: u16,
}

impl Config {
    /// The address and store port to advertise, the port the first free one of
    /// `--collective-ports`; `None` for `none`.
    pub fn collective(&self) -> Result<Option<Collective>, String> {
        let free = |port: u16| {
            std::net::TcpListener::bind(("0.0.0.0", port))
                .and_then(|listener| listener.local_addr())
                .map(|address| address.port())
                .ok()
        };
        let ports = self.collective_ports.as_deref().unwrap_or_default().trim();
        let store_port = match ports {
            "none" => return Ok(None),
            "" => free(0),
            range => {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                let parse =
                    |port: &str| {
                        port.trim().parse::<u16>().ok().filter(|&port| port > 0).ok_or_else(|| {
                        format!("--collective-ports {range:?}: write FIRST-LAST, ports 1 to 65535")
                    })
                    };
                let (first, last) = (parse(first)?, parse(last)?);
                (first..=last).find_map(free)
            }
        };
        let store_port = store_port
            .ok_or_else(|| format!("--collective-ports {ports:?}: no port in it is free"))?;
        Ok(Some(Collective {
            address: self.advertise_address.clone(),
            store_port,
        }))
    }
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
