//! The audit database's whole layout (one RocksDB, default column family).
//!
//! | key | value |
//! | --- | --- |
//! | `r` + time µs (u64 BE) + seq (u64 BE) | format version (1 byte), postcard `Record`, its chain hash (32 bytes) |
//! | `e` + exec id + `0x00` + time + seq | empty: records of one execution |
//! | `t` + trace id + `0x00` + time + seq | empty: records of one trace |
//! | `s` + server + `0x00` + time + seq | empty: records of one server |
//! | `m` + server + `0x00` + minute (u64 BE) + agent + `0x00` + tool | postcard `Counts` (rollup) |
//! | `g` + minute (u64 BE) | postcard `GateCounts` (seed 003's gates) |
//! | `h` | the head: seq, time, hash of the last record |
//! | `a` | the anchor: seq and hash of the last record removed by retention (the chain starts after it) |
//!
//! Time before seq in every key: the writer keeps time non-decreasing along the chain, so key
//! order is chain order and a time range is a key range.

/// Records.
pub const RECORD: u8 = b'r';
/// Execution index.
pub const EXEC: u8 = b'e';
/// Trace index.
pub const TRACE: u8 = b't';
/// Server index.
pub const SERVER: u8 = b's';
/// Per-minute rollups.
pub const MINUTE: u8 = b'm';
/// Per-minute gate counts.
pub const GATE: u8 = b'g';
/// The chain's head.
pub const HEAD: &[u8] = b"h";
/// The chain's anchor.
pub const ANCHOR: &[u8] = b"a";

/// `r` + time + seq.
pub fn record(time_us: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(RECORD);
    k.extend_from_slice(&time_us.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An index key: prefix + name + 0 + time + seq.
pub fn index(prefix: u8, name: &str, time_us: u64, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(prefix, name);
    k.extend_from_slice(&time_us.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix + name + 0: every index key of one name.
pub fn index_prefix(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 18);
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// The record key an index key points at (its last 16 bytes).
pub fn record_of_index(k: &[u8]) -> Option<Vec<u8>> {
    let tail = k.len().checked_sub(16)?;
    let mut r = Vec::with_capacity(17);
    r.push(RECORD);
    r.extend_from_slice(&k[tail..]);
    Some(r)
}

/// Time and seq of a record key.
pub fn parse_record(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 17 || k[0] != RECORD {
        return None;
    }
    Some((u64::from_be_bytes(k[1..9].try_into().ok()?), u64::from_be_bytes(k[9..17].try_into().ok()?)))
}

/// `m` + server + 0 + minute + agent + 0 + tool.
pub fn minute(server: &str, minute: u64, agent: &str, tool: &str) -> Vec<u8> {
    let mut k = minute_prefix(server);
    k.extend_from_slice(&minute.to_be_bytes());
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(tool.as_bytes());
    k
}

/// `m` + server + 0.
pub fn minute_prefix(server: &str) -> Vec<u8> {
    index_prefix(MINUTE, server)
}

/// The parts of a rollup key: server, minute, agent, tool.
pub fn parse_minute(k: &[u8]) -> Option<(&str, u64, &str, &str)> {
    let k = k.strip_prefix(&[MINUTE])?;
    let z = k.iter().position(|b| *b == 0)?;
    let server = std::str::from_utf8(&k[..z]).ok()?;
    let rest = &k[z + 1..];
    let minute = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let z = rest.iter().position(|b| *b == 0)?;
    Some((server, minute, std::str::from_utf8(&rest[..z]).ok()?, std::str::from_utf8(&rest[z + 1..]).ok()?))
}

/// `g` + minute.
pub fn gate(minute: u64) -> Vec<u8> {
    let mut k = vec![GATE];
    k.extend_from_slice(&minute.to_be_bytes());
    k
}

/// The minute of a gate key.
pub fn parse_gate(k: &[u8]) -> Option<u64> {
    (k.len() == 9 && k[0] == GATE).then(|| u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()))
}
