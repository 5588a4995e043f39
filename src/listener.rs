//! Bounded listeners for both ports: one accept loop with a connection cap, accept errors that
//! back off instead of spinning, and per-connection deadlines (first request headers, idle,
//! request) around hyper-util's connection builder.
//!
//! tonic's and axum's own servers have neither a header-read deadline for HTTP/2 nor an idle
//! deadline, and they retry a failing `accept` at once, so a peer that opens connections and
//! never finishes a request holds a file descriptor forever, and running out of descriptors
//! turns the accept loop into a busy loop. Here every connection holds a permit of the port's
//! semaphore for its whole life; with none left the loop stops accepting, and new connections
//! wait in the kernel's listen backlog (no descriptor, no CPU) until one closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::{GrpcListenerConfig, HttpListenerConfig};
use crate::tls::ServerTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deadlines and the cap of one port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Open connections; the accept loop waits for a free permit before accepting.
    pub max_connections: usize,
    /// From accept until the first request's headers have arrived.
    pub header_read_timeout: Duration,
    /// With no request in flight for this long, the connection is closed gracefully.
    pub idle_timeout: Duration,
    /// One request, from its headers to its response headers.
    pub request_timeout: Duration,
}

impl Limits {
    pub(crate) fn grpc(config: &GrpcListenerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            request_timeout: config.request_timeout,
        }
    }

    pub(crate) fn http(config: &HttpListenerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            request_timeout: config.request_timeout,
        }
    }
}

/// What a port does with one request.
pub(crate) trait Handler: Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;

    /// The response future; the connection boxes it once, with the request deadline around it.
    fn call(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;

    /// The answer when the request deadline passes first.
    fn timed_out(&self) -> Response<Self::Body>;
}

/// The ext_authz port: HTTP/2 only, as tonic's server is by default.
pub(crate) fn grpc_builder(config: &GrpcListenerConfig) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout);
    builder
}

/// The side port: HTTP/1.1 (probes, scrapers, forward-auth) and HTTP/2 with prior knowledge.
pub(crate) fn http_builder(config: &HttpListenerConfig) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper enforces the header read deadline of later keep-alive requests only with a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Accepts on `listener` and serves every connection with `handler` until `shutdown` turns true
/// (or its sender is dropped); then stops accepting, closes connections gracefully and returns
/// once all are gone. The caller bounds that wait. With `tls`, every connection is a TLS one:
/// its handshake runs in the connection's task, within its header-read deadline.
pub(crate) async fn serve<H: Handler>(
    port: &'static str,
    listener: TcpListener,
    builder: Builder<TokioExecutor>,
    handler: H,
    limits: Limits,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handler = Arc::new(handler);
    let mut backoff = Backoff::default();
    let mut saturated = false;
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                saturated = false;
                permit
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        port,
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed; stop rather than loop if it ever is.
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            // The peer gave up between SYN and accept: nothing is wrong with the listener.
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                let delay = backoff.next();
                // Once per streak, not once per retry: a descriptor shortage lasts.
                if backoff.first_in_streak() {
                    tracing::warn!(port, error = %e, "accept failed; retrying with backoff");
                }
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        // Nagle's delay would hold back small responses behind the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            builder.clone(),
            Arc::clone(&handler),
            limits,
            tls.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    // Closing the socket makes the kernel refuse new connections from here on.
    drop(listener);
    tracing::debug!(port, "stopped accepting; waiting for open connections");
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// Accept errors that concern one connection only, so retrying at once is right.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

/// 10 ms doubling to 1 s between failing accepts (EMFILE, ENFILE, ENOBUFS, ENOMEM…): a
/// descriptor shortage clears when connections close, and retrying sooner only burns a core.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let delay = Self::FIRST
            .saturating_mul(1u32 << self.failures.min(7))
            .min(Self::MOST);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    fn first_in_streak(&self) -> bool {
        self.failures == 1
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Serves one connection within its deadlines; the permit goes back when it ends. A TLS
/// handshake counts against the header-read deadline: a peer that stalls it holds its permit no
/// longer than one that stalls its request headers.
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's whole context, passed once from the accept loop"
)]
async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Builder<TokioExecutor>,
    handler: Arc<H>,
    limits: Limits,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let Some(tls) = tls else {
        let io = TokioIo::new(stream);
        return serve_connection(io, peer, builder, handler, limits, shutdown, activity).await;
    };
    let deadline = activity.opened + limits.header_read_timeout;
    let handshake = tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => return,
        handshake = tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(stream);
            serve_connection(io, peer, builder, handler, limits, shutdown, activity).await;
        }
        // Scanners and misconfigured clients: counted, not logged above debug.
        Ok(Err(error)) => {
            tls.handshake_failed();
            tracing::debug!(%peer, %error, "TLS handshake failed");
        }
        Err(_) => {
            tls.handshake_failed();
            tracing::debug!(%peer, "TLS handshake not finished within header_read_timeout");
        }
    }
}

/// Runs hyper on one connection (plaintext or TLS) within its deadlines.
async fn serve_connection<H, IO>(
    io: IO,
    peer: SocketAddr,
    builder: Builder<TokioExecutor>,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    H: Handler,
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = Connection {
        handler,
        activity: Arc::clone(&activity),
        peer,
        request_timeout: limits.request_timeout,
    };
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut deadline = activity.opened + limits.header_read_timeout;
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing {
                    tracing::debug!(%peer, "connection did not close in time; dropped");
                    return;
                }
                match activity.next_check(&limits) {
                    Check::At(at) => deadline = at,
                    Check::Close(reason) => {
                        tracing::debug!(%peer, reason, "closing connection");
                        // HTTP/2 still in its handshake and HTTP/1 between requests close at
                        // once; an established HTTP/2 connection gets a GOAWAY first.
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        deadline = Instant::now() + limits.request_timeout;
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                // In-flight requests end by their own deadline; Running::shutdown bounds the rest.
                deadline = Instant::now() + limits.request_timeout;
            }
        }
    }
}

/// What the connection task knows about its requests.
struct Activity {
    opened: Instant,
    /// A request's headers have arrived.
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds since `opened`.
    last_done_ms: AtomicU64,
}

enum Check {
    At(Instant),
    Close(&'static str),
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// When to look again, or why to close now.
    fn next_check(&self, limits: &Limits) -> Check {
        let now = Instant::now();
        if !self.started.load(Ordering::Relaxed) {
            let due = self.opened + limits.header_read_timeout;
            return if now >= due {
                Check::Close("no request headers within server header_read_timeout")
            } else {
                Check::At(due)
            };
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // A busy connection is not idle; the request deadline bounds each request.
            return Check::At(now + limits.idle_timeout);
        }
        let last = self.opened + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        let due = last + limits.idle_timeout;
        if now >= due {
            Check::Close("idle for server idle_timeout")
        } else {
            Check::At(due)
        }
    }
}

/// One request in flight; dropped when its response body is done (or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = self.0.opened.elapsed().as_millis();
        self.0.last_done_ms.store(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service of one connection.
struct Connection<H> {
    handler: Arc<H>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    request_timeout: Duration,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Connection<H> {
    type Response = Response<Tracked<H::Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let handler = Arc::clone(&self.handler);
        let response = handler.call(request, self.peer);
        let timeout = self.request_timeout;
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => handler.timed_out(),
            };
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
pub(crate) struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The ext_authz port: tonic's routes (ext_authz and grpc.health.v1).
pub(crate) struct GrpcHandler {
    routes: tonic::service::Routes,
}

impl GrpcHandler {
    pub(crate) fn new(routes: tonic::service::Routes) -> Self {
        Self {
            routes: routes.prepare(),
        }
    }
}

impl Handler for GrpcHandler {
    type Body = tonic::body::Body;

    fn call(
        &self,
        request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static {
        call_service(self.routes.clone(), request)
    }

    fn timed_out(&self) -> Response<Self::Body> {
        tonic::Status::deadline_exceeded("request not completed within server.grpc.request_timeout")
            .into_http()
    }
}

/// The side port: the axum router, behind a body limit.
pub(crate) struct HttpHandler {
    router: axum::Router,
    max_body_bytes: usize,
}

impl HttpHandler {
    pub(crate) fn new(router: axum::Router, max_body_bytes: usize) -> Self {
        Self {
            router,
            max_body_bytes,
        }
    }
}

impl Handler for HttpHandler {
    type Body = axum::body::Body;

    fn call(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static {
        let limit = self.max_body_bytes;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large_declared =
            declared.is_some_and(|len| len > u64::try_from(limit).unwrap_or(u64::MAX));
        // Without a length (chunked, HTTP/2), reading past the limit fails in the handler.
        let mut request =
            request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let router = self.router.clone();
        async move {
            if too_large_declared {
                return too_large(limit);
            }
            call_service(router, request).await
        }
    }

    fn timed_out(&self) -> Response<Self::Body> {
        plain(
            http::StatusCode::REQUEST_TIMEOUT,
            "request not completed within server.http.request_timeout\n".to_owned(),
        )
    }
}

fn too_large(limit: usize) -> Response<axum::body::Body> {
    plain(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than server.http.max_body_bytes ({limit} bytes)\n"),
    )
}

fn plain(status: http::StatusCode, text: String) -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The request may not have been read to its end; the connection cannot be reused.
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Calls a tower service that cannot fail, readiness first.
async fn call_service<S, R, B>(mut service: S, request: R) -> Response<B>
where
    S: tower_service::Service<R, Response = Response<B>, Error = Infallible>,
{
    let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
    match ready {
        Ok(()) => match service.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` when unknown.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(10));
        assert!(backoff.first_in_streak());
    }

    #[test]
    fn aborted_connections_are_not_listener_failures() {
        use std::io::{Error, ErrorKind};
        assert!(per_connection(&Error::from(ErrorKind::ConnectionAborted)));
        // EMFILE: the process is out of descriptors.
        assert!(!per_connection(&Error::from_raw_os_error(24)));
    }

    #[test]
    fn open_files_limit_reads_proc() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
