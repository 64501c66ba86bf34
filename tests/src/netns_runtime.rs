//! A tokio runtime whose thread lives in a lab namespace, so that a library
//! (the BGP speaker) can run in-process yet open its sockets inside the lab.
//! Network namespaces are per thread: every socket the runtime's tasks create
//! belongs to the namespace the thread entered.
use std::thread;

use anyhow::{Context, Result, bail};
use tokio::{runtime::Handle, sync::oneshot};

pub struct NetnsRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NetnsRuntime {
    /// Starts a current-thread runtime on a thread inside namespace `ns`.
    pub fn new(ns: &str) -> Result<Self> {
        let namespace = ns.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn(move || {
                if let Err(error) = crate::netns::enter(&namespace) {
                    let _ = ready_tx.send(Err(format!("{error:#}")));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = match ready_rx.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => bail!("entering namespace {ns}: {error}"),
            Err(_) => bail!("the runtime thread for {ns} died"),
        };
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `future` on the namespace's thread and waits for its result.
    pub fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let task = self.handle.spawn(future);
        // The task runs on the namespace thread; this thread only waits for
        // its JoinHandle, which needs no I/O driver.
        self.handle
            .block_on(task)
            .context("task in the namespace runtime failed")
    }
}

impl Drop for NetnsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
