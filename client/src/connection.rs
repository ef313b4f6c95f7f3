//! How the worker and the CLI reach the coordinator: one set of flags, TLS unless the
//! address says `http://`, and the bearer token on every call.

use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel to the coordinator that carries the caller's token on every call.
pub type Connection = InterceptedService<Channel, Bearer>;

/// The longest any call may take before the client gives up on it (the coordinator
/// applies the same limit). Streams of assignments and job events are not bounded by
/// it: their answer starts at once.
pub const CALL_DEADLINE: Duration = Duration::from_secs(300);

/// The environment variable that may hold the token itself (`--token-file` names a
/// file instead); a token is never a flag, so it never shows in a process list.
pub const TOKEN_VARIABLE: &str = "HEIRLOOM_TOKEN";

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The coordinator's address: `https://host:port`, or `http://host:port` for a
    /// coordinator started with `--insecure-plaintext`.
    #[arg(
        long,
        global = true,
        env = "HEIRLOOM_COORDINATOR",
        default_value = "https://127.0.0.1:7070"
    )]
    pub coordinator: String,
    /// The CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, global = true, env = "HEIRLOOM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The name the coordinator's certificate is for, when not the address's host.
    #[arg(long, global = true, env = "HEIRLOOM_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// This client's certificate (PEM), for mutual TLS; with `--client-key`.
    #[arg(
        long,
        global = true,
        env = "HEIRLOOM_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `--client-cert`.
    #[arg(
        long,
        global = true,
        env = "HEIRLOOM_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// A file holding the bearer token (else the `HEIRLOOM_TOKEN` variable holds it).
    #[arg(long, global = true, env = "HEIRLOOM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Why a connection could not be set up, saying which setting to fix.
#[derive(Debug)]
pub struct ConnectError(pub String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

fn read(flag: &str, path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|err| ConnectError(format!("{flag} {}: {err}", path.display())))
}

impl ConnectArgs {
    /// Settings for a coordinator at `address`, everything else unset.
    pub fn to(address: impl Into<String>) -> ConnectArgs {
        ConnectArgs {
            coordinator: address.into(),
            ca_cert: None,
            tls_server_name: None,
            client_cert: None,
            client_key: None,
            token_file: None,
        }
    }

    /// The endpoint, with TLS set up for an `https://` address and the flow-control
    /// windows and frames sized for bulk transfers (the coordinator uses the same).
    pub fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let address = &self.coordinator;
        let mut endpoint = Endpoint::from_shared(address.clone())
            .map_err(|err| ConnectError(format!("--coordinator {address:?}: {err}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_DEADLINE)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(64 << 20)
            .max_frame_size(4 << 20);
        match endpoint.uri().scheme_str() {
            Some("https") => {
                let ca = self.ca_cert.as_ref().ok_or_else(|| {
                    ConnectError(format!(
                        "--coordinator {address} uses TLS: name the CA certificate that \
                         signed the coordinator's with --ca-cert (or HEIRLOOM_CA_CERT)"
                    ))
                })?;
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
                if let Some(name) = &self.tls_server_name {
                    tls = tls.domain_name(name.clone());
                }
                if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                    tls = tls.identity(Identity::from_pem(
                        read("--client-cert", cert)?,
                        read("--client-key", key)?,
                    ));
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|err| ConnectError(format!("TLS settings: {err}")))?;
            }
            Some("http") => {}
            _ => {
                return Err(ConnectError(format!(
                    "--coordinator {address:?}: write https://host:port (or http://host:port \
                     for a coordinator without TLS)"
                )));
            }
        }
        Ok(endpoint)
    }

    /// The bearer token: from `--token-file`, else from `HEIRLOOM_TOKEN`; none if
    /// neither is set (every call but health will then be refused).
    pub fn token(&self) -> Result<Option<String>, ConnectError> {
        let token = match &self.token_file {
            Some(path) => String::from_utf8(read("--token-file", path)?)
                .map_err(|_| ConnectError(format!("--token-file {}: not text", path.display())))?,
            None => match std::env::var(TOKEN_VARIABLE) {
                Ok(token) => token,
                Err(_) => return Ok(None),
            },
        };
        Ok(Some(token.trim().to_string()))
    }

    /// A connection made on first use, that reconnects by itself.
    pub fn connect_lazy(&self) -> Result<Connection, ConnectError> {
        self.connect_lazy_as(self.token()?.as_deref())
    }

    /// A connection made on first use, carrying `token` rather than the configured one.
    pub fn connect_lazy_as(&self, token: Option<&str>) -> Result<Connection, ConnectError> {
        Ok(InterceptedService::new(
            self.endpoint()?.connect_lazy(),
            Bearer::new(token)?,
        ))
    }

    /// A connection made now: fails at once when the coordinator cannot be reached.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        let bearer = Bearer::new(self.token()?.as_deref())?;
        let channel = self.endpoint()?.connect().await.map_err(|err| {
            let cause = std::error::Error::source(&err)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            ConnectError(format!(
                "cannot reach the coordinator at {}: {err}{cause}",
                self.coordinator
            ))
        })?;
        Ok(InterceptedService::new(channel, bearer))
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, ConnectError> {
        let value = token
            .map(|token| {
                format!("Bearer {token}").parse().map_err(|_| {
                    ConnectError("the token is not printable ASCII: check the token file".into())
                })
            })
            .transpose()?;
        Ok(Bearer(value))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
