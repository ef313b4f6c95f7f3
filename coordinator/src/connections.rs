//! Connection hygiene, one place for every listener (gRPC, the explorer, metrics).
//!
//! - **Caps**: at most `max_open` connections in all and `max_per_peer` from one IP
//!   address. A connection over a cap takes the place of the connection that has been
//!   idle longest (no call in flight) — from the same peer at the per-peer cap, from
//!   anyone at the global cap — so idle connections can never lock callers out.
//! - **Health at the cap**: when every connection has a call in flight, up to
//!   [`HEALTH_RESERVE`] more are let in, each for health checks only (gRPC's
//!   `/grpc.health.v1.Health/…` and `GET /metrics`; any other gRPC call on one is
//!   answered RESOURCE_EXHAUSTED, any other page 503). Beyond that a connection is
//!   closed at once.
//! - **Deadlines**: a connection must begin its first call within `first_call_deadline`
//!   (this bounds the TLS handshake and the HTTP preface alike), and one with no call in
//!   flight for `idle_timeout` is closed. HTTP/2 keep-alive pings (set on the gRPC
//!   server) find dead peers; these find live but silent ones.
//!
//! Every closing for one of these reasons is counted in
//! `heirloom_connections_closed_total{listener,reason}`, and reaching a cap is logged
//! (at most every ten seconds). Closing is done by ending the connection's reads and
//! failing its writes, which ends its TLS handshake or HTTP session where it stands.

use crate::metrics::Metrics;
use futures::task::AtomicWaker;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

/// Connections let in over the cap for health checks alone, when none could be evicted.
pub const HEALTH_RESERVE: usize = 16;

/// What a health-only connection may ask for: gRPC health checks, and the metrics
/// (monitoring must see a coordinator at its cap); nothing of the explorer.
fn is_health_check(listener: &str, path: &str) -> bool {
    match listener {
        "grpc" => path.starts_with("/grpc.health.v1.Health/"),
        "metrics" => path == "/metrics",
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_open: usize,
    pub max_per_peer: usize,
    pub first_call_deadline: Duration,
    pub idle_timeout: Duration,
}

/// File descriptors kept out of the connection budget: the database pool, the store's
/// files, logs.
const DESCRIPTORS_KEPT: u64 = 128;

/// How many connections the process can hold: its soft file-descriptor limit, first
/// raised to the hard limit (as Go's runtime does at start), less [`DESCRIPTORS_KEPT`].
pub fn descriptor_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return usize::MAX; // unknown: the setting alone decides
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    soft.saturating_sub(DESCRIPTORS_KEPT)
        .max(1)
        .try_into()
        .unwrap_or(usize::MAX)
}

/// Why the coordinator closed or refused a connection (the metric's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Made room for a new connection at the global cap.
    EvictedAtCap,
    /// Made room for a new connection from the same peer at the per-peer cap.
    EvictedAtPeerCap,
    /// Refused: at the cap, nothing idle to evict and the health reserve full.
    RefusedAtCap,
    /// No call begun within the first-call deadline.
    NoCallInTime,
    /// No call in flight for the idle timeout.
    Idle,
}

impl Closing {
    pub fn as_str(self) -> &'static str {
        match self {
            Closing::EvictedAtCap => "evicted_at_cap",
            Closing::EvictedAtPeerCap => "evicted_at_peer_cap",
            Closing::RefusedAtCap => "refused_at_cap",
            Closing::NoCallInTime => "no_call_in_time",
            Closing::Idle => "idle",
        }
    }
}

/// The open connections of every listener of one coordinator; cheap to clone.
#[derive(Clone)]
pub struct Connections(Arc<Shared>);

struct Shared {
    limits: Limits,
    metrics: Metrics,
    open: Mutex<Vec<Arc<Slot>>>,
    /// When a cap was last logged.
    last_cap_warning: Mutex<Option<Instant>>,
}

/// One open connection, as the caps and deadlines see it.
#[derive(Debug)]
pub struct Slot {
    listener: &'static str,
    peer: IpAddr,
    opened: Instant,
    /// Let in over the cap for health checks only.
    health_only: bool,
    calls_in_flight: AtomicUsize,
    began_a_call: AtomicBool,
    /// Milliseconds after `opened` when the last call ended (or began).
    last_call_ms: AtomicU64,
    closed: AtomicBool,
    /// The task waiting to read from the connection, woken when it is closed.
    reader: AtomicWaker,
}

impl Slot {
    /// How long the connection has had no call in flight; `None` while one is.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.calls_in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.opened + Duration::from_millis(self.last_call_ms.load(Ordering::Acquire));
        Some(now.saturating_duration_since(since))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn mark_call(&self) {
        let elapsed = self.opened.elapsed().as_millis() as u64;
        self.last_call_ms.store(elapsed, Ordering::Release);
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Connections")
    }
}

impl Connections {
    /// Connection bookkeeping under `limits`; its sweeper (deadlines) runs until `stop`.
    pub fn start(limits: Limits, metrics: Metrics, stop: CancellationToken) -> Connections {
        let connections = Connections(Arc::new(Shared {
            limits,
            metrics,
            open: Mutex::new(Vec::new()),
            last_cap_warning: Mutex::new(None),
        }));
        let sweeper = connections.clone();
        tokio::spawn(async move {
            let period = (limits.first_call_deadline.min(limits.idle_timeout) / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => sweeper.sweep(),
                }
            }
        });
        connections
    }

    /// `listener`'s connections, admitted under the caps.
    pub fn guard(&self, listener: TcpListener, name: &'static str) -> GuardedListener {
        GuardedListener {
            listener,
            name,
            connections: self.clone(),
        }
    }

    /// Admits a connection from `peer`, evicting an idle one at a cap; `None` when it
    /// must be closed at once. The caps count regular connections; health-only ones
    /// have their own [`HEALTH_RESERVE`].
    fn admit(&self, listener: &'static str, peer: IpAddr) -> Option<Arc<Slot>> {
        let limits = self.0.limits;
        let now = Instant::now();
        let mut open = self.0.open.lock().expect("connections lock");
        let regular =
            |slot: &Slot, same_peer: bool| !slot.health_only && (!same_peer || slot.peer == peer);
        let from_peer = open.iter().filter(|slot| regular(slot, true)).count();
        let mut health_only = false;
        for (reason, cap) in [
            (Closing::EvictedAtPeerCap, limits.max_per_peer),
            (Closing::EvictedAtCap, limits.max_open),
        ] {
            let same_peer = reason == Closing::EvictedAtPeerCap;
            if health_only || open.iter().filter(|slot| regular(slot, same_peer)).count() < cap {
                continue;
            }
            self.warn_at_cap(listener, peer, from_peer);
            match idlest(&open, now, |slot| regular(slot, same_peer)) {
                Some(index) => self.evict(&mut open, index, reason),
                None => health_only = true,
            }
        }
        if health_only && open.iter().filter(|slot| slot.health_only).count() >= HEALTH_RESERVE {
            match idlest(&open, now, |slot| slot.health_only) {
                Some(index) => self.evict(&mut open, index, Closing::EvictedAtCap),
                None => {
                    drop(open);
                    self.ended(listener, Closing::RefusedAtCap);
                    return None;
                }
            }
        }
        let slot = Arc::new(Slot {
            listener,
            peer,
            opened: now,
            health_only,
            calls_in_flight: AtomicUsize::new(0),
            began_a_call: AtomicBool::new(false),
            last_call_ms: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        });
        open.push(slot.clone());
        self.0.metrics.connection_opened(listener);
        Some(slot)
    }

    fn evict(&self, open: &mut Vec<Arc<Slot>>, index: usize, reason: Closing) {
        let evicted = open.swap_remove(index);
        evicted.close();
        self.ended(evicted.listener, reason);
    }

    /// Forgets a connection whose transport has been dropped.
    fn forget(&self, slot: &Arc<Slot>) {
        let mut open = self.0.open.lock().expect("connections lock");
        if let Some(index) = open.iter().position(|open| Arc::ptr_eq(open, slot)) {
            open.swap_remove(index);
        }
        drop(open);
        self.0.metrics.connection_dropped(slot.listener);
    }

    /// Closes the connections past their first-call deadline or idle timeout.
    fn sweep(&self) {
        let limits = self.0.limits;
        let now = Instant::now();
        let mut open = self.0.open.lock().expect("connections lock");
        let mut index = 0;
        while index < open.len() {
            let slot = &open[index];
            let reason = if !slot.began_a_call.load(Ordering::Acquire) {
                (now - slot.opened > limits.first_call_deadline).then_some(Closing::NoCallInTime)
            } else {
                slot.idle_for(now)
                    .is_some_and(|idle| idle > limits.idle_timeout)
                    .then_some(Closing::Idle)
            };
            match reason {
                Some(reason) => self.evict(&mut open, index, reason),
                None => index += 1,
            }
        }
    }

    fn ended(&self, listener: &'static str, reason: Closing) {
        self.0.metrics.connection_closed(listener, reason.as_str());
    }

    fn warn_at_cap(&self, listener: &'static str, peer: IpAddr, from_peer: usize) {
        let mut last = self.0.last_cap_warning.lock().expect("warning lock");
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
            return;
        }
        *last = Some(Instant::now());
        let limits = self.0.limits;
        tracing::warn!(
            listener,
            %peer,
            from_peer,
            max_connections = limits.max_open,
            max_connections_per_peer = limits.max_per_peer,
            "connection cap reached: idle connections make room for new ones \
             (heirloom_connections_closed_total counts them); raise --max-connections \
             or --max-connections-per-peer if these are real clients"
        );
    }
}

/// The index of the connection idle longest among the `eligible`, if any is idle.
fn idlest(open: &[Arc<Slot>], now: Instant, eligible: impl Fn(&Slot) -> bool) -> Option<usize> {
    open.iter()
        .enumerate()
        .filter(|(_, slot)| eligible(slot))
        .filter_map(|(index, slot)| Some((index, slot.idle_for(now)?)))
        .max_by_key(|(_, idle)| *idle)
        .map(|(index, _)| index)
}

/// A listener whose connections are admitted under the caps; for axum
/// ([`axum::serve::Listener`]) and, through [`GuardedListener::into_incoming`], tonic.
pub struct GuardedListener {
    listener: TcpListener,
    name: &'static str,
    connections: Connections,
}

impl GuardedListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next admitted connection; accept errors (out of file descriptors) are logged
    /// and retried after a pause.
    pub async fn next(&mut self) -> (Tracked<TcpStream>, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listener = self.name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.connections.admit(self.name, peer.ip()) else {
                continue; // dropped: closed at once
            };
            // Without it, small answers wait out the peer's delayed ACK (40 ms).
            let _ = stream.set_nodelay(true);
            let tracked = Tracked {
                io: stream,
                slot,
                connections: self.connections.clone(),
            };
            return (tracked, peer);
        }
    }

    /// The admitted connections as the stream tonic serves.
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = Result<Tracked<TcpStream>, io::Error>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (io, _) = listener.next().await;
            Some((Ok(io), listener))
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Tracked<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GuardedListener::local_addr(self)
    }
}

/// Serves `router` over plain HTTP on `listener` until `shutdown`, each call counted on
/// its connection.
pub async fn serve_http(
    listener: GuardedListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    axum::serve(listener, tracked(router))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// `router` with its calls counted on their connections, as axum serves it.
pub fn tracked(
    router: axum::Router,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, ConnectionInfo> {
    router
        .layer(TrackCallsLayer)
        .into_make_service_with_connect_info::<ConnectionInfo>()
}

/// A connection's transport, ended from outside when its slot is closed.
pub struct Tracked<IO> {
    io: IO,
    slot: Arc<Slot>,
    connections: Connections,
}

impl<IO> Tracked<IO> {
    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo(self.slot.clone())
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.connections.forget(&self.slot);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Lock-free: this runs on every read of every connection.
        self.slot.reader.register(context.waker());
        // Checked after the waker is stored, so a close in between still wakes us.
        if self.slot.is_closed() {
            return Poll::Ready(Ok(())); // end of stream
        }
        Pin::new(&mut self.io).poll_read(context, buffer)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.slot.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(context)
    }
}

/// What a request knows of its connection: put in its extensions by tonic
/// ([`tonic::transport::server::Connected`]) and axum (`ConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnectionInfo(Arc<Slot>);

impl tonic::transport::server::Connected for Tracked<TcpStream> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ConnectionInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> ConnectionInfo {
        stream.io().info()
    }
}

/// The connection a request came on, whichever server put it there.
fn connection_of<B>(request: &http::Request<B>) -> Option<Arc<Slot>> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectionInfo>()
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<ConnectionInfo>>()
                .map(|info| info.get_ref())
        })
        .or_else(|| {
            extensions
                .get::<axum::extract::ConnectInfo<ConnectionInfo>>()
                .map(|info| &info.0)
        })
        .map(|info| info.0.clone())
}

/// Counts each call in flight on its connection (until its response body ends), and
/// turns away all but health checks on a health-only connection.
#[derive(Debug, Clone, Copy)]
pub struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackCalls<S> {
    inner: S,
}

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = http::Response<CountedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let slot = connection_of(&request);
        if let Some(slot) = slot.as_ref().filter(|slot| slot.health_only)
            && !is_health_check(slot.listener, request.uri().path())
        {
            let refusal = health_only_refusal(slot.listener);
            return Box::pin(async move { Ok(refusal.map(CountedBody::uncounted)) });
        }
        let call = slot.map(CallInFlight::begin);
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| CountedBody { body, call }))
        })
    }
}

/// The answer to a call other than a health check on a health-only connection.
fn health_only_refusal<B: Default>(listener: &str) -> http::Response<B> {
    let message = "the coordinator is at its connection cap: this connection may only check \
                   health; try again shortly";
    let builder = http::Response::builder();
    let builder = if listener == "grpc" {
        builder
            .header("content-type", "application/grpc")
            .header(
                "grpc-status",
                (tonic::Code::ResourceExhausted as i32).to_string(),
            )
            .header("grpc-message", message)
    } else {
        builder.status(http::StatusCode::SERVICE_UNAVAILABLE)
    };
    builder
        .body(B::default())
        .expect("static headers are valid")
}

/// A call counted in flight on its connection while this lives.
struct CallInFlight(Arc<Slot>);

impl CallInFlight {
    fn begin(slot: Arc<Slot>) -> CallInFlight {
        slot.calls_in_flight.fetch_add(1, Ordering::AcqRel);
        slot.began_a_call.store(true, Ordering::Release);
        slot.mark_call();
        CallInFlight(slot)
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.mark_call();
        self.0.calls_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its call counted until it has been sent (or dropped).
pub struct CountedBody<B> {
    body: B,
    call: Option<CallInFlight>,
}

impl<B> CountedBody<B> {
    fn uncounted(body: B) -> CountedBody<B> {
        CountedBody { body, call: None }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(context);
        if matches!(polled, Poll::Ready(None)) {
            self.call = None; // sent: the call has ended
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
