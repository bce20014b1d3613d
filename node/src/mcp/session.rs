//! joch's session ids: sealed with a session key of the cluster (ChaCha20-Poly1305, a raw 256-bit
//! key from the replicated store, never a password KDF), carrying everything any node needs to
//! continue the session: owner node, server, the upstream's session id and version, the caller it
//! is bound to, when it began. An id names the key that sealed it (`j2.<key id>.<sealed>`): the
//! newest key seals, every kept key opens, so `joch cluster rotate-session-key` takes effect for
//! new sessions at once while open ones continue until they expire. A tampered, foreign or
//! expired id fails to open.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "j2.";
const AAD: &str = "joch-session-v2";

/// What a session id carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SessionToken {
    /// Node that created the session (owns node-local state such as a stdio child).
    pub owner: u64,
    /// Registered server name.
    pub server: String,
    /// The upstream's own session id, if it issued one.
    pub upstream_session: Option<String>,
    /// The upstream's `serverInfo.version` at initialize.
    pub upstream_version: Option<String>,
    /// Negotiated protocol version.
    pub protocol_version: String,
    /// Caller identity the session is bound to.
    pub caller: String,
    /// Unix ms of creation.
    pub created_ms: u64,
    /// For a session on the aggregate endpoint (`server` empty): the servers in it.
    pub members: Vec<Member>,
    /// The upstream speaks only the modern era: joch translates this legacy session's requests.
    pub upstream_modern: bool,
}

/// One server of an aggregate session.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Member {
    /// Server name.
    pub server: String,
    /// Its upstream session id, if it issued one.
    pub upstream_session: Option<String>,
    /// Its `serverInfo.version` at initialize.
    pub upstream_version: Option<String>,
}

/// Why a session id was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    /// Not a joch session id, tampered, sealed with another cluster's key or with a key no
    /// longer kept.
    #[error("unknown or invalid session id")]
    Invalid,
    /// Valid, but older than the session lifetime.
    #[error("the session expired")]
    Expired,
}

/// Seals and opens session ids with the cluster's session keys.
#[derive(Clone)]
pub struct Sealer {
    /// (key id, key), oldest first; the last seals.
    keys: Vec<(u32, [u8; 32])>,
    /// Lifetime of an id, from its `created_ms`.
    max_age_ms: u64,
}

fn aad(key_id: u32) -> Vec<u8> {
    format!("{AAD}\0{key_id}").into_bytes()
}

impl Sealer {
    /// A sealer over these keys (id, key; oldest first, at least one), ids living `max_age`.
    pub fn new(keys: impl IntoIterator<Item = (u32, [u8; 32])>, max_age: std::time::Duration) -> Option<Self> {
        let keys: Vec<(u32, [u8; 32])> = keys.into_iter().collect();
        (!keys.is_empty()).then_some(Sealer { keys, max_age_ms: max_age.as_millis() as u64 })
    }

    /// Seals a token into a session id, with the newest key.
    pub fn seal(&self, t: &SessionToken) -> String {
        let (id, key) = self.keys.last().expect("a sealer has a key");
        let plain = postcard::to_allocvec(t).expect("a token always serialises");
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let ct = ChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(*id) })
            .expect("encryption of a bounded buffer does not fail");
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        format!("{PREFIX}{id}.{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Opens a session id (`now_ms`: Unix ms, for its expiry).
    pub fn open(&self, id: &str, now_ms: u64) -> Result<SessionToken, SessionError> {
        let rest = id.strip_prefix(PREFIX).ok_or(SessionError::Invalid)?;
        let (key_id, b64) = rest.split_once('.').ok_or(SessionError::Invalid)?;
        let key_id: u32 = key_id.parse().map_err(|_| SessionError::Invalid)?;
        let (_, key) = self.keys.iter().find(|(k, _)| *k == key_id).ok_or(SessionError::Invalid)?;
        if b64.len() > 4096 {
            return Err(SessionError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| SessionError::Invalid)?;
        if raw.len() < 12 + 16 {
            return Err(SessionError::Invalid);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad(key_id) })
            .map_err(|_| SessionError::Invalid)?;
        let t: SessionToken = postcard::from_bytes(&plain).map_err(|_| SessionError::Invalid)?;
        if now_ms.saturating_sub(t.created_ms) > self.max_age_ms {
            return Err(SessionError::Expired);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> SessionToken {
        SessionToken {
            owner: 1,
            server: "heldout".into(),
            upstream_session: Some("abc".into()),
            upstream_version: Some("1.4.2".into()),
            protocol_version: "2025-11-25".into(),
            caller: "anonymous".into(),
            created_ms: 7,
            members: vec![Member { server: "a".into(), upstream_session: None, upstream_version: Some("1".into()) }],
            upstream_modern: false,
        }
    }

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn sealer(keys: &[(u32, u8)]) -> Sealer {
        Sealer::new(keys.iter().map(|(id, b)| (*id, [*b; 32])), DAY).unwrap()
    }

    #[test]
    fn round_trip_and_tamper() {
        let s = sealer(&[(0, 7)]);
        let id = s.seal(&token());
        assert!(id.starts_with("j2.0.") && id.is_ascii());
        assert_eq!(s.open(&id, 8).unwrap(), token());
        assert_ne!(s.seal(&token()), id, "fresh nonce per id");
        let mut bad = id.clone().into_bytes();
        let n = bad.len() - 5;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.open(std::str::from_utf8(&bad).unwrap(), 8), Err(SessionError::Invalid));
        assert_eq!(sealer(&[(0, 8)]).open(&id, 8), Err(SessionError::Invalid), "another cluster's key");
        assert_eq!(s.open(&id.replacen("j2.0.", "j2.1.", 1), 8), Err(SessionError::Invalid), "another key id");
        assert_eq!(s.open("a81c672d779e4279ab4abc5242641fd2", 8), Err(SessionError::Invalid));
        assert_eq!(s.open("j2.0.!!", 8), Err(SessionError::Invalid));
        assert!(Sealer::new([], DAY).is_none());
    }

    #[test]
    fn rotation_seals_with_the_newest_key_and_old_ids_open_until_they_expire() {
        let before = sealer(&[(0, 7)]);
        let old = before.seal(&token());
        let after = sealer(&[(0, 7), (1, 9)]);
        let new = after.seal(&token());
        assert!(new.starts_with("j2.1."), "{new}");
        assert_eq!(after.open(&old, 8).unwrap(), token(), "an id of the previous key still opens");
        assert_eq!(before.open(&new, 8), Err(SessionError::Invalid), "a node without the new key cannot");
        let day_ms = DAY.as_millis() as u64;
        assert_eq!(after.open(&old, 7 + day_ms).unwrap(), token());
        assert_eq!(after.open(&old, 8 + day_ms), Err(SessionError::Expired));
        // Once its key is dropped (bounded key list), an old id no longer opens.
        assert_eq!(sealer(&[(1, 9)]).open(&old, 8), Err(SessionError::Invalid));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn sealer(b: u8) -> Sealer {
            Sealer::new([(0, [b; 32])], std::time::Duration::from_secs(86_400)).unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_id_opens_or_is_refused(id in ".{0,200}", raw in prop::collection::vec(any::<u8>(), 0..200)) {
                let s = sealer(3);
                let _ = s.open(&id, 0);
                use base64::Engine;
                let forged = format!("j2.0.{}", URL_SAFE_NO_PAD.encode(&raw));
                prop_assert_eq!(s.open(&forged, 0), Err(SessionError::Invalid));
            }

            #[test]
            fn tokens_round_trip(server in "[a-z]{1,12}", up in proptest::option::of("[ -~]{0,40}"), owner in any::<u64>(), created in any::<u64>(), modern in any::<bool>()) {
                let s = sealer(9);
                let t = SessionToken {
                    owner, server, upstream_session: up.clone(), upstream_version: up, protocol_version: "2025-11-25".into(),
                    caller: "anonymous".into(), created_ms: created, members: Vec::new(), upstream_modern: modern,
                };
                prop_assert_eq!(s.open(&s.seal(&t), created).unwrap(), t);
            }
        }
    }
}
