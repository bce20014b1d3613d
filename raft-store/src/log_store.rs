//! The Raft log on RocksDB. `append` reports completion only after the entries are on disk
//! (synced write batch); the vote is synced before `save_vote` returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::codec::{decode, encode};
use crate::error::io_err;
use crate::keys::{self, CF_LOGS, CF_META};
use crate::{NodeId, StoreOptions, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The Raft log store. Cheap to clone (shares the DB).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    opts: StoreOptions,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, opts: StoreOptions) -> Self {
        LogStore { db, opts }
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.opts.sync_writes);
        w
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8], subject: ErrorSubject<NodeId>) -> Result<Option<T>> {
        let cf = self.db.cf_handle(CF_META).expect("meta column family exists");
        match self.db.get_cf(&cf, key).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|e| io_err(subject, ErrorVerb::Read, &e)),
        }
    }

    /// Writes a batch off the async workers (RocksDB blocks; a synced write waits for the disk).
    async fn write(&self, batch: WriteBatch, subject: ErrorSubject<NodeId>) -> Result<()> {
        let db = self.db.clone();
        let w = self.write_opts();
        let res = tokio::task::spawn_blocking(move || db.write_opt(batch, &w)).await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, &e)),
            Err(e) => Err(io_err(subject, ErrorVerb::Write, &e)),
        }
    }

    fn put_meta_batch<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<WriteBatch> {
        let cf = self.db.cf_handle(CF_META).expect("meta column family exists");
        let mut b = WriteBatch::default();
        b.put_cf(&cf, key, encode(value).map_err(|e| io_err(subject, ErrorVerb::Write, &e))?);
        Ok(b)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(CF_LOGS).expect("logs column family exists");
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf(&cf, rocksdb::IteratorMode::From(&keys::log_key(start), rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            let index = keys::log_index(&k).unwrap_or(u64::MAX);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = decode(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let cf = self.db.cf_handle(CF_LOGS).expect("logs column family exists");
        let last = match self.db.iterator_cf(&cf, rocksdb::IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                let entry: Entry<TypeConfig> =
                    decode(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Some(entry.log_id)
            }
        };
        let last_purged: Option<LogId<NodeId>> = self.get_meta(keys::META_LAST_PURGED, ErrorSubject::Store)?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let b = self.put_meta_batch(keys::META_VOTE, vote, ErrorSubject::Vote)?;
        self.write(b, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_meta(keys::META_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let b = self.put_meta_batch(keys::META_COMMITTED, &committed, ErrorSubject::Store)?;
        self.write(b, ErrorSubject::Store).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(keys::META_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf_handle(CF_LOGS).expect("logs column family exists");
        let mut batch = WriteBatch::default();
        for entry in entries {
            let v = encode(&entry).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            batch.put_cf(&cf, keys::log_key(entry.log_id.index), v);
        }
        // Durable before we report it: openraft counts this entry towards the quorum only after
        // the callback.
        self.write(batch, ErrorSubject::Logs).await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let cf = self.db.cf_handle(CF_LOGS).expect("logs column family exists");
        let mut b = WriteBatch::default();
        b.delete_range_cf(&cf, keys::log_key(log_id.index), keys::log_key(u64::MAX));
        b.delete_cf(&cf, keys::log_key(u64::MAX));
        self.write(b, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // Record the purge point first: entries at or below it are ignored from then on, so the
        // two writes need not be atomic. Both go in one batch anyway.
        let mut b = self.put_meta_batch(keys::META_LAST_PURGED, &log_id, ErrorSubject::Store)?;
        let cf = self.db.cf_handle(CF_LOGS).expect("logs column family exists");
        b.delete_range_cf(&cf, keys::log_key(0), keys::log_key(log_id.index.saturating_add(1)));
        self.write(b, ErrorSubject::Logs).await
    }
}
