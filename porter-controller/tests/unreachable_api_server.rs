//! `--source kube` with the API server out of reach: the controller says
//! why and keeps trying, unready, instead of exiting into a crash loop.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

fn http_status(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.lines().next().map(str::to_owned)
}

#[test]
fn an_unreachable_api_server_is_retried_not_fatal() {
    let dir = std::env::temp_dir().join(format!("porter-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{}\", insecure-skip-tls-verify: true}}\n\
             contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\nusers:\n- name: u\n  user: {{token: t}}\n",
            closed_port()
        ),
    )
    .expect("write kubeconfig");
    let log = dir.join("controller.log");
    let metrics = closed_port();
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut controller = Command::new(env!("CARGO_BIN_EXE_porter-controller"))
        .args(["--source", "kube", "--retry-interval", "100ms"])
        .args(["--lease-duration", "2"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start porter-controller");
    let message = "cannot reach the leader election lease";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut retries = 0;
    while Instant::now() < deadline && retries < 3 {
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        retries = text.matches(message).count();
    }
    let running = controller
        .try_wait()
        .expect("poll the controller")
        .is_none();
    let ready = http_status(metrics, "/readyz");
    let _ = controller.kill();
    let _ = controller.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(retries >= 3, "the failure was retried and said:\n{text}");
    assert!(running, "the controller kept running:\n{text}");
    assert_eq!(
        ready.as_deref(),
        Some("HTTP/1.1 503 Service Unavailable"),
        "not ready without the API server"
    );
}
