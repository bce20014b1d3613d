//! Store errors. A storage error is fatal to the node: openraft stops and the node exits; nothing
//! here is retried or swallowed.

use std::path::PathBuf;

use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::codec::CodecError;
use crate::NodeId;

/// Errors opening or loading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB would not open.
    #[error("cannot open the store in {dir}: {source}")]
    Open {
        /// Data directory.
        dir: PathBuf,
        /// Cause.
        source: rocksdb::Error,
    },
    /// A read failed while loading state.
    #[error("cannot read the store: {0}")]
    Read(#[from] rocksdb::Error),
    /// A stored value does not decode.
    #[error("corrupt value under {key}: {source}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Cause.
        source: CodecError,
    },
}

impl From<StoreError> for StorageError<NodeId> {
    fn from(e: StoreError) -> Self {
        StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
    }
}

/// Shorthand for mapping any error into an openraft storage error.
pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}
