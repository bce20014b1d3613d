//! Who may do what: operators' admin tokens (with a role), agents (a token each, and labels),
//! identity providers whose JWTs name agents, upstream secrets (sealed: only ciphertext is ever in
//! the log, the state or a snapshot), and the keys that seal session ids.
//!
//! Tokens are stored as SHA-256 hashes: they are random 256-bit values, so a plain hash is as
//! good as a slow one and costs nothing per request. Nothing here holds a token or a secret in
//! the clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::Stamp;

/// An operator's role on the admin API. Each includes the one before.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Quarantine, pin, apply, approvals.
    Operator,
    /// Membership, tokens, agents, identity providers, secrets, stdio servers.
    Admin,
}

impl Role {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An operator's token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdminToken {
    /// Its name: the actor recorded for what it does.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
    /// Who created it, when.
    pub created: Stamp,
}

/// An agent with a joch token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Agent {
    /// Its name (policies match it).
    pub name: String,
    /// Its labels (policies match them).
    pub labels: BTreeMap<String, String>,
    /// SHA-256 of its token.
    pub token_sha256: [u8; 32],
    /// Who created it, when.
    pub created: Stamp,
}

/// An identity provider whose JWTs name agents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Idp {
    /// Its name.
    pub name: String,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Its public keys (a JWKS document, JSON).
    pub jwks_json: String,
    /// The claim that is the agent's name (`sub` by default).
    pub name_claim: String,
    /// Labels taken from claims: label -> claim.
    pub label_claims: BTreeMap<String, String>,
    /// Who set it, when.
    pub updated: Stamp,
}

/// One sealed value: ChaCha20-Poly1305 under a key-encryption key that is not in the store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Sealed {
    /// Which KEK sealed it (a fingerprint of the key, never the key).
    pub kek_id: String,
    /// The nonce.
    pub nonce: [u8; 12],
    /// The ciphertext (with its tag).
    pub ciphertext: Vec<u8>,
}

/// A secret: named values, sealed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Secret {
    /// Its name.
    pub name: String,
    /// Key -> sealed value.
    pub data: BTreeMap<String, Sealed>,
    /// Bumped on every change.
    pub version: u64,
    /// Who set it last, when.
    pub updated: Stamp,
}

/// A key that seals session ids.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionKey {
    /// Its id (in every id it seals).
    pub id: u32,
    /// The key.
    pub key: [u8; 32],
    /// When it was created (Unix ms, from the command).
    pub created_ms: u64,
}

/// Everything about access, replicated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Access {
    /// Operators' tokens by name.
    pub admin_tokens: BTreeMap<String, AdminToken>,
    /// Agents by name.
    pub agents: BTreeMap<String, Agent>,
    /// Agent token hash -> agent name (the data plane's lookup).
    pub agent_tokens: BTreeMap<[u8; 32], String>,
    /// Identity providers by name.
    pub idps: BTreeMap<String, Idp>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Secret>,
    /// Session-sealing keys, oldest first; the last one seals, every one opens.
    pub session_keys: Vec<SessionKey>,
}

impl Access {
    /// The operator a token hash belongs to.
    pub fn admin_by_hash(&self, hash: &[u8; 32]) -> Option<&AdminToken> {
        self.admin_tokens.values().find(|t| ct_eq(&t.token_sha256, hash))
    }

    /// The agent a token hash belongs to (an index lookup: tokens are random, so the time it
    /// takes tells nothing about a token).
    pub fn agent_by_hash(&self, hash: &[u8; 32]) -> Option<&Agent> {
        self.agents.get(self.agent_tokens.get(hash)?)
    }

    /// The key that seals new session ids (the newest).
    pub fn sealing_key(&self) -> Option<&SessionKey> {
        self.session_keys.last()
    }
}

/// Constant-time equality of two hashes.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
