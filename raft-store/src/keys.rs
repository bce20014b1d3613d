//! The whole on-disk layout, in one place.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `logs` | log index, u64 big-endian (so RocksDB order is log order) | `Entry` |
//! | `meta` | `vote`, `committed`, `last_purged` | `Vote`, `Option<LogId>`, `LogId` |
//! | `state` | `sm/applied`, `sm/membership` | `Option<LogId>`, `StoredMembership` |
//! | `state` | `srv/` + name | `ServerRecord` |
//! | `state` | `pol/` + name | `PolicyRecord` |
//! | `state` | `key/cluster` | `[u8; 32]` |
//! | `state` | `settings/retention`, `settings/history-swept` | `Retention`, `u64` |
//! | `state` | `access` | `Access` (token hashes, agents, identity providers, sealed secrets, session keys) |
//! | `history` | target + `0x00` + log index u64 BE + seq u32 BE (0) | `ChangeRecord` |
//! | `snapshot` | `current` | `StoredSnapshot` |
//!
//! Values are encoded by `codec.rs`. The state machine's state and `sm/applied` are written in
//! one batch, so a crash never leaves them apart.

/// Raft log entries.
pub const CF_LOGS: &str = "logs";
/// Raft metadata: vote, committed, last purged.
pub const CF_META: &str = "meta";
/// State machine: registry records and applied state.
pub const CF_STATE: &str = "state";
/// Change history.
pub const CF_HISTORY: &str = "history";
/// The current snapshot.
pub const CF_SNAPSHOT: &str = "snapshot";

/// All column families, in open order.
pub const ALL_CFS: [&str; 5] = [CF_LOGS, CF_META, CF_STATE, CF_HISTORY, CF_SNAPSHOT];

/// `meta`: the vote.
pub const META_VOTE: &[u8] = b"vote";
/// `meta`: the committed log id.
pub const META_COMMITTED: &[u8] = b"committed";
/// `meta`: the last purged log id.
pub const META_LAST_PURGED: &[u8] = b"last_purged";

/// `state`: last applied log id.
pub const SM_APPLIED: &[u8] = b"sm/applied";
/// `state`: last applied membership.
pub const SM_MEMBERSHIP: &[u8] = b"sm/membership";
/// `state`: the cluster key.
pub const CLUSTER_KEY: &[u8] = b"key/cluster";
/// `state`: tokens, agents, identity providers, sealed secrets, session keys.
pub const ACCESS: &[u8] = b"access";
/// `state`: the history retention.
pub const RETENTION: &[u8] = b"settings/retention";
/// `state`: command time of the last history sweep.
pub const HISTORY_SWEPT: &[u8] = b"settings/history-swept";
/// `state`: prefix of server records.
pub const SERVER_PREFIX: &[u8] = b"srv/";
/// `state`: prefix of policy records.
pub const POLICY_PREFIX: &[u8] = b"pol/";
/// Prefix of virtual servers (`vsv/NAME`).
pub const VIRTUAL_PREFIX: &[u8] = b"vsv/";
/// Prefix of approval requests (`apr/ID`).
pub const APPROVAL_PREFIX: &[u8] = b"apr/";
/// The policies' epoch (bumped by every policy change; approvals are bound to it).
pub const POLICY_EPOCH: &[u8] = b"settings/policy-epoch";
/// The trust settings (publishers, allow-list, weights).
pub const TRUST: &[u8] = b"settings/trust";
/// The content guard's settings (feeds).
pub const GUARD: &[u8] = b"settings/guard";
/// The content guard's incidents.
pub const INCIDENTS: &[u8] = b"settings/incidents";
/// Prefix of remembered write outcomes (`req/` + the write id, 16 bytes big-endian).
pub const REQUEST_PREFIX: &[u8] = b"req/";

/// `snapshot`: the current snapshot.
pub const SNAPSHOT_CURRENT: &[u8] = b"current";

/// Key of a log entry.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a log key.
pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Key of a remembered write outcome.
pub fn request_key(id: u128) -> Vec<u8> {
    [REQUEST_PREFIX, &id.to_be_bytes()[..]].concat()
}

/// Key of a server record.
pub fn server_key(name: &str) -> Vec<u8> {
    [SERVER_PREFIX, name.as_bytes()].concat()
}

/// Key of a policy record.
pub fn policy_key(name: &str) -> Vec<u8> {
    [POLICY_PREFIX, name.as_bytes()].concat()
}

/// Key of a virtual server.
pub fn virtual_key(name: &str) -> Vec<u8> {
    [VIRTUAL_PREFIX, name.as_bytes()].concat()
}

/// Key of an approval request.
pub fn approval_key(id: &str) -> Vec<u8> {
    [APPROVAL_PREFIX, id.as_bytes()].concat()
}

/// Key of a history line. Targets never contain `0x00`, so one target's lines sort together,
/// oldest first.
pub fn history_key(target: &str, index: u64, seq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 13);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Smallest key strictly greater than every key with this prefix (for range deletes and scans).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_in_log_order() {
        let idx = [0u64, 1, 2, 255, 256, 65_535, 65_536, u32::MAX as u64, u64::MAX - 1, u64::MAX];
        let mut keys: Vec<_> = idx.iter().map(|i| log_key(*i)).collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| log_index(k).unwrap()).collect();
        assert_eq!(back, idx);
    }

    #[test]
    fn history_keys_group_by_target_then_index() {
        let mut keys = vec![
            history_key("mcpserver/ab", 2, 0),
            history_key("mcpserver/a", 300, 0),
            history_key("mcpserver/a", 5, 1),
            history_key("mcpserver/a", 5, 0),
            history_key("mcpserver/b", 1, 0),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                history_key("mcpserver/a", 5, 0),
                history_key("mcpserver/a", 5, 1),
                history_key("mcpserver/a", 300, 0),
                history_key("mcpserver/ab", 2, 0),
                history_key("mcpserver/b", 1, 0),
            ]
        );
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"srv/"), b"srv0".to_vec());
        let k = server_key("zzzz");
        assert!(k.as_slice() >= SERVER_PREFIX && k < prefix_end(SERVER_PREFIX));
        assert!(policy_key("a") >= prefix_end(b"pol") || policy_key("a").starts_with(b"pol/"));
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0xff, 0xff, 0xff]);
    }
}
