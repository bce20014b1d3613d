//! joch's replicated store: the openraft type configuration, the RocksDB log store and state
//! machine, snapshots, and the immutable registry snapshot the data plane reads.
//!
//! This is the only crate that links RocksDB. It knows nothing about networking, gRPC or MCP.

// openraft's storage traits return `StorageError` (large) by value; our helpers return the same.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod error;
pub mod keys;
pub mod log_store;
pub mod model;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use model::command::{Applied, Command, Request, Response};
pub use model::registry::{ApplyError, ChangeRecord, PolicyRecord, Registry, ServerRecord};
pub use state_machine::{PublishedState, RegistryHandle, StateMachineStore};

/// A node's id in the cluster.
pub type NodeId = u64;

/// How to reach a member: stored in the Raft membership, so every node knows every other's
/// addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeAddr {
    /// QUIC mesh address (`host:port`), the one Raft uses.
    pub mesh: String,
    /// gRPC admin URL (`http://host:port`).
    pub admin: String,
    /// MCP HTTP base URL (`http://host:port`).
    pub mcp: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mesh={} admin={} mcp={}", self.mesh, self.admin, self.mcp)
    }
}

/// Snapshot payloads travel as byte buffers.
pub type SnapshotData = Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    /// joch's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        SnapshotData = SnapshotData,
);

/// The Raft instance type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Store tuning that is static node config.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// fsync every log append and vote before acknowledging (on by default; tests of the storage
    /// suite may turn it off for speed, never production). The state machine's writes ride on
    /// them (see `state_machine.rs`).
    pub sync_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { sync_writes: true }
    }
}

/// Opens (or creates) the store in `dir`: the log store, the state machine, and the handle through
/// which the rest of the node reads the published registry.
pub async fn open(
    dir: &Path,
    opts: StoreOptions,
) -> Result<(LogStore, StateMachineStore, RegistryHandle), error::StoreError> {
    let db = Arc::new(open_db(dir)?);
    let log = LogStore::new(db.clone(), opts.clone());
    let sm = StateMachineStore::load(db).await?;
    let handle = sm.handle();
    Ok((log, sm, handle))
}

fn open_db(dir: &Path) -> Result<rocksdb::DB, error::StoreError> {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_keep_log_file_num(4);
    o.set_max_total_wal_size(64 << 20);
    let cfs = keys::ALL_CFS.iter().map(|n| {
        let mut cf = rocksdb::Options::default();
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        rocksdb::ColumnFamilyDescriptor::new(*n, cf)
    });
    rocksdb::DB::open_cf_descriptors(&o, dir, cfs)
        .map_err(|source| error::StoreError::Open { dir: dir.to_path_buf(), source })
}
