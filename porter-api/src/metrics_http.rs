//! The HTTP endpoints both binaries serve on `--metrics-addr`: a minimal
//! HTTP/1.1 responder, because three GET routes do not justify a web
//! framework.
//!
//! - `/metrics`: OpenMetrics text.
//! - `/healthz`: 200 while the process answers (liveness).
//! - `/readyz`: 200 once the binary says it is ready for work, else 503
//!   (readiness): the controller once its caches are synced, the agent once
//!   its data plane is loaded.

pub use crate::health::Health;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers the routes above until the listener fails. `render` runs on the
/// blocking pool: it may read BPF maps or take locks.
pub async fn serve_with_health<F>(listener: TcpListener, render: F, health: Health)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = match route(&request) {
                Route::Metrics => {
                    let body = tokio::task::spawn_blocking(render)
                        .await
                        .unwrap_or_default();
                    response(
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        &body,
                    )
                }
                Route::Healthz => response("200 OK", TEXT, "ok\n"),
                Route::Readyz => match health.readiness() {
                    Ok(()) => response("200 OK", TEXT, "ready\n"),
                    Err(why) => response(
                        "503 Service Unavailable",
                        TEXT,
                        &format!("not ready: {why}\n"),
                    ),
                },
                Route::NotAllowed => response("405 Method Not Allowed", TEXT, ""),
                Route::NotFound => response("404 Not Found", TEXT, ""),
            };
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    NotAllowed,
    NotFound,
}

/// The route of a request's first line, `GET /path?query HTTP/1.1`.
fn route(request: &str) -> Route {
    let mut words = request.lines().next().unwrap_or_default().split(' ');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let known = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return Route::NotFound,
    };
    if method == "GET" {
        known
    } else {
        Route::NotAllowed
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        answer
    }

    fn status(answer: &str) -> &str {
        answer.lines().next().unwrap_or_default()
    }

    #[tokio::test]
    async fn probes_and_metrics_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Health::starting();
        tokio::spawn(serve_with_health(
            listener,
            || "porter_up 1\n# EOF\n".to_string(),
            health.clone(),
        ));
        let req = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");

        assert_eq!(
            status(&get(addr, &req("/healthz")).await),
            "HTTP/1.1 200 OK"
        );
        let not_yet = get(addr, &req("/readyz")).await;
        assert_eq!(status(&not_yet), "HTTP/1.1 503 Service Unavailable");
        health.set_ready(true);
        let ready = get(addr, &req("/readyz?verbose")).await;
        assert_eq!(status(&ready), "HTTP/1.1 200 OK");
        assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
        health.set_ready(false);
        assert_eq!(
            status(&get(addr, &req("/readyz")).await),
            "HTTP/1.1 503 Service Unavailable",
            "readiness can be withdrawn"
        );

        let metrics = get(addr, &req("/metrics")).await;
        assert_eq!(status(&metrics), "HTTP/1.1 200 OK");
        assert!(metrics.contains("content-length: 18\r\n"), "{metrics}");
        assert!(metrics.ends_with("porter_up 1\n# EOF\n"), "{metrics}");

        assert_eq!(
            status(&get(addr, &req("/healthzz")).await),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&get(addr, "POST /healthz HTTP/1.1\r\n\r\n").await),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(&get(addr, "\r\n").await),
            "HTTP/1.1 404 Not Found",
            "garbage is not a crash"
        );
    }
}
