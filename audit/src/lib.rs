//! The audit trail of one node.
//!
//! Every request a node handles becomes one [`Record`], handed to [`Audit::record`]: a
//! non-blocking push onto a bounded queue (a few hundred nanoseconds on the request path). A
//! writer thread of its own takes what is queued, waits up to the group-commit window for more,
//! and writes the batch in one synced RocksDB write: chained (each record's hash covers the one
//! before it), indexed by execution, trace and server, and counted in per-minute rollups. When the
//! queue is full the record is dropped and counted, and the next batch begins with a
//! [`Kind::Dropped`] record saying how many: a gap is never silent.
//!
//! The database is the node's own (`<data_dir>/audit`), not a column family of the Raft store:
//! audit writes are many and small with their own sync cadence and retention, a damaged or
//! tampered audit database must never stop the replica from opening, and a node's consensus
//! state can be backed up or restored without it (docs/design/0006-audit.md).

mod keys;
pub mod query;
mod record;
mod store;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use query::{quantile, Counts, GateCounts, Group, GroupBy, Page, Problem, Query, SummaryQuery, VerifyReport};
pub use record::{Kind, Outcome, Record, Verdict};
pub use store::{hex, tamper, AuditError, Head, Retention, Store};

/// How a node's audit trail is kept.
#[derive(Clone, Debug)]
pub struct Options {
    /// The database's directory.
    pub dir: PathBuf,
    /// Records waiting to be written at most; beyond, records are dropped and counted.
    pub queue: usize,
    /// How long the writer waits for more records before a write (the most a crash can lose,
    /// with what is queued).
    pub window: Duration,
    /// Most records in one write.
    pub max_batch: usize,
    /// What is kept.
    pub retention: Retention,
    /// Also append every record, as one JSON line, to this file (for a SIEM to tail).
    pub jsonl: Option<PathBuf>,
    /// Also hand every committed batch to this (an exporter: it must not block).
    pub tap: Option<Tap>,
}

/// What a tap runs with each committed batch.
pub type TapFn = dyn Fn(&[Record]) + Send + Sync;

/// Receives every committed batch, on the writer thread (it must hand them on, not work).
#[derive(Clone)]
pub struct Tap(pub Arc<TapFn>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

impl Options {
    /// Defaults for a database in `dir`.
    pub fn new(dir: PathBuf) -> Options {
        Options {
            dir,
            queue: 65_536,
            window: Duration::from_millis(5),
            max_batch: 16_384,
            retention: Retention::default(),
            jsonl: None,
            tap: None,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A node's audit trail: the queue in front of the writer, and the database for queries.
pub struct Audit {
    tx: SyncSender<Record>,
    store: Arc<Store>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the request path and the writer share.
struct Shared {
    /// Dropped since the last `Dropped` record.
    dropped: AtomicU64,
    /// Dropped since start.
    dropped_total: AtomicU64,
    /// Written since start.
    written: AtomicU64,
    /// Close asked for.
    stop: AtomicBool,
}

/// Counters of a node's writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records written since start.
    pub written: u64,
    /// Records dropped since start (queue full or write failed).
    pub dropped: u64,
    /// The chain's head.
    pub head: u64,
}

impl Audit {
    /// Opens the database and starts the writer.
    pub fn open(opts: Options) -> Result<Arc<Audit>, AuditError> {
        let store = Arc::new(Store::open(&opts.dir)?);
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            written: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let w = Writer { store: store.clone(), shared: shared.clone(), rx, opts: opts.clone() };
        let writer =
            std::thread::Builder::new().name("joch-audit".into()).spawn(move || w.run()).map_err(AuditError::Writer)?;
        Ok(Arc::new(Audit { tx, store, shared, writer: Mutex::new(Some(writer)) }))
    }

    /// Queues a record; never blocks. A full queue drops it and counts the drop.
    pub fn record(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("joch_audit_dropped_total").increment(1);
            }
        }
    }

    /// The database, for queries (blocking reads: call from a blocking thread).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The writer's counters.
    pub fn stats(&self) -> Stats {
        Stats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped_total.load(Ordering::Relaxed),
            head: self.store.head().seq,
        }
    }

    /// Writes what is queued and stops the writer (node shutdown).
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The writer thread.
struct Writer {
    store: Arc<Store>,
    shared: Arc<Shared>,
    rx: Receiver<Record>,
    opts: Options,
}

impl Writer {
    fn run(self) {
        let mut jsonl = self.opts.jsonl.as_ref().and_then(|p| {
            match std::fs::OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot open the audit JSON lines file; not writing it");
                    None
                }
            }
        });
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        loop {
            let stopping = self.shared.stop.load(Ordering::Relaxed);
            let mut batch = Vec::new();
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) if !stopping => {}
                Err(_) => {
                    // Stopping (or every sender gone): write what is left and end.
                    batch.extend(self.rx.try_iter());
                    self.write(&mut batch, &mut jsonl);
                    return;
                }
            }
            if !batch.is_empty() {
                // Gather for the window by sleeping, then take what came: waiting in `recv`
                // would have every push wake this thread (a syscall and a context switch on the
                // pushing request's core, per record); this way one push per batch does.
                std::thread::sleep(self.opts.window);
                batch.extend(self.rx.try_iter().take(self.opts.max_batch.saturating_sub(1)));
            }
            self.write(&mut batch, &mut jsonl);
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = Instant::now();
                match self.store.prune(self.opts.retention, now_us()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "audit retention removed the oldest records"),
                    Err(e) => tracing::error!(error = %e, "audit retention"),
                }
            }
            metrics::gauge!("joch_audit_head").set(self.store.head().seq as f64);
        }
    }

    /// Writes a batch, preceded by a record of what was dropped since the last one.
    fn write(&self, batch: &mut Vec<Record>, jsonl: &mut Option<std::io::BufWriter<std::fs::File>>) {
        let dropped = self.shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let node = batch.first().map(|r| r.node).unwrap_or(0);
            batch.insert(
                0,
                Record {
                    time_us: now_us(),
                    node,
                    kind: Kind::Dropped,
                    reason: format!(
                        "{dropped} records dropped: the audit writer fell behind (queue full or a write failed)"
                    ),
                    ..Record::default()
                },
            );
        }
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.store.append(batch, true) {
            Ok(()) => {
                self.shared.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!("joch_audit_records_total").increment(batch.len() as u64);
                metrics::histogram!("joch_audit_commit_seconds").record(started.elapsed().as_secs_f64());
                if let Some(t) = &self.opts.tap {
                    (t.0)(batch);
                }
                if let Some(w) = jsonl {
                    for r in batch.iter() {
                        if let Ok(line) = serde_json::to_string(r) {
                            let _ = writeln!(w, "{line}");
                        }
                    }
                    let _ = w.flush();
                }
            }
            Err(e) => {
                let n = batch.len() as u64 - u64::from(dropped > 0);
                tracing::error!(error = %e, records = n, "cannot write audit records; counted as dropped");
                self.shared.dropped.fetch_add(n + dropped, Ordering::Relaxed);
                self.shared.dropped_total.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("joch_audit_dropped_total").increment(n);
            }
        }
        batch.clear();
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}
