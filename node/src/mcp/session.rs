//! joch's session ids: sealed with the cluster key (ChaCha20-Poly1305, a raw 256-bit key from the
//! replicated store, never a password KDF), carrying everything any node needs to continue the
//! session: owner node, server, the upstream's session id and version, the caller it is bound to.
//! A tampered or foreign id fails to open.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "j1.";
const AAD: &[u8] = b"joch-session-v1";

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
    /// Not a joch session id, tampered, or sealed with another cluster's key.
    #[error("unknown or invalid session id")]
    Invalid,
}

/// Seals and opens session ids with the cluster key.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// A sealer for this cluster key.
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(key)) }
    }

    /// Seals a token into a session id.
    pub fn seal(&self, t: &SessionToken) -> String {
        let plain = postcard::to_allocvec(t).expect("a token always serialises");
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: AAD })
            .expect("encryption of a bounded buffer does not fail");
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Opens a session id.
    pub fn open(&self, id: &str) -> Result<SessionToken, SessionError> {
        let b64 = id.strip_prefix(PREFIX).ok_or(SessionError::Invalid)?;
        if b64.len() > 4096 {
            return Err(SessionError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| SessionError::Invalid)?;
        if raw.len() < 12 + 16 {
            return Err(SessionError::Invalid);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
            .map_err(|_| SessionError::Invalid)?;
        postcard::from_bytes(&plain).map_err(|_| SessionError::Invalid)
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

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::new(&[7; 32]);
        let id = s.seal(&token());
        assert!(id.starts_with("j1.") && id.is_ascii());
        assert_eq!(s.open(&id).unwrap(), token());
        assert_ne!(s.seal(&token()), id, "fresh nonce per id");
        let mut bad = id.clone().into_bytes();
        let n = bad.len() - 5;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.open(std::str::from_utf8(&bad).unwrap()), Err(SessionError::Invalid));
        assert_eq!(Sealer::new(&[8; 32]).open(&id), Err(SessionError::Invalid), "another cluster's key");
        assert_eq!(s.open("a81c672d779e4279ab4abc5242641fd2"), Err(SessionError::Invalid));
        assert_eq!(s.open("j1.!!"), Err(SessionError::Invalid));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_id_opens_or_is_refused(id in ".{0,200}", raw in prop::collection::vec(any::<u8>(), 0..200)) {
                let s = Sealer::new(&[3; 32]);
                let _ = s.open(&id);
                use base64::Engine;
                let forged = format!("j1.{}", URL_SAFE_NO_PAD.encode(&raw));
                prop_assert_eq!(s.open(&forged), Err(SessionError::Invalid));
            }

            #[test]
            fn tokens_round_trip(server in "[a-z]{1,12}", up in proptest::option::of("[ -~]{0,40}"), owner in any::<u64>(), created in any::<u64>(), modern in any::<bool>()) {
                let s = Sealer::new(&[9; 32]);
                let t = SessionToken {
                    owner, server, upstream_session: up.clone(), upstream_version: up, protocol_version: "2025-11-25".into(),
                    caller: "anonymous".into(), created_ms: created, members: Vec::new(), upstream_modern: modern,
                };
                prop_assert_eq!(s.open(&s.seal(&t)).unwrap(), t);
            }
        }
    }
}
