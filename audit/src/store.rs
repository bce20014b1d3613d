//! The audit database: appending a batch (chain, indexes, rollups in one synced write), queries,
//! summaries, the chain's verification and retention.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest::{Context, SHA256};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::keys;
use crate::query::{Counts, GateCounts, Group, GroupBy, Page, Problem, Query, SummaryQuery, VerifyReport};
use crate::record::Record;

/// Format of a stored record (the byte before it).
const FORMAT: u8 = 1;
/// One minute in microseconds.
const MINUTE_US: u64 = 60_000_000;
/// Most problems a verification lists.
const MAX_PROBLEMS: usize = 20;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be opened.
    #[error("cannot open the audit database in {dir}: {source}")]
    Open {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        source: rocksdb::Error,
    },
    /// A read or write failed.
    #[error("audit database: {0}")]
    Db(#[from] rocksdb::Error),
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {0}")]
    Writer(std::io::Error),
    /// A stored value could not be decoded.
    #[error("audit database: undecodable {what}: {why}")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        why: String,
    },
}

/// The chain's end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Last seq (0: empty).
    pub seq: u64,
    /// Its time.
    pub time_us: u64,
    /// Its hash (zero: empty).
    pub hash: [u8; 32],
}

impl Head {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.time_us.to_be_bytes());
        v.extend_from_slice(&self.hash);
        v
    }

    fn decode(v: &[u8]) -> Option<Head> {
        if v.len() != 48 {
            return None;
        }
        Some(Head {
            seq: u64::from_be_bytes(v[..8].try_into().ok()?),
            time_us: u64::from_be_bytes(v[8..16].try_into().ok()?),
            hash: v[16..48].try_into().ok()?,
        })
    }
}

/// How long records are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are removed (µs; `u64::MAX`: kept by age).
    pub max_age_us: u64,
    /// At most this many records are kept (the oldest go first).
    pub max_records: u64,
    /// The database is kept under this many bytes on disk (the oldest records go first, with
    /// their index entries; the space is compacted back at once).
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        // 30 days, 10 million records (about 3 GB at ~300 bytes a record before compression),
        // 10 GiB.
        Retention { max_age_us: 30 * 24 * 3600 * 1_000_000, max_records: 10_000_000, max_bytes: 10 << 30 }
    }
}

/// A node's audit database.
pub struct Store {
    db: DB,
    pub(crate) head: Mutex<Head>,
}

/// The chain hash of a stored body after `prev`.
fn chain(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(prev);
    c.update(body);
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_record(v: &[u8]) -> Result<(Record, &[u8], [u8; 32]), String> {
    if v.len() < 33 {
        return Err(format!("{} bytes is too short", v.len()));
    }
    let (body, hash) = v.split_at(v.len() - 32);
    if body[0] != FORMAT {
        return Err(format!("unknown record format {}", body[0]));
    }
    let r: Record = postcard::from_bytes(&body[1..]).map_err(|e| e.to_string())?;
    Ok((r, body, hash.try_into().expect("32 bytes")))
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, AuditError> {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        o.set_keep_log_file_num(2);
        o.set_max_total_wal_size(64 << 20);
        let db = DB::open(&o, dir).map_err(|source| AuditError::Open { dir: dir.to_path_buf(), source })?;
        let head = match db.get(keys::HEAD)? {
            Some(v) => {
                Head::decode(&v).ok_or(AuditError::Decode { what: "head", why: format!("{} bytes", v.len()) })?
            }
            None => Head::default(),
        };
        Ok(Store { db, head: Mutex::new(head) })
    }

    /// The chain's end.
    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends records (one writer at a time: the writer thread): assigns their seq, keeps time
    /// non-decreasing, chains them, indexes them, adds them to the rollups; one write, synced
    /// when `sync`.
    pub fn append(&self, records: &mut [Record], sync: bool) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let mut h = *head;
        let mut batch = WriteBatch::default();
        let mut rollups: HashMap<Vec<u8>, Counts> = HashMap::new();
        let mut gates: BTreeMap<u64, GateCounts> = BTreeMap::new();
        for r in records.iter_mut() {
            r.digest_args();
            h.seq += 1;
            r.seq = h.seq;
            r.time_us = r.time_us.max(h.time_us);
            h.time_us = r.time_us;
            let mut body = vec![FORMAT];
            body.extend(
                postcard::to_stdvec(&*r).map_err(|e| AuditError::Decode { what: "record", why: e.to_string() })?,
            );
            h.hash = chain(&h.hash, &body);
            body.extend_from_slice(&h.hash);
            batch.put(keys::record(r.time_us, r.seq), body);
            if !r.exec.is_empty() {
                batch.put(keys::index(keys::EXEC, &r.exec, r.time_us, r.seq), []);
            }
            if !r.trace.is_empty() {
                batch.put(keys::index(keys::TRACE, &r.trace, r.time_us, r.seq), []);
            }
            if !r.server.is_empty() {
                batch.put(keys::index(keys::SERVER, &r.server, r.time_us, r.seq), []);
            }
            if r.counts() {
                let k = keys::minute(&r.server, r.time_us / MINUTE_US, &r.agent, &r.target);
                rollups.entry(k).or_default().add(r.outcome, r.upstream_us);
            }
            gates.entry(r.time_us / MINUTE_US).or_default().add(r);
        }
        for (minute, add) in gates {
            let k = keys::gate(minute);
            let mut g: GateCounts = match self.db.get(&k)? {
                Some(v) => postcard::from_bytes(&v).unwrap_or_default(),
                None => GateCounts::default(),
            };
            g.merge(&add);
            batch.put(k, postcard::to_stdvec(&g).unwrap_or_default());
        }
        for (k, add) in rollups {
            let mut c: Counts = match self.db.get(&k)? {
                Some(v) => Counts::decode(&v),
                None => Counts::default(),
            };
            c.merge(add);
            batch.put(k, postcard::to_stdvec(&c).unwrap_or_default());
        }
        batch.put(keys::HEAD, h.encode());
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        self.db.write_opt(batch, &w)?;
        *head = h;
        Ok(())
    }

    /// Records matching `q`, newest first (or oldest first), at most `q.limit`; read through the
    /// narrowest index the query names.
    pub fn query(&self, q: &Query) -> Result<Page, AuditError> {
        let mut page = Page::default();
        let index = match (&q.exec, &q.trace, &q.server) {
            (Some(e), _, _) => Some(keys::index_prefix(keys::EXEC, e)),
            (None, Some(t), _) => Some(keys::index_prefix(keys::TRACE, t)),
            (None, None, Some(s)) => Some(keys::index_prefix(keys::SERVER, s)),
            _ => None,
        };
        let prefix = index.unwrap_or_else(|| vec![keys::RECORD]);
        let mut lo = prefix.clone();
        lo.extend_from_slice(&q.since_us.to_be_bytes());
        let mut hi = prefix.clone();
        hi.extend_from_slice(&q.until_us.to_be_bytes());
        let mode = if q.oldest_first {
            IteratorMode::From(&lo, Direction::Forward)
        } else {
            IteratorMode::From(&hi, Direction::Reverse)
        };
        for item in self.db.iterator(mode) {
            let (k, v) = item?;
            // Forward: from `lo` until `hi`; reverse: from `hi` down to `lo`.
            let (past_end, before_start) = (k[..] >= hi[..], k[..] < lo[..]);
            if !k.starts_with(&prefix) || (q.oldest_first && past_end) || (!q.oldest_first && before_start) {
                break;
            }
            if past_end || before_start {
                continue;
            }
            let value = if prefix[0] == keys::RECORD {
                v
            } else {
                let Some(rk) = keys::record_of_index(&k) else { continue };
                match self.db.get(rk)? {
                    Some(v) => v.into_boxed_slice(),
                    None => continue, // removed by retention since
                }
            };
            page.scanned += 1;
            let (r, _, _) = decode_record(&value).map_err(|why| AuditError::Decode { what: "record", why })?;
            if !q.matches(&r) {
                continue;
            }
            if page.records.len() == q.limit {
                page.more = true;
                break;
            }
            page.records.push(r);
        }
        Ok(page)
    }

    /// Calls since `q.since_us` until now, counted by agent, tool or server: whole minutes from
    /// the rollups, the first partial minute from the records themselves.
    pub fn summarize(&self, q: &SummaryQuery) -> Result<Vec<Group>, AuditError> {
        // Counts, first and last minute (or record time) of each group.
        let mut groups: BTreeMap<String, (Counts, u64, u64)> = BTreeMap::new();
        let mut count = |key: String, c: Counts, at_us: u64| {
            let g = groups.entry(key).or_insert((Counts::default(), at_us, at_us));
            g.0.merge(c);
            g.1 = g.1.min(at_us);
            g.2 = g.2.max(at_us);
        };
        let agent_ok = |a: &str| q.agent.as_deref().is_none_or(|w| w == a);
        let first_whole = q.since_us.div_ceil(MINUTE_US);
        let key_of = |server: &str, agent: &str, tool: &str| match q.by {
            GroupBy::Agent => agent.to_string(),
            GroupBy::Tool => tool.to_string(),
            GroupBy::Server => server.to_string(),
        };
        // Whole minutes.
        let prefix = match &q.server {
            Some(s) => keys::minute_prefix(s),
            None => vec![keys::MINUTE],
        };
        let mut from = prefix.clone();
        if q.server.is_some() {
            from.extend_from_slice(&first_whole.to_be_bytes());
        }
        for item in self.db.iterator(IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((server, minute, agent, tool)) = keys::parse_minute(&k) else { continue };
            if minute < first_whole || !agent_ok(agent) {
                continue;
            }
            let c = Counts::decode(&v);
            count(key_of(server, agent, tool), c, minute * MINUTE_US);
        }
        // The partial minute before them.
        let edge = Query {
            since_us: q.since_us,
            until_us: first_whole * MINUTE_US,
            server: q.server.clone(),
            agent: q.agent.clone(),
            limit: usize::MAX,
            oldest_first: true,
            ..Query::default()
        };
        if edge.until_us > edge.since_us {
            for r in self.query(&edge)?.records.into_iter().filter(Record::counts) {
                let mut c = Counts::default();
                c.add(r.outcome, r.upstream_us);
                count(key_of(&r.server, &r.agent, &r.target), c, r.time_us);
            }
        }
        Ok(groups
            .into_iter()
            .map(|(key, (c, first_us, last_us))| Group {
                key,
                calls: c.calls,
                denied: c.denied,
                errors: c.errors,
                first_us,
                last_us,
                upstream_us: c.upstream_us,
                timed: c.timed,
            })
            .collect())
    }

    /// Gate counts per minute since `since_us` (minutes with nothing are absent).
    pub fn gates(&self, since_us: u64) -> Result<Vec<(u64, GateCounts)>, AuditError> {
        let mut out = Vec::new();
        let from = keys::gate(since_us / MINUTE_US);
        for item in self.db.iterator(IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item?;
            let Some(minute) = keys::parse_gate(&k) else { break };
            out.push((minute, postcard::from_bytes(&v).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Checks the chain from its anchor to its head: every record's hash, the seq without gaps,
    /// key and record agreeing, the head matching the last record.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let anchor = match self.db.get(keys::ANCHOR)? {
            Some(v) => Head::decode(&v).unwrap_or_default(),
            None => Head::default(),
        };
        let mut rep = VerifyReport::default();
        let mut prev = anchor.hash;
        let mut expect = anchor.seq + 1;
        fn problem(rep: &mut VerifyReport, seq: u64, time_us: u64, p: String) {
            if rep.problems.len() < MAX_PROBLEMS {
                rep.problems.push(Problem { seq, time_us, problem: p });
            }
        }
        for item in self.db.prefix_iterator([keys::RECORD]) {
            let (k, v) = item?;
            let Some((time_us, seq)) = keys::parse_record(&k) else { break };
            rep.records += 1;
            if rep.first_seq == 0 {
                rep.first_seq = seq;
            }
            rep.last_seq = seq;
            if seq != expect {
                let p = if seq > expect {
                    format!("records {expect}..{} are missing", seq - 1)
                } else {
                    format!("seq {seq} out of order (expected {expect})")
                };
                problem(&mut rep, seq, time_us, p);
            }
            expect = seq + 1;
            match decode_record(&v) {
                Err(why) => {
                    problem(&mut rep, seq, time_us, format!("undecodable: {why}"));
                    prev = v[v.len().saturating_sub(32)..].try_into().unwrap_or([0; 32]);
                }
                Ok((r, body, stored)) => {
                    let h = chain(&prev, body);
                    if h != stored {
                        problem(
                            &mut rep,
                            seq,
                            time_us,
                            "hash mismatch: this record, or the link to the one before it, was altered".into(),
                        );
                    } else if r.seq != seq || r.time_us != time_us {
                        problem(
                            &mut rep,
                            seq,
                            time_us,
                            format!("key says seq {seq} at {time_us}, record says seq {} at {}", r.seq, r.time_us),
                        );
                    }
                    // Follow the stored hash: one altered record is named once, not every one after it.
                    prev = stored;
                }
            }
        }
        let head = self.head();
        rep.head = hex(&prev);
        if rep.last_seq != head.seq && head.seq > anchor.seq {
            let p = format!(
                "the head names seq {} but the last record is {}: records at the end are missing",
                head.seq, rep.last_seq
            );
            problem(&mut rep, head.seq, head.time_us, p);
        } else if head.seq > 0 && head.seq == rep.last_seq && head.hash != prev {
            problem(&mut rep, head.seq, head.time_us, "the head's hash does not match the last record".into());
        }
        Ok(rep)
    }

    /// Removes what `keep` no longer keeps (the oldest records, their index entries, and
    /// rollups older than the age limit); moves the anchor. Returns how many records went.
    pub fn prune(&self, keep: Retention, now_us: u64) -> Result<u64, AuditError> {
        let head = self.head();
        let cutoff = now_us.saturating_sub(keep.max_age_us);
        let anchor = match self.db.get(keys::ANCHOR)? {
            Some(v) => Head::decode(&v).unwrap_or_default(),
            None => Head::default(),
        };
        let mut count = head.seq.saturating_sub(anchor.seq);
        // Over the size limit: as many records as fit in nine tenths of it, at the average size a
        // record takes now (index entries and rollups included), are kept.
        let size = self.size_bytes();
        let by_size = size > keep.max_bytes && count > 0;
        let max_records = if by_size {
            let per_record = (size / count).max(1);
            keep.max_records.min(keep.max_bytes / 10 * 9 / per_record)
        } else {
            keep.max_records
        };
        let keep = Retention { max_records, ..keep };
        let mut removed = 0;
        let mut batch = WriteBatch::default();
        let mut last: Option<Head> = None;
        for item in self.db.prefix_iterator([keys::RECORD]) {
            let (k, v) = item?;
            let Some((time_us, seq)) = keys::parse_record(&k) else { break };
            if time_us >= cutoff && count <= keep.max_records {
                break;
            }
            if let Ok((r, _, hash)) = decode_record(&v) {
                for (p, name) in [(keys::EXEC, &r.exec), (keys::TRACE, &r.trace), (keys::SERVER, &r.server)] {
                    if !name.is_empty() {
                        batch.delete(keys::index(p, name, time_us, seq));
                    }
                }
                last = Some(Head { seq, time_us, hash });
            }
            batch.delete(&k);
            count = count.saturating_sub(1);
            removed += 1;
            if batch.len() >= 4096 {
                if let Some(a) = last {
                    batch.put(keys::ANCHOR, a.encode());
                }
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        if let Some(a) = last {
            batch.put(keys::ANCHOR, a.encode());
        }
        // Rollups and gate counts of minutes before the age limit.
        let old_minute = cutoff / MINUTE_US;
        for item in self.db.prefix_iterator([keys::GATE]) {
            let (k, _) = item?;
            match keys::parse_gate(&k) {
                Some(minute) if minute < old_minute => batch.delete(&k),
                // Minute order: the rest is kept.
                _ => break,
            }
        }
        // Keys are server, then minute: read each server's old minutes, then seek past the
        // rest of that server (this runs every minute; the kept rollups are never read through).
        let mut it = self.db.raw_iterator();
        it.seek([keys::MINUTE]);
        while let Some(k) = it.key().map(<[u8]>::to_vec) {
            if k.first() != Some(&keys::MINUTE) {
                break;
            }
            match keys::parse_minute(&k) {
                Some((_, minute, _, _)) if minute < old_minute => {
                    batch.delete(&k);
                    it.next();
                }
                Some((server, _, _, _)) => {
                    let mut next = keys::minute_prefix(server);
                    if let Some(last) = next.last_mut() {
                        *last = 1; // just past `m` + server + 0 + anything
                    }
                    it.seek(&next);
                }
                None => it.next(),
            }
        }
        it.status()?;
        self.db.write(batch)?;
        if by_size && removed > 0 {
            // Deleted keys free their space only when compacted: at once, so the next pass sees
            // the size that is left (and does not remove more for space already freed).
            self.db.compact_range::<&[u8], &[u8]>(None, None);
        }
        Ok(removed)
    }

    /// Bytes the database takes: its table files and what is still in memory.
    pub fn size_bytes(&self) -> u64 {
        let p = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
    }

    /// The raw database (tests and tools that must alter it, to prove verification catches it).
    pub fn raw(&self) -> &DB {
        &self.db
    }
}

#[cfg(test)]
pub(crate) fn record_value(store: &Store, seq: u64) -> Option<(Vec<u8>, Vec<u8>)> {
    store
        .db
        .prefix_iterator([keys::RECORD])
        .filter_map(Result::ok)
        .find_map(|(k, v)| (keys::parse_record(&k).map(|(_, s)| s) == Some(seq)).then(|| (k.to_vec(), v.to_vec())))
}

/// Replaces one stored record's content, keeping its stored hash: what someone editing the
/// database would do. For tests of `verify` (here and end to end).
pub fn tamper(db: &DB, seq: u64, edit: impl FnOnce(&mut Record)) -> Result<bool, AuditError> {
    for item in db.prefix_iterator([keys::RECORD]) {
        let (k, v) = item?;
        let Some((_, s)) = keys::parse_record(&k) else { break };
        if s != seq {
            continue;
        }
        let (mut r, _, hash) = decode_record(&v).map_err(|why| AuditError::Decode { what: "record", why })?;
        edit(&mut r);
        let mut body = vec![FORMAT];
        body.extend(postcard::to_stdvec(&r).map_err(|e| AuditError::Decode { what: "record", why: e.to_string() })?);
        body.extend_from_slice(&hash);
        db.put(&k, body)?;
        return Ok(true);
    }
    Ok(false)
}
