//! Upstream secrets, sealed. A node's key-encryption key (KEK) is a file of 32 random bytes
//! (base64), the same on every node and never in the replicated store: the node that receives a
//! secret seals each value (ChaCha20-Poly1305, a fresh nonce, the secret's name and key as
//! associated data) before proposing it, so the Raft log, the state and every snapshot hold only
//! ciphertext. A node opens values when it needs them (upstream credentials, a stdio child's
//! environment). Rotation: give every node the new key as `secrets.kek_file` and the old one in
//! `secrets.previous_kek_files`, then `joch secret rotate-kek` re-seals everything under the new
//! one.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use joch_raft_store::model::access::{Access, Sealed};
use joch_raft_store::model::resource::SecretRef;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    /// This node has no key-encryption key configured.
    #[error("this node has no key-encryption key (secrets.kek_file)")]
    NoKey,
    /// The value was sealed under a key this node does not have.
    #[error("sealed under key-encryption key {0}, which this node does not have (secrets.previous_kek_files?)")]
    UnknownKey(String),
    /// The ciphertext does not open (tampered, or another key with the same id).
    #[error("the sealed value does not open")]
    Corrupt,
    /// A key file is not 32 bytes of base64.
    #[error("{path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a secret's value is not available on this node.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretError {
    /// No secret of that name.
    #[error("secret {0:?} does not exist (joch secret set {0} ...)")]
    Missing(String),
    /// The secret has no such key.
    #[error("secret {secret:?} has no key {key:?} (its keys: {has})")]
    NoKey {
        /// The secret.
        secret: String,
        /// The key asked for.
        key: String,
        /// The keys it has.
        has: String,
    },
    /// The value does not open here.
    #[error("secret {secret:?}: {err}")]
    Sealed {
        /// The secret.
        secret: String,
        /// Why.
        err: SealError,
    },
    /// The value is not UTF-8 text (headers and environment variables need text).
    #[error("secret {secret:?} key {key:?} is not UTF-8 text")]
    NotText {
        /// The secret.
        secret: String,
        /// The key.
        key: String,
    },
}

/// The key-encryption keys of this node: the current one seals, every one opens.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<(String, ChaCha20Poly1305)>,
}

/// The fingerprint of a key: public, names it in sealed values.
pub fn key_id(key: &[u8; 32]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"joch-kek-id-v1");
    ctx.update(key);
    ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Keyring {
    /// Loads the key files, the current one first.
    pub fn load(files: &[impl AsRef<Path>]) -> Result<Keyring, SealError> {
        let mut keys = Vec::new();
        for f in files {
            let path = f.as_ref().display().to_string();
            let err = |message: String| SealError::KeyFile { path: path.clone(), message };
            let text = std::fs::read_to_string(f).map_err(|e| err(e.to_string()))?;
            let raw = STANDARD.decode(text.trim()).map_err(|e| err(format!("not base64: {e}")))?;
            let key: [u8; 32] = raw.try_into().map_err(|_| err("must be 32 bytes (base64)".into()))?;
            keys.push((key_id(&key), ChaCha20Poly1305::new(Key::from_slice(&key))));
        }
        Ok(Keyring { keys })
    }

    /// A new key file's content: 32 random bytes, base64.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        STANDARD.encode(key)
    }

    /// The current key's id.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }

    fn aad(secret: &str, key: &str) -> Vec<u8> {
        format!("joch-secret-v1\0{secret}\0{key}").into_bytes()
    }

    /// Seals `value` of `secret`'s `key` under the current key.
    pub fn seal(&self, secret: &str, key: &str, value: &[u8]) -> Result<Sealed, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError::NoKey)?;
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let aad = Self::aad(secret, key);
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .map_err(|_| SealError::Corrupt)?;
        Ok(Sealed { kek_id: id.clone(), nonce, ciphertext })
    }

    /// Opens a sealed value of `secret`'s `key`.
    pub fn open(&self, secret: &str, key: &str, s: &Sealed) -> Result<Vec<u8>, SealError> {
        if self.keys.is_empty() {
            return Err(SealError::NoKey);
        }
        let (_, cipher) =
            self.keys.iter().find(|(id, _)| *id == s.kek_id).ok_or_else(|| SealError::UnknownKey(s.kek_id.clone()))?;
        let aad = Self::aad(secret, key);
        cipher
            .decrypt(Nonce::from_slice(&s.nonce), Payload { msg: &s.ciphertext, aad: &aad })
            .map_err(|_| SealError::Corrupt)
    }
}

impl Keyring {
    /// The value a reference names (its key, or `default_key`), opened, with the secret's
    /// version (so what was built from it can tell when it changed).
    pub fn value(&self, access: &Access, r: &SecretRef, default_key: &str) -> Result<(String, u64), SecretError> {
        let secret = access.secrets.get(&r.name).ok_or_else(|| SecretError::Missing(r.name.clone()))?;
        let key = r.key_or(default_key);
        let sealed = secret.data.get(key).ok_or_else(|| SecretError::NoKey {
            secret: r.name.clone(),
            key: key.to_string(),
            has: secret.data.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let raw = self.open(&r.name, key, sealed).map_err(|err| SecretError::Sealed { secret: r.name.clone(), err })?;
        let text = String::from_utf8(raw)
            .map_err(|_| SecretError::NotText { secret: r.name.clone(), key: key.to_string() })?;
        Ok((text, secret.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_tamper() {
        let d = tempfile::TempDir::new().unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        std::fs::write(&old, Keyring::generate()).unwrap();
        std::fs::write(&new, Keyring::generate()).unwrap();
        let before = Keyring::load(&[&old]).unwrap();
        let s = before.seal("gh", "token", b"s3cr3t").unwrap();
        assert!(!s.ciphertext.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(before.open("gh", "token", &s).unwrap(), b"s3cr3t");
        assert_eq!(before.open("gh", "other", &s), Err(SealError::Corrupt), "bound to its secret and key");
        let during = Keyring::load(&[&new, &old]).unwrap();
        assert_eq!(during.open("gh", "token", &s).unwrap(), b"s3cr3t", "the old key still opens");
        let resealed = during.seal("gh", "token", b"s3cr3t").unwrap();
        assert_ne!(resealed.kek_id, s.kek_id);
        let after = Keyring::load(&[&new]).unwrap();
        assert!(matches!(after.open("gh", "token", &s), Err(SealError::UnknownKey(_))));
        assert_eq!(after.open("gh", "token", &resealed).unwrap(), b"s3cr3t");
        std::fs::write(&old, "short").unwrap();
        assert!(matches!(Keyring::load(&[&old]), Err(SealError::KeyFile { .. })));
    }
}
