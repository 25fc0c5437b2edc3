//! A private tokio runtime on its own thread, so the in-process servers run independently of the
//! test's runtime (or lack of one).

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub(crate) struct BgRuntime {
    handle: Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BgRuntime {
    pub(crate) fn new(name: &str) -> Self {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a tokio runtime for a test server");
                handle_tx.send(runtime.handle().clone()).ok();
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
                // Drops every task (listeners, connections) without waiting for them.
                runtime.shutdown_background();
            })
            .expect("spawn a test server thread");
        let handle = handle_rx
            .recv()
            .expect("test server runtime thread died on start");
        Self {
            handle,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for BgRuntime {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
