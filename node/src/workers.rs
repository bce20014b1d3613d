//! The MCP listener's workers: one thread per core, each a current-thread runtime that serves the
//! connections handed to it, from the first request to the close. A request, its admission, its
//! upstream call and its answer run on the one thread that read it, and the upstream client keeps
//! a pool of connections per worker (`proxy/upstream/http.rs`), so a proxied call wakes no other
//! thread on its way (an event-loop proxy's shape: nginx's workers). With one multi-thread
//! runtime, the pooled upstream connection's task and the request's task were often on different
//! threads: two cross-thread wake-ups per call, and work stealing that moved tasks away from the
//! data in their caches.
//!
//! The price: a request that computes for long (a guard scan of a large answer) delays the other
//! connections of its worker, and connections are not moved between workers once handed out
//! (round-robin at accept). Everything else of the data plane (discovery, stdio children,
//! requests relayed by peers) stays on the data plane's multi-thread runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// This thread's worker index (`None` on every other thread).
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker whose thread this is, if it is one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// The workers of a node.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// One worker per core (`std::thread::available_parallelism`).
    pub fn per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `n` workers (at least one), each on a thread of its own named `joch-mcp-<i>`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut workers = Workers {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            threads: parking_lot::Mutex::new(Vec::new()),
        };
        for i in 0..n.max(1) {
            // On an error, the workers started so far are stopped (on drop).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            workers.handles.push(rt.handle().clone());
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new().name(format!("joch-mcp-{i}")).spawn(move || {
                WORKER.with(|w| w.set(Some(i)));
                rt.block_on(stop.cancelled());
                // Connections still open after the node's drain are closed here.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
            workers.threads.get_mut().push(thread);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The worker the next connection goes to (round-robin).
    pub fn next(&self) -> &Handle {
        &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()]
    }

    /// Stops every worker (what they still run is dropped) and waits for their threads.
    pub fn stop(&self) {
        self.stop.cancel();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_to_threads_that_know_their_index() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        assert_eq!(current(), None, "the test's own thread is no worker");
        let seen: Vec<Option<usize>> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.next().spawn(async move { tx.send(current()).unwrap() });
                rx.recv_timeout(Duration::from_secs(10)).unwrap()
            })
            .collect();
        assert_eq!(seen, vec![Some(0), Some(1), Some(0), Some(1)]);
        workers.stop();
        // Stopped: what is handed to a worker now is not run.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.next().spawn(async move { tx.send(()).unwrap() });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
