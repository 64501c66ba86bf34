//! The HTTP endpoints both binaries serve on `--metrics-addr`, with hyper's
//! HTTP/1 server (already in the tree through kube):
//!
//! - `/metrics`: OpenMetrics text.
//! - `/healthz`: 200 while the process answers (liveness).
//! - `/readyz`: 200 once the binary says it is ready for work, else 503 and
//!   why (readiness): the controller once its caches are synced, the agent
//!   once its data plane is loaded.
//!
//! Both binaries run on the host network, so anything that reaches a node
//! reaches this port. A client gets [`Limits::header_timeout`] to send its
//! request and [`Limits::connection_timeout`] for the whole exchange; at most
//! [`Limits::max_connections`] are served at once (more wait in the kernel's
//! backlog); an accept error (out of file descriptors) pauses accepting
//! instead of spinning; and the render (BPF map walks on the agent) runs at
//! most once per [`Limits::min_render_interval`], however often it is scraped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::health::Health;

/// What one client may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send the request head; a slower client is disconnected.
    pub header_timeout: Duration,
    /// For a whole connection, response included.
    pub connection_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// A scrape within this long of the last render gets that render again.
    pub min_render_interval: Duration,
    /// How long accepting pauses after an accept error.
    pub accept_error_pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_connections: 16,
            min_render_interval: Duration::from_secs(1),
            accept_error_pause: Duration::from_millis(500),
        }
    }
}

/// Listens on `addr`. An IPv6 wildcard (`[::]`, the default) takes IPv4
/// too, whatever `net.ipv6.bindv6only` says; on a node without IPv6 it
/// falls back to `0.0.0.0` on the same port, with a warning.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_exactly(addr) {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, error = %e, fallback = %v4, "cannot listen on IPv6 (is it disabled on this node?); listening on IPv4 only");
            bind_exactly(v4)
        }
        other => other,
    }
}

fn bind_exactly(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Listens on `addr` ([`bind`]) and serves the routes above with the default
/// [`Limits`] in a task of its own, as both binaries do; returns the
/// [`Health`] (starting) that `/healthz` and `/readyz` report.
pub fn spawn_server<F>(addr: SocketAddr, render: F) -> std::io::Result<Health>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener = bind(addr)?;
    let health = Health::starting();
    tokio::spawn(serve(listener, render, health.clone(), Limits::default()));
    Ok(health)
}

/// Answers the routes above until the task is dropped. `render` runs on the
/// blocking pool: it may read BPF maps or take locks.
pub async fn serve<F>(listener: TcpListener, render: F, health: Health, limits: Limits)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(CachedRender::new(render, limits.min_render_interval));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = 0u64;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE/ENFILE persist until a descriptor is freed: retrying
                // at once would spin a core. Logged once per 100 in a row.
                if accept_errors.is_multiple_of(100) {
                    tracing::warn!(%error, pause = ?limits.accept_error_pause, "metrics server cannot accept a connection; pausing");
                }
                accept_errors += 1;
                tokio::time::sleep(limits.accept_error_pause).await;
                continue;
            }
        };
        accept_errors = 0;
        let render = render.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let render = render.clone();
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(&request, &render, &health).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection at the deadline closes the socket.
            let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
            drop(slot);
        });
    }
}

async fn answer<F>(
    request: &Request<Incoming>,
    render: &Arc<CachedRender<F>>,
    health: &Health,
) -> Response<Full<Bytes>>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let route = match request.uri().path() {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return reply(StatusCode::NOT_FOUND, TEXT, String::new()),
    };
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, String::new());
    }
    match route {
        Route::Metrics => {
            let render = render.clone();
            let body = tokio::task::spawn_blocking(move || render.get())
                .await
                .map(|body| body.as_str().to_owned())
                .unwrap_or_default();
            reply(StatusCode::OK, OPENMETRICS, body)
        }
        Route::Healthz => reply(StatusCode::OK, TEXT, "ok\n".into()),
        Route::Readyz => match health.readiness() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

enum Route {
    Metrics,
    Healthz,
    Readyz,
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// `render`, run at most once per `interval`: scrapes in between (or
/// waiting on one another) get the last result.
struct CachedRender<F> {
    render: F,
    interval: Duration,
    last: Mutex<Option<(Instant, Arc<String>)>>,
}

impl<F: Fn() -> String> CachedRender<F> {
    fn new(render: F, interval: Duration) -> Self {
        Self {
            render,
            interval,
            last: Mutex::new(None),
        }
    }

    /// Holds the lock while rendering, so concurrent scrapes wait for one
    /// render instead of each walking the maps.
    fn get(&self) -> Arc<String> {
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, body)) = last.as_ref()
            && at.elapsed() < self.interval
        {
            return body.clone();
        }
        let body = Arc::new((self.render)());
        *last = Some((Instant::now(), body.clone()));
        body
    }
}

#[cfg(test)]
mod tests;
