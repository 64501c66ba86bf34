//! Running code of this process inside a lab namespace: a network namespace
//! belongs to a thread, so a thread can enter one and open sockets, attach
//! programs or serve there, while the rest of the test stays where it was.
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Moves the calling thread into network namespace `ns` (made by `ip netns add`).
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns only reads the fd; it affects this thread's namespace alone.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `work` on a new thread inside `ns` and waits for its result.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns)?;
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a netns panicked"))?
}

/// A TCP server in a namespace that greets each connection with its name,
/// then echoes lines prefixed with the name, so a client always knows who
/// answers. Stops when dropped.
pub struct NamedServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NamedServer {
    pub fn start(ns: &str, port: u16, name: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, name, flag) = (ns.to_owned(), name.to_owned(), stop.clone());
        let thread = thread::spawn(move || {
            let listener = enter(&ns).and_then(|()| {
                // Dual-stack: IPv4 clients arrive as mapped addresses.
                let listener = TcpListener::bind(("::", port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            });
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    listener
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                // Wait for a connection without spinning, waking now and
                // then to notice the stop flag.
                let mut ready = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut ready, 1, 50) } <= 0 {
                    continue;
                }
                if let Ok((stream, _)) = listener.accept() {
                    let name = name.clone();
                    thread::spawn(move || serve(stream, &name));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("server did not start")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if writeln!(writer, "{name}").is_err() {
        return;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writeln!(writer, "{name}:{line}").is_err() {
            return;
        }
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the lab's clients wait for a connection: past the kernel's
/// first SYN retransmission (at [`SYN_RETRANSMIT`]) and its answer. A single
/// packet lost anywhere on the lab's path is TCP's to recover, as it is for
/// any client; a shorter wait would fail the request instead. Whether
/// Porter dropped anything is checked on its own counters (see
/// `Datacenter::spread`), and the restart cases count retransmitted
/// connects ([`crate::datacenter::LoadReport`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);

/// The kernel's initial retransmission timeout (`TCP_TIMEOUT_INIT`): a
/// connect that took this long needed its SYN (or the answer) sent again.
pub const SYN_RETRANSMIT: Duration = Duration::from_secs(1);

/// A client connection to a [`NamedServer`] (through whatever sits between).
pub struct NamedClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The server's name, from its greeting.
    pub server: String,
}

impl NamedClient {
    /// Connects from the calling thread's namespace.
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut server = String::new();
        reader.read_line(&mut server).context("reading greeting")?;
        let server = server.trim().to_owned();
        if server.is_empty() {
            bail!("{addr} closed without a greeting");
        }
        Ok(Self {
            reader,
            writer,
            server,
        })
    }

    /// How long an echo waits for its reply (2 s from `connect`).
    pub fn set_reply_timeout(&self, timeout: Duration) -> Result<()> {
        Ok(self.writer.set_read_timeout(Some(timeout))?)
    }

    /// Sends `line` and returns the echo (`<server>:<line>`).
    pub fn echo(&mut self, line: &str) -> Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(reply.trim().to_owned())
    }

    pub fn peer(&self) -> Result<SocketAddr> {
        Ok(self.writer.peer_addr()?)
    }
}
