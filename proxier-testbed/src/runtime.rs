//! A tokio runtime on a thread inside a namespace.

use std::future::Future;
use std::io;

use crate::netns::{Netns, enter_path};

/// A current-thread tokio runtime on a thread that entered a namespace:
/// every socket, netlink socket and child process its tasks create belongs
/// to that namespace.
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread and its runtime inside `ns`.
    pub fn start(ns: &Netns) -> io::Result<NsRuntime> {
        let path = format!("/run/netns/{}", ns.name());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{}", ns.name()))
            .spawn(move || {
                let rt = enter_path(&path).and_then(|_| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                });
                match rt {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        rt.shutdown_timeout(std::time::Duration::from_millis(200));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("namespace thread died"))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The runtime's handle: tasks spawned on it run inside the namespace.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs a future inside the namespace and waits for it (from a thread
    /// that is not a tokio worker).
    pub fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .expect("namespace runtime stopped while running a task")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
