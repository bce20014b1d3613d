//! openraft's storage conformance suite, run against the RocksDB store on a temp dir.

#![allow(clippy::result_large_err)] // the suite returns openraft's StorageError

use joch_raft_store::{open, LogStore, NodeId, StateMachineStore, StoreOptions, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm, _handle) = open(dir.path(), StoreOptions::default()).await?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RocksBuilder)
}
