//! The lineage explorer: read-only web pages served by the coordinator on a port of its
//! own — the models, a model with its tensor provenance, the lineage graph around it,
//! the jobs (live, over server-sent events) with their curves, and dataset impact. HTML
//! is rendered here; the little JavaScript (filtering, pan and zoom, live updates) and
//! the stylesheet are compiled into the binary, so a browser needs nothing else.
//!
//! Every page needs a reader, submitter or admin token: from the `heirloom_token`
//! cookie the login page sets, or an `Authorization: Bearer` header.

mod graph;
mod html;
mod pages;

use crate::Services;
use crate::auth::{caller_for, secret_sha256};
use crate::connections::{self, ConnectionInfo, GuardedListener, Tracked};
use crate::domain::Role;
use crate::error::{Error, StartupError};
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

const COOKIE: &str = "heirloom_token";

/// Serves the explorer on `listener`, bound by the caller, until `shutdown`; over TLS
/// when given an acceptor ([`tls`]).
pub async fn serve(
    services: Services,
    listener: GuardedListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(services, tls.is_some());
    match tls {
        None => connections::serve_http(listener, app, shutdown).await,
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor)?;
            axum::serve(listener, connections::tracked(app))
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
}

fn router(services: Services, secure: bool) -> axum::Router {
    let pages = axum::Router::new()
        .route("/", get(pages::models))
        .route("/models/{model}", get(pages::model))
        .route("/models/{model}/graph", get(pages::graph))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/stream", get(pages::job_stream))
        .route("/jobs/{job}", get(pages::job))
        .route("/jobs/{job}/chart", get(pages::job_chart))
        .route("/datasets", get(pages::datasets))
        .route("/datasets/{dataset}", get(pages::dataset))
        .route_layer(axum::middleware::from_fn_with_state(
            services.clone(),
            require_reader,
        ));
    axum::Router::new()
        .merge(pages)
        .route("/login", get(pages::login_form).post(login))
        .route("/logout", get(logout))
        .route("/assets/explorer.css", get(stylesheet))
        .route("/assets/explorer.js", get(script))
        .layer(axum::Extension(Secure(secure)))
        .with_state(services)
}

/// Whether the explorer is served over TLS (and its cookie may say `Secure`).
#[derive(Clone, Copy)]
struct Secure(bool);

/// The token a request carries: its cookie, or a bearer header.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// A refusal as plain text (for scripts and streams; pages render theirs), with the HTTP
/// status its [`Error`] maps to.
fn refusal(error: Error) -> Response {
    (error.http_status(), error.public_message()).into_response()
}

/// Is this a token of someone who may read (not a worker's)? `None`: the database is away.
async fn may_read(services: &Services, token: &str) -> Option<bool> {
    let caller = caller_for(&services.db, &services.tokens, &secret_sha256(token))
        .await
        .inspect_err(|err| tracing::warn!(error = %err, "explorer: cannot check a token"))
        .ok()?;
    Some(caller.is_some_and(|caller| caller.role != Role::Worker))
}

async fn require_reader(
    State(services): State<Services>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token_of(request.headers()) else {
        return to_login(&request);
    };
    match may_read(&services, &token).await {
        Some(true) => next.run(request).await,
        Some(false) => to_login(&request),
        None => refusal(Error::Unavailable(
            "the database is unreachable; retry in a moment".into(),
        )),
    }
}

/// Pages send people to the login page (and back afterwards); streams just refuse.
fn to_login(request: &Request) -> Response {
    let path = request.uri().path();
    if path.ends_with("/stream") || path.ends_with("/chart") {
        return refusal(Error::Unauthenticated("log in first".into()));
    }
    let next = request.uri().path_and_query().map_or("/", |p| p.as_str());
    Redirect::to(&format!("/login?next={}", html::url_encode(next))).into_response()
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(services): State<Services>,
    axum::Extension(Secure(secure)): axum::Extension<Secure>,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim();
    match may_read(&services, token).await {
        Some(true) => {
            // Only paths of this site: never a redirect elsewhere.
            let next = if form.next.starts_with('/') && !form.next.starts_with("//") {
                form.next.as_str()
            } else {
                "/"
            };
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                if secure { "; Secure" } else { "" }
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response()
        }
        Some(false) => pages::login_page(
            &form.next,
            Some("That token is unknown, revoked, expired, or a worker's: use a reader, submitter or admin token (`heirloom token create NAME --role reader`)."),
        )
        .into_response(),
        None => refusal(Error::Unavailable("the database is unreachable".into())),
    }
}

async fn logout() -> Response {
    (
        [(header::SET_COOKIE, format!("{COOKIE}=; Path=/; Max-Age=0"))],
        Redirect::to("/login"),
    )
        .into_response()
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/explorer.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/explorer.js"),
    )
}

/// The explorer's TLS: the coordinator's certificate and key, HTTP/1.1 only.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let setting = |flag: &str, path: &Path, err: &dyn std::fmt::Display| {
        StartupError::Setting(format!("{flag} {}: {err}", path.display()))
    };
    let certificates = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| setting("--tls-cert", cert, &err))?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|err| setting("--tls-key", key, &err))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| {
        builder
            .with_no_client_auth()
            .with_single_cert(certificates, key_der)
    })
    .map_err(|err| {
        StartupError::Setting(format!(
            "--tls-cert {} with --tls-key {}: {err}",
            cert.display(),
            key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TCP connections that become TLS ones. Handshakes run concurrently, each on a task of
/// its own (a slow or silent client holds up nobody); failed ones are logged and dropped.
struct TlsListener {
    handshaken: tokio::sync::mpsc::Receiver<(TlsStream, std::net::SocketAddr)>,
    address: std::net::SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<Tracked<tokio::net::TcpStream>>;

impl TlsListener {
    /// Handshakes run in tasks of their own, so a slow one holds up nobody; the
    /// connection's first-call deadline (`connections`) bounds each.
    fn new(mut tcp: GuardedListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let address = tcp.local_addr()?;
        let (sender, handshaken) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tcp.next().await;
                if sender.is_closed() {
                    return;
                }
                let (acceptor, handed) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, %peer, "explorer: TLS handshake failed")
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken,
            address,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for ConnectionInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> ConnectionInfo {
        stream.io().get_ref().0.info()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}
