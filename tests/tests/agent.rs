//! `porter-agent run` with a `dir:` source, in a lab of a client, a node and
//! two pods: the agent programs the maps from the manifests, traffic to
//! `EIP:port` reaches the pods, an EndpointSlice edit changes forwarding, a
//! restart under load loses no UDP datagram and breaks no TCP connection,
//! and `cleanup` leaves nothing behind.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use porter_agent::{PinLayout, ServiceAddr, inspect, pins};
use porter_common::{ServiceKey, ServiceValue, map_names};
use porter_tests::{
    bins,
    lab::wait_for,
    netns::{enter, run_in},
    scenarios::{PodLab, spawn_agent},
};

const AGENT: &str = "agent";
const UDP_PORT: u16 = 9000;
const METRICS: &str = "127.0.0.1:9191";

fn manifests(pods: &[&str]) -> String {
    let endpoints: Vec<String> = pods
        .iter()
        .map(|ip| format!("  - {{addresses: [{ip}], nodeName: n1, conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "apiVersion: v1
kind: Node
metadata: {{name: n1}}
status:
  addresses: [{{type: InternalIP, address: 172.31.0.1}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {{lb.kubesphere.io/v1alpha1: porter}}
spec:
  type: LoadBalancer
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: echo, port: {UDP_PORT}, protocol: UDP, targetPort: {UDP_PORT}}}
status:
  loadBalancer:
    ingress: [{{ip: {eip}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: {target}, protocol: TCP}}
- {{name: echo, port: {UDP_PORT}, protocol: UDP}}
endpoints:
{}
",
        endpoints.join("\n"),
        eip = PodLab::EIP,
        target = PodLab::TARGET_PORT,
    )
}

struct AgentLab {
    pods: PodLab,
    manifests: PathBuf,
    _udp_echo: Vec<UdpEcho>,
}

impl AgentLab {
    fn new() -> Result<Self> {
        let pods = PodLab::new("agent")?;
        let manifests = pods.lab.run_dir().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("web.yaml"),
            self::manifests(&PodLab::POD_IPS),
        )?;
        let udp_echo = pods
            .pods
            .iter()
            .map(|pod| UdpEcho::start(pod, UDP_PORT))
            .collect::<Result<_>>()?;
        Ok(Self {
            pods,
            manifests,
            _udp_echo: udp_echo,
        })
    }

    fn pins(&self) -> PinLayout {
        PinLayout::new(&self.pods.bpffs)
    }

    fn agent(&self, args: &[&str]) -> Result<Command> {
        let mut command = self
            .pods
            .lab
            .command(&self.pods.node, bins::binary("porter-agent")?);
        command.args(args).arg("--bpffs").arg(&self.pods.bpffs);
        Ok(command)
    }

    /// No `--interface`: the agent finds eth0 through the Node's InternalIP.
    fn start_agent(&mut self) -> Result<String> {
        let source = format!("dir:{}", self.manifests.display());
        let command = self.agent(&[
            "run",
            "--node-name",
            "n1",
            "--source",
            &source,
            "--poll-interval",
            "100ms",
            "--metrics-addr",
            METRICS,
            "--maglev-size",
            "251",
            "--max-services",
            "8",
        ])?;
        let log = spawn_agent(&mut self.pods.lab, AGENT, command)?;
        Ok(std::fs::read_to_string(log)?)
    }

    fn stop_agent(&mut self) -> Result<()> {
        self.pods.lab.stop(AGENT, Duration::from_secs(5))
    }

    /// Backends of `EIP:port/proto` as the pinned maps hold them.
    fn backends(&self, service: &str) -> Result<Vec<String>> {
        let state = inspect::read(&self.pins())?;
        Ok(state
            .services
            .iter()
            .find(|s| s.addr.to_string() == service)
            .map(|s| s.backends.iter().map(ToString::to_string).collect())
            .unwrap_or_default())
    }

    /// How many backends the live table of `EIP:port/proto` spreads over:
    /// one map lookup, cheap enough to poll for a deadline.
    fn backend_count(&self, service: &str) -> Result<Option<u32>> {
        let data = MapData::from_pin(self.pins().map(map_names::SERVICES))?;
        let services: HashMap<MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(Map::HashMap(data))?;
        for entry in services.iter() {
            let (key, value) = entry?;
            if ServiceAddr::from_key(&key).is_some_and(|addr| addr.to_string() == service) {
                return Ok(Some(value.backend_count));
            }
        }
        Ok(None)
    }

    fn metrics(&self) -> Result<String> {
        self.get("/metrics")
    }

    /// One HTTP GET to the agent's metrics port: the whole answer.
    fn get(&self, path: &str) -> Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        run_in(&self.pods.node, move || {
            let mut conn = TcpStream::connect(METRICS)?;
            conn.write_all(request.as_bytes())?;
            let mut text = String::new();
            conn.read_to_string(&mut text)?;
            Ok(text)
        })
    }
}

#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn agent_programs_follows_edits_restarts_hitlessly_and_cleans_up() -> Result<()> {
    let mut lab = AgentLab::new()?;
    let log = lab.start_agent()?;
    assert!(
        log.contains("interface=\"eth0\"") || log.contains("interface=eth0"),
        "the agent found eth0 through the node's InternalIP:\n{log}"
    );
    let ready = lab.get("/readyz")?;
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "the attached agent reports ready: {ready}"
    );
    let http = format!("{}:80/tcp", PodLab::EIP);
    let echo = format!("{}:{UDP_PORT}/udp", PodLab::EIP);
    let both: Vec<String> = PodLab::POD_IPS
        .iter()
        .map(|ip| format!("{ip}:{}", PodLab::TARGET_PORT))
        .collect();
    wait_for(
        "the agent to program both pods",
        Duration::from_secs(5),
        || Ok((lab.backends(&http)? == both).then_some(())),
    )?;
    assert_eq!(
        lab.backends(&echo)?,
        PodLab::POD_IPS
            .iter()
            .map(|ip| format!("{ip}:{UDP_PORT}"))
            .collect::<Vec<_>>(),
        "the UDP port is programmed with its own target port"
    );

    // Traffic to EIP:port reaches both pods (named targetPort resolved).
    let answers = lab.pods.spread(PodLab::EIP, 80, 40)?;
    assert_eq!(answers.values().sum::<usize>(), 40, "{answers:?}");
    assert!(answers.len() == 2, "both pods answer: {answers:?}");

    // An EndpointSlice edit: pod1 goes; the maps follow within 1 s.
    let pod2_only = vec![both[1].clone()];
    let edited = Instant::now();
    std::fs::write(
        lab.manifests.join("web.yaml"),
        manifests(&[PodLab::POD_IPS[1]]),
    )?;
    wait_for(
        "the EndpointSlice edit to reach the data plane",
        Duration::from_secs(1),
        || Ok((lab.backend_count(&http)? == Some(1)).then_some(())),
    )
    .with_context(|| format!("edit made {:?} ago", edited.elapsed()))?;
    // The flip comes first and the freed backend slot right after it, so
    // the backend list is read once the agent has also done that.
    wait_for(
        "the removed backend's slot to be freed",
        Duration::from_secs(1),
        || Ok((lab.backends(&http)? == pod2_only).then_some(())),
    )?;
    let answers = lab.pods.spread(PodLab::EIP, 80, 20)?;
    assert_eq!(answers.get("pod2"), Some(&20), "{answers:?}");
    std::fs::write(lab.manifests.join("web.yaml"), manifests(&PodLab::POD_IPS))?;
    wait_for("pod1 to come back", Duration::from_secs(5), || {
        Ok((lab.backends(&http)? == both).then_some(()))
    })?;

    // `inspect` reads the pinned state while the agent runs.
    let output = lab.agent(&["inspect"])?.output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "inspect: {output:?}");
    for expected in [http.as_str(), "PORTER_CT", "251", both[0].as_str()] {
        assert!(table.contains(expected), "{expected} in:\n{table}");
    }

    // A restart under load: continuous UDP and held TCP connections.
    let mut held = (0..4)
        .map(|_| lab.pods.connect(PodLab::EIP, 80))
        .collect::<Result<Vec<_>>>()?;
    for (i, client) in held.iter_mut().enumerate() {
        let line = format!("before-{i}");
        assert_eq!(client.echo(&line)?, format!("{}:{line}", client.server));
    }
    let stream = UdpStream::start(&lab.pods.client, PodLab::EIP, UDP_PORT)?;
    thread::sleep(Duration::from_millis(300));
    lab.stop_agent()?;
    thread::sleep(Duration::from_millis(300));
    let log = lab.start_agent()?;
    assert!(
        log.contains("replaced the program on the pinned XDP link"),
        "the new agent swapped its program onto the pinned link:\n{log}"
    );
    thread::sleep(Duration::from_millis(300));
    let (sent, received) = stream.finish()?;
    assert!(sent > 100, "the client kept sending ({sent} datagrams)");
    let lost: Vec<u64> = (0..sent).filter(|seq| !received.contains(seq)).collect();
    assert!(
        lost.is_empty(),
        "{} of {sent} datagrams lost across the restart, first {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    for (i, client) in held.iter_mut().enumerate() {
        let line = format!("after-{i}");
        assert_eq!(
            client.echo(&line)?,
            format!("{}:{line}", client.server),
            "connection {i} survived the restart"
        );
    }
    assert_eq!(lab.backends(&http)?, both, "nothing stale, nothing lost");

    // An upgrade across a pin layout change: the pins are those of an agent
    // of the previous layout version. The new agent takes its links over,
    // swapping its program in, so again no datagram is lost, and it removes
    // the old pins.
    lab.stop_agent()?;
    let older = lab
        .pins()
        .root()
        .join(format!("v{}", pins::PIN_LAYOUT_VERSION - 1));
    std::fs::rename(lab.pins().versioned(), &older)?;
    let stream = UdpStream::start(&lab.pods.client, PodLab::EIP, UDP_PORT)?;
    thread::sleep(Duration::from_millis(300));
    let log = lab.start_agent()?;
    for expected in [
        "took over the pinned link of an older agent",
        "replaced the program on the pinned XDP link",
        "replaced the program on the pinned tc link",
    ] {
        assert!(log.contains(expected), "{expected} in:\n{log}");
    }
    thread::sleep(Duration::from_millis(300));
    let (sent, received) = stream.finish()?;
    let lost = (0..sent).filter(|seq| !received.contains(seq)).count();
    assert!(
        sent > 100 && lost == 0,
        "{lost} of {sent} datagrams lost across the upgrade"
    );
    for (i, client) in held.iter_mut().enumerate() {
        let line = format!("upgraded-{i}");
        assert_eq!(
            client.echo(&line)?,
            format!("{}:{line}", client.server),
            "connection {i} survived the upgrade (same Maglev choice)"
        );
    }
    assert!(!older.exists(), "the old layout's pins are gone");

    // Metrics: per-service counters, map occupancy, the XDP mode in use
    // (read from the kernel, since this agent took over the link).
    let metrics = lab.metrics()?;
    for expected in [
        "porter_agent_xdp_attached{interface=\"eth0\",mode=\"driver\"} 1",
        &format!("porter_agent_service_packets_total{{service=\"{http}\"}}"),
        "porter_agent_map_entries{map=\"PORTER_CT\"}",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    for stage in ["open", "interface", "attach", "program"] {
        let zero = format!("porter_agent_sync_errors_total{{stage=\"{stage}\"}} 0\n");
        assert!(metrics.contains(&zero), "no {stage} error:\n{metrics}");
    }
    assert!(
        !metrics.contains(&format!(
            "porter_agent_service_packets_total{{service=\"{http}\"}} 0\n"
        )),
        "packets were counted:\n{metrics}"
    );

    // Cleanup leaves no XDP program, tc filter or pin behind.
    lab.stop_agent()?;
    drop(held);
    let output = lab.agent(&["cleanup"])?.output()?;
    assert!(output.status.success(), "cleanup: {output:?}");
    let node = &lab.pods.node;
    // The kernel releases an unpinned link from a work queue, so the
    // detach follows the unpin shortly after, not at once.
    wait_for("XDP and tc to be detached", Duration::from_secs(5), || {
        let link = lab.pods.lab.ip(node, &["link", "show", "eth0"])?;
        let net = lab
            .pods
            .lab
            .exec(node, &["bpftool", "net", "show", "dev", "eth0"])?;
        Ok((!link.contains("xdp") && !net.contains("porter")).then_some(()))
    })
    .with_context(|| {
        format!(
            "{:?}",
            lab.pods
                .lab
                .exec(node, &["bpftool", "net", "show", "dev", "eth0"])
        )
    })?;
    let filters = lab
        .pods
        .lab
        .exec(node, &["tc", "filter", "show", "dev", "eth0", "egress"])?;
    assert!(filters.trim().is_empty(), "no tc filter left: {filters}");
    assert!(
        !lab.pins().root().exists(),
        "no pin left under {}",
        lab.pins().root().display()
    );
    Ok(())
}

/// Echoes UDP datagrams back to their sender, in a pod; stops when dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, port: u16) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_owned(), stop.clone());
        let thread = thread::spawn(move || {
            let socket = enter(&ns).and_then(|()| {
                let socket = UdpSocket::bind(("0.0.0.0", port))?;
                deep_receive_buffer(&socket)?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(socket)
            });
            let socket = match socket {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        ready_rx.recv().context("UDP echo thread died")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Gives `socket` room for seconds of datagrams, so that a thread of the
/// test that is not scheduled for a while (an agent starting on a loaded
/// two-core machine) does not lose them in its own socket: the loss
/// counted is the path's, not the harness's. (Root may exceed rmem_max.)
fn deep_receive_buffer(socket: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVBUFFORCE");
    }
    Ok(())
}

/// Sends numbered datagrams to `vip:port` every millisecond from one
/// socket (one flow) and collects the echoes.
struct UdpStream {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(u64, BTreeSet<u64>)>>,
}

impl UdpStream {
    fn start(ns: &str, vip: &str, port: u16) -> Result<Self> {
        let target = SocketAddr::new(vip.parse()?, port);
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_owned(), stop.clone());
        let thread = thread::spawn(move || {
            enter(&ns)?;
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            deep_receive_buffer(&socket)?;
            // Only datagrams from vip:port are taken: replies must come back
            // reverse-NATed.
            socket.connect(target)?;
            socket.set_nonblocking(true)?;
            let mut received = BTreeSet::new();
            let mut sent = 0u64;
            let mut buf = [0u8; 64];
            let mut drain = |received: &mut BTreeSet<u64>| {
                while let Ok(n) = socket.recv(&mut buf) {
                    if let Some(seq) = buf.get(..n).and_then(|b| b.try_into().ok()) {
                        received.insert(u64::from_be_bytes(seq));
                    }
                }
            };
            while !flag.load(Ordering::Relaxed) {
                socket.send(&sent.to_be_bytes())?;
                sent += 1;
                drain(&mut received);
                thread::sleep(Duration::from_millis(1));
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while (received.len() as u64) < sent && Instant::now() < deadline {
                drain(&mut received);
                thread::sleep(Duration::from_millis(5));
            }
            Ok((sent, received))
        });
        Ok(Self { stop, thread })
    }

    fn finish(self) -> Result<(u64, BTreeSet<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("UDP client thread panicked"))?
    }
}

/// A missing interface is a clear, retried error, not a crash.
#[test]
#[cfg_attr(not(privileged), ignore = "needs root: network namespaces and BPF")]
fn missing_interface_is_reported_and_retried() -> Result<()> {
    let mut lab = porter_tests::scenarios::SingleNodeLab::new("missif")?;
    let manifests = lab.lab.run_dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let source = format!("dir:{}", manifests.display());
    let command = lab.agent_command(&[
        "run",
        "--node-name",
        "n1",
        "--interface",
        "nosuch0",
        "--source",
        &source,
    ])?;
    let log = lab.lab.spawn(AGENT, command)?;
    let message = "interface nosuch0 does not exist in this network namespace; check --interface";
    let text = wait_for(
        "the agent to report the missing interface twice (a retry)",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log)?;
            Ok((text.matches(message).count() >= 2).then_some(text))
        },
    )?;
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "no crash:\n{text}"
    );
    assert!(
        text.contains("retrying with backoff"),
        "the log says it retries:\n{text}"
    );
    lab.stop_agent()?;
    let output = lab.agent_command(&["cleanup"])?.output()?;
    assert!(output.status.success(), "cleanup: {output:?}");
    Ok(())
}
