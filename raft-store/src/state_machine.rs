//! The state machine on RocksDB, and the registry snapshot it publishes.
//!
//! Each `apply` batch changes the in-memory [`Registry`], writes what it touched together with
//! `last_applied` in one batch, then publishes a new immutable [`PublishedState`]. Readers on the
//! request path load the current `Arc` (no lock, no disk); publishing costs O(log n) in the
//! registry's size (persistent maps share what did not change).
//!
//! The batch is not synced: the log it was applied from is (same RocksDB, one write-ahead log), so
//! after a crash the state on disk is a consistent earlier one (a batch is atomic) and Raft applies
//! the entries after its `last_applied` again. Every synced write (a log append, a snapshot) makes
//! all earlier ones durable, so a snapshot never gets ahead of the state it was built from. That
//! keeps one disk flush per node off the path of every fleet-acknowledged write.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::{io_err, StoreError};
use crate::keys::{self, CF_HISTORY, CF_SNAPSHOT, CF_STATE};
use crate::model::registry::{ChangeRecord, PolicyRecord, Registry, ServerRecord, Touched};
use crate::{NodeAddr, NodeId, Response, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What readers see: the registry as of `applied_index`. Immutable.
#[derive(Debug, Default)]
pub struct PublishedState {
    /// The registry.
    pub registry: Registry,
    /// Index of the last log entry applied to it (0 before any).
    pub applied_index: u64,
}

/// Read access to the published registry. Cheap to clone; `load` is lock-free.
#[derive(Clone)]
pub struct RegistryHandle {
    current: Arc<ArcSwap<PublishedState>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for RegistryHandle {
    fn default() -> Self {
        RegistryHandle { current: Arc::default(), changed: tokio::sync::watch::Sender::new(0) }
    }
}

impl RegistryHandle {
    /// A handle holding one state, which nothing changes (unit tests of what reads it).
    pub fn fixed(state: PublishedState) -> RegistryHandle {
        let h = RegistryHandle::default();
        h.publish(state);
        h
    }

    /// The current registry.
    pub fn load(&self) -> Arc<PublishedState> {
        self.current.load_full()
    }

    /// Notified with the applied index after every publish (for long-lived readers such as open
    /// streams, which must react to a quarantine without polling).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes the subscribers without a new state (something else they check changed: a fence).
    pub fn nudge(&self) {
        self.changed.send_modify(|_| {});
    }

    fn publish(&self, state: PublishedState) {
        let index = state.applied_index;
        self.current.store(Arc::new(state));
        self.changed.send_replace(index);
    }
}

/// The snapshot as kept on disk and sent to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    data: Vec<u8>,
}

/// The state machine.
pub struct StateMachineStore {
    db: Arc<DB>,
    registry: Registry,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    handle: RegistryHandle,
    snapshot_seq: u64,
}

/// Builds a snapshot from a frozen copy of the state.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    registry: Registry,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    seq: u64,
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family exists")
}

impl StateMachineStore {
    /// Loads the state machine from disk and publishes it.
    pub(crate) async fn load(db: Arc<DB>) -> std::result::Result<Self, StoreError> {
        let db2 = db.clone();
        let (registry, applied, membership) =
            tokio::task::spawn_blocking(move || load_state(&db2)).await.expect("load task does not panic")?;
        let handle = RegistryHandle::default();
        let sm = StateMachineStore { db, registry, applied, membership, handle, snapshot_seq: 0 };
        sm.publish();
        Ok(sm)
    }

    /// The read handle of this state machine.
    pub fn handle(&self) -> RegistryHandle {
        self.handle.clone()
    }

    fn publish(&self) {
        self.handle.publish(PublishedState {
            registry: self.registry.clone(),
            applied_index: self.applied.map(|l| l.index).unwrap_or(0),
        });
    }

    fn write_opts(&self) -> WriteOptions {
        // Not synced (see the module doc): the log's synced appends carry the durability.
        let mut w = WriteOptions::default();
        w.set_sync(false);
        w
    }

    async fn write(&self, batch: WriteBatch, subject: ErrorSubject<NodeId>) -> Result<()> {
        let db = self.db.clone();
        let w = self.write_opts();
        match tokio::task::spawn_blocking(move || db.write_opt(batch, &w)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, &e)),
            Err(e) => Err(io_err(subject, ErrorVerb::Write, &e)),
        }
    }

    fn put<T: Serialize + ?Sized>(&self, b: &mut WriteBatch, cf_name: &str, key: &[u8], v: &T) -> Result<()> {
        let bytes = encode(v).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, &e))?;
        b.put_cf(&cf(&self.db, cf_name), key, bytes);
        Ok(())
    }

    /// Adds the whole current state (after a snapshot install) to a batch, replacing what was there.
    fn full_state_batch(&self, b: &mut WriteBatch) -> Result<()> {
        let state = cf(&self.db, CF_STATE);
        let history = cf(&self.db, CF_HISTORY);
        b.delete_range_cf(state, &[][..], &[0xffu8; 16][..]);
        b.delete_range_cf(history, &[][..], &[0xffu8; 16][..]);
        for (name, rec) in &self.registry.servers {
            self.put(b, CF_STATE, &keys::server_key(name), rec.as_ref())?;
        }
        for (name, rec) in &self.registry.policies {
            self.put(b, CF_STATE, &keys::policy_key(name), rec.as_ref())?;
        }
        for (name, v) in &self.registry.virtual_servers {
            self.put(b, CF_STATE, &keys::virtual_key(name), v.as_ref())?;
        }
        for (id, a) in &self.registry.approvals {
            self.put(b, CF_STATE, &keys::approval_key(id), a.as_ref())?;
        }
        self.put(b, CF_STATE, keys::POLICY_EPOCH, &self.registry.policy_epoch)?;
        self.put(b, CF_STATE, keys::TRUST, self.registry.trust.as_ref())?;
        self.put(b, CF_STATE, keys::GUARD, self.registry.guard.as_ref())?;
        self.put(b, CF_STATE, keys::INCIDENTS, self.registry.incidents.as_ref())?;
        for (id, r) in self.registry.requests.iter() {
            self.put(b, CF_STATE, &keys::request_key(*id), r)?;
        }
        for (target, lines) in &self.registry.history {
            for line in lines.iter() {
                self.put(b, CF_HISTORY, &keys::history_key(target, line.at.index, 0), line)?;
            }
        }
        if let Some(k) = &self.registry.cluster_key {
            self.put(b, CF_STATE, keys::CLUSTER_KEY, k)?;
        }
        self.put(b, CF_STATE, keys::RETENTION, &self.registry.retention)?;
        self.put(b, CF_STATE, keys::ACCESS, self.registry.access.as_ref())?;
        self.put(b, CF_STATE, keys::HISTORY_SWEPT, &self.registry.history_swept_ms)?;
        self.put(b, CF_STATE, keys::SM_APPLIED, &self.applied)?;
        self.put(b, CF_STATE, keys::SM_MEMBERSHIP, &self.membership)?;
        Ok(())
    }
}

/// The state machine's persisted state: registry, last applied log id, last membership.
type LoadedState = (Registry, Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>);

/// Reads the state machine's persisted state.
fn load_state(db: &DB) -> std::result::Result<LoadedState, StoreError> {
    fn dec<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> std::result::Result<T, StoreError> {
        decode(v).map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source })
    }
    let state = cf(db, CF_STATE);
    let mut reg = Registry::default();
    let mut applied = None;
    let mut membership = StoredMembership::default();
    let mut requests = Vec::new();
    for item in db.iterator_cf(&state, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        if let Some(name) = k.strip_prefix(keys::SERVER_PREFIX) {
            let rec: ServerRecord = dec(&k, &v)?;
            reg.servers.insert(String::from_utf8_lossy(name).into_owned(), Arc::new(rec));
        } else if let Some(name) = k.strip_prefix(keys::POLICY_PREFIX) {
            let rec: PolicyRecord = dec(&k, &v)?;
            reg.policies.insert(String::from_utf8_lossy(name).into_owned(), Arc::new(rec));
        } else if let Some(name) = k.strip_prefix(keys::VIRTUAL_PREFIX) {
            let v: crate::model::registry::VirtualServerRecord = dec(&k, &v)?;
            reg.virtual_servers.insert(String::from_utf8_lossy(name).into_owned(), Arc::new(v));
        } else if let Some(id) = k.strip_prefix(keys::APPROVAL_PREFIX) {
            let a: crate::model::approval::Approval = dec(&k, &v)?;
            reg.approvals.insert(String::from_utf8_lossy(id).into_owned(), Arc::new(a));
        } else if &*k == keys::POLICY_EPOCH {
            reg.policy_epoch = dec(&k, &v)?;
        } else if &*k == keys::TRUST {
            reg.trust = Arc::new(dec(&k, &v)?);
        } else if &*k == keys::GUARD {
            reg.guard = Arc::new(dec(&k, &v)?);
        } else if &*k == keys::INCIDENTS {
            reg.incidents = Arc::new(dec(&k, &v)?);
        } else if let Some(id) = k.strip_prefix(keys::REQUEST_PREFIX) {
            let id = <[u8; 16]>::try_from(id).map(u128::from_be_bytes).map_err(|_| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source: crate::codec::CodecError::Empty,
            })?;
            requests.push((id, dec(&k, &v)?));
        } else if &*k == keys::CLUSTER_KEY {
            reg.cluster_key = Some(dec(&k, &v)?);
        } else if &*k == keys::RETENTION {
            reg.retention = dec(&k, &v)?;
        } else if &*k == keys::ACCESS {
            reg.access = Arc::new(dec(&k, &v)?);
        } else if &*k == keys::HISTORY_SWEPT {
            reg.history_swept_ms = dec(&k, &v)?;
        } else if &*k == keys::SM_APPLIED {
            applied = dec(&k, &v)?;
        } else if &*k == keys::SM_MEMBERSHIP {
            membership = dec(&k, &v)?;
        }
    }
    reg.requests = crate::model::once::Requests::from_entries(requests);
    reg.compile_policies();
    let history = cf(db, CF_HISTORY);
    let mut by_target: BTreeMap<String, Vec<ChangeRecord>> = BTreeMap::new();
    for item in db.iterator_cf(&history, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let line: ChangeRecord = dec(&k, &v)?;
        by_target.entry(line.target.clone()).or_default().push(line);
    }
    reg.history = by_target.into_iter().map(|(k, v)| (k, v.into_iter().collect::<imbl::Vector<_>>())).collect();
    Ok((reg, applied, membership))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let data = encode(&self.registry).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("--{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let bytes = encode(&stored).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))?;
        let db = self.db.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut w = WriteOptions::default();
            w.set_sync(true);
            db.put_cf_opt(&cf(&db, CF_SNAPSHOT), keys::SNAPSHOT_CURRENT, bytes, &w)
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_err(subject, ErrorVerb::Write, &e)),
            Err(e) => return Err(io_err(subject, ErrorVerb::Write, &e)),
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut touched = Touched::default();
        let mut responses = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let result = self.registry.apply(entry.log_id.index, &req, &mut touched);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.log_id.index, command = req.command.kind(), error = %e, "command rejected");
                    }
                    responses.push(Response { result: Some(result) });
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    responses.push(Response::default());
                }
            }
        }
        let mut b = WriteBatch::default();
        for name in &touched.servers {
            match self.registry.servers.get(name) {
                Some(rec) => self.put(&mut b, CF_STATE, &keys::server_key(name), rec.as_ref())?,
                None => b.delete_cf(&cf(&self.db, CF_STATE), keys::server_key(name)),
            }
        }
        for name in &touched.policies {
            match self.registry.policies.get(name) {
                Some(rec) => self.put(&mut b, CF_STATE, &keys::policy_key(name), rec.as_ref())?,
                None => b.delete_cf(&cf(&self.db, CF_STATE), keys::policy_key(name)),
            }
        }
        for name in &touched.virtual_servers {
            match self.registry.virtual_servers.get(name) {
                Some(v) => self.put(&mut b, CF_STATE, &keys::virtual_key(name), v.as_ref())?,
                None => b.delete_cf(&cf(&self.db, CF_STATE), keys::virtual_key(name)),
            }
        }
        for id in &touched.approvals {
            match self.registry.approvals.get(id) {
                Some(a) => self.put(&mut b, CF_STATE, &keys::approval_key(id), a.as_ref())?,
                None => b.delete_cf(&cf(&self.db, CF_STATE), keys::approval_key(id)),
            }
        }
        if touched.policy_epoch {
            self.put(&mut b, CF_STATE, keys::POLICY_EPOCH, &self.registry.policy_epoch)?;
        }
        if touched.trust {
            self.put(&mut b, CF_STATE, keys::TRUST, self.registry.trust.as_ref())?;
        }
        if touched.guard {
            self.put(&mut b, CF_STATE, keys::GUARD, self.registry.guard.as_ref())?;
        }
        if touched.incidents {
            self.put(&mut b, CF_STATE, keys::INCIDENTS, self.registry.incidents.as_ref())?;
        }
        for id in &touched.requests {
            match self.registry.requests.get(*id) {
                Some(r) => self.put(&mut b, CF_STATE, &keys::request_key(*id), r)?,
                None => b.delete_cf(&cf(&self.db, CF_STATE), keys::request_key(*id)),
            }
        }
        for line in &touched.history {
            self.put(&mut b, CF_HISTORY, &keys::history_key(&line.target, line.at.index, 0), line)?;
        }
        for (target, index) in &touched.history_removed {
            b.delete_cf(&cf(&self.db, CF_HISTORY), keys::history_key(target, *index, 0));
        }
        if touched.access {
            self.put(&mut b, CF_STATE, keys::ACCESS, self.registry.access.as_ref())?;
        }
        if touched.settings {
            self.put(&mut b, CF_STATE, keys::RETENTION, &self.registry.retention)?;
            self.put(&mut b, CF_STATE, keys::HISTORY_SWEPT, &self.registry.history_swept_ms)?;
        }
        if touched.cluster_key {
            if let Some(k) = &self.registry.cluster_key {
                self.put(&mut b, CF_STATE, keys::CLUSTER_KEY, k)?;
            }
        }
        self.put(&mut b, CF_STATE, keys::SM_APPLIED, &self.applied)?;
        if membership_changed {
            self.put(&mut b, CF_STATE, keys::SM_MEMBERSHIP, &self.membership)?;
        }
        self.write(b, ErrorSubject::StateMachine).await?;
        self.publish();
        // Apply latency: from the batch's start to durable state and a published snapshot.
        metrics::histogram!("joch_raft_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("joch_raft_applied_entries_total").increment(responses.len() as u64);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            registry: self.registry.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let mut registry: Registry = decode(&data).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))?;
        registry.compile_policies();
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), servers = registry.servers.len(), "installing snapshot");
        self.registry = registry;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let mut b = WriteBatch::default();
        self.full_state_batch(&mut b)?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.put(&mut b, CF_SNAPSHOT, keys::SNAPSHOT_CURRENT, &stored)?;
        self.write(b, subject).await?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let subject = ErrorSubject::Snapshot(None);
        let Some(bytes) = self
            .db
            .get_cf(&cf(&self.db, CF_SNAPSHOT), keys::SNAPSHOT_CURRENT)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode(&bytes).map_err(|e| io_err(subject, ErrorVerb::Read, &e))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
