use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

async fn get(addr: SocketAddr, request: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer).await;
    answer
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
}

async fn server(
    render: impl Fn() -> String + Send + Sync + 'static,
    health: Health,
    limits: Limits,
) -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, render, health, limits));
    addr
}

#[tokio::test]
async fn probes_and_metrics_over_loopback() {
    let health = Health::starting();
    let addr = server(
        || "porter_up 1\n# EOF\n".to_string(),
        health.clone(),
        Limits::default(),
    )
    .await;

    assert_eq!(
        status(&get(addr, &req("/healthz")).await),
        "HTTP/1.1 200 OK"
    );
    let not_yet = get(addr, &req("/readyz")).await;
    assert_eq!(status(&not_yet), "HTTP/1.1 503 Service Unavailable");
    assert!(
        not_yet.ends_with("\r\n\r\nnot ready: starting\n"),
        "{not_yet}"
    );
    health.set_ready(true);
    let ready = get(addr, &req("/readyz?verbose")).await;
    assert_eq!(status(&ready), "HTTP/1.1 200 OK");
    assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
    health.set_problem(
        "watch Service",
        Some("cannot watch Services: forbidden".into()),
    );
    let refused = get(addr, &req("/readyz")).await;
    assert_eq!(status(&refused), "HTTP/1.1 503 Service Unavailable");
    assert!(
        refused.ends_with("not ready: cannot watch Services: forbidden\n"),
        "the reason is in the probe's answer: {refused}"
    );

    let metrics = get(addr, &req("/metrics")).await;
    assert_eq!(status(&metrics), "HTTP/1.1 200 OK");
    assert!(metrics.contains("content-length: 18\r\n"), "{metrics}");
    assert!(
        metrics.contains("application/openmetrics-text"),
        "{metrics}"
    );
    assert!(metrics.ends_with("porter_up 1\n# EOF\n"), "{metrics}");

    assert_eq!(
        status(&get(addr, &req("/healthzz")).await),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(
            &get(
                addr,
                "POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
            )
            .await
        ),
        "HTTP/1.1 405 Method Not Allowed"
    );
    let garbage = get(addr, "\u{1}\u{2} nonsense\r\n\r\n").await;
    assert!(
        garbage.is_empty() || status(&garbage).starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    assert_eq!(
        status(&get(addr, &req("/healthz")).await),
        "HTTP/1.1 200 OK",
        "garbage is not a crash"
    );
}

/// Clients that connect and then send their request head byte by byte, or
/// not at all, are disconnected after the header timeout; while they hold
/// every connection slot, a scrape waits for them instead of forever.
#[tokio::test]
async fn slowloris_clients_are_cut_off_and_do_not_block_a_scrape() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        connection_timeout: Duration::from_secs(2),
        max_connections: 2,
        ..Limits::default()
    };
    let addr = server(|| "porter_up 1\n".to_string(), Health::starting(), limits).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /met").await.expect("send");
        slow.push(conn);
    }
    let silent = TcpStream::connect(addr).await.expect("connect");
    slow.push(silent);

    let started = Instant::now();
    let scrape = tokio::time::timeout(Duration::from_secs(30), get(addr, &req("/metrics")))
        .await
        .expect("the scrape is answered once the slow clients are cut off");
    println!(
        "scrape answered after {:?} behind 5 slow clients",
        started.elapsed()
    );
    assert_eq!(status(&scrape), "HTTP/1.1 200 OK", "{scrape}");

    for mut conn in slow {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut rest))
            .await
            .expect("the server closes a slow client's connection")
            .ok();
        let text = String::from_utf8_lossy(&rest);
        assert!(
            !text.contains("porter_up"),
            "a request never completed is not answered: {text}"
        );
    }
}

/// The agent's render walks BPF maps: scraping in a loop must not walk them
/// in a loop.
#[tokio::test]
async fn renders_at_most_once_per_interval() {
    let renders = Arc::new(AtomicUsize::new(0));
    let counted = renders.clone();
    let limits = Limits {
        min_render_interval: Duration::from_millis(500),
        ..Limits::default()
    };
    let addr = server(
        move || format!("renders {}\n", counted.fetch_add(1, Ordering::SeqCst) + 1),
        Health::starting(),
        limits,
    )
    .await;
    for _ in 0..5 {
        assert!(get(addr, &req("/metrics")).await.ends_with("renders 1\n"));
    }
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(get(addr, &req("/metrics")).await.ends_with("renders 2\n"));
}

/// `[::]` serves IPv4 and IPv6 clients alike (probes on IPv6-only and on
/// IPv4 clusters); skipped where the host has no IPv6 loopback.
#[tokio::test]
async fn the_ipv6_wildcard_takes_both_families() {
    let Ok(listener) = bind("[::]:0".parse().expect("addr")) else {
        println!("skipped: cannot bind [::]");
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(
        listener,
        String::new,
        Health::starting(),
        Limits::default(),
    ));
    for ip in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        if ip == "::1" && TcpStream::connect(addr).await.is_err() {
            println!("skipped ::1: no IPv6 loopback");
            continue;
        }
        assert_eq!(
            status(&get(addr, &req("/healthz")).await),
            "HTTP/1.1 200 OK",
            "{ip}"
        );
    }
}
