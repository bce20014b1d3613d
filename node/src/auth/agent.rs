//! Agents on the data plane. A request carries `Authorization: Bearer ...`: a joch agent token
//! (`joch agent create`), or a JWT from a configured identity provider (`joch idp add`). Without
//! one, a node answers 401 (with the protected-resource metadata the MCP authorization spec asks
//! for), unless it is configured to allow anonymous callers: then the caller is the agent
//! `anonymous`, which policies can match. An agent token is never forwarded upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use joch_raft_store::model::access::Access;

use super::jwt::Verifier;
use super::token;

/// The name of anonymous callers (where a node allows them).
pub const ANONYMOUS: &str = "anonymous";
/// The name joch discovers servers under.
const DISCOVERY: &str = "joch-discovery";

/// Who calls, as the data plane knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The agent's name (sessions are bound to it; policies match it).
    pub name: String,
    /// How it proved it.
    pub source: Source,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A joch agent token (its hash: a revoked agent recreated under the same name gets a new
    /// token, and the old one's sessions do not come back).
    Token([u8; 32]),
    /// A JWT of this identity provider.
    Idp(String),
    /// Nothing: the node allows anonymous callers.
    Anonymous,
    /// Not authenticated (yet): a request refused before it was (a limit). Never admitted.
    Unauthenticated,
}

impl Caller {
    /// The anonymous caller.
    pub fn anonymous() -> Arc<Caller> {
        Arc::new(Caller { name: ANONYMOUS.into(), source: Source::Anonymous, labels: BTreeMap::new() })
    }

    /// joch itself, discovering a server (`joch mcp discover`): no agent can be it (an agent of
    /// that name has a token or an IdP as its source).
    pub fn discovery() -> Arc<Caller> {
        Arc::new(Caller { name: DISCOVERY.into(), source: Source::Anonymous, labels: BTreeMap::new() })
    }

    /// Whether this is joch discovering a server.
    pub fn is_discovery(&self) -> bool {
        self.source == Source::Anonymous && self.name == DISCOVERY
    }

    /// A request not authenticated (yet).
    pub fn unauthenticated() -> Arc<Caller> {
        Arc::new(Caller { name: "-".into(), source: Source::Unauthenticated, labels: BTreeMap::new() })
    }

    /// Who the caller is across credentials, for binding sessions: an IdP's subject never
    /// shares a session with a token agent (or another IdP's subject) of the same name.
    pub fn principal(&self) -> String {
        match &self.source {
            Source::Idp(idp) => format!("idp:{idp}:{}", self.name),
            _ => self.name.clone(),
        }
    }

    /// Whether this caller still stands in `access` (a revoked agent, or a removed identity
    /// provider, does not: its sessions and streams are cut).
    pub fn stands(&self, access: &Access) -> bool {
        match &self.source {
            Source::Token(hash) => access.agent_tokens.contains_key(hash),
            Source::Idp(idp) => access.idps.contains_key(idp),
            Source::Anonymous => true,
            Source::Unauthenticated => false,
        }
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unauthenticated {
    /// No credential (and anonymous callers are not allowed).
    #[error(
        "no agent credential: send Authorization: Bearer <token> (a joch agent token or your identity provider's JWT)"
    )]
    Missing,
    /// A credential that does not hold.
    #[error("the agent credential is not valid: {0}")]
    Invalid(String),
}

/// Decides who calls.
pub struct AgentAuth {
    allow_anonymous: bool,
    jwt: Verifier,
}

impl AgentAuth {
    /// With `allow_anonymous`, a request without a credential is the agent `anonymous`.
    pub fn new(allow_anonymous: bool) -> AgentAuth {
        AgentAuth { allow_anonymous, jwt: Verifier::default() }
    }

    /// Whether anonymous callers are allowed here.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// The caller of a request with this `authorization` header.
    pub fn authenticate(&self, access: &Access, header: Option<&str>) -> Result<Arc<Caller>, Unauthenticated> {
        let Some(header) = header else {
            return if self.allow_anonymous { Ok(Caller::anonymous()) } else { Err(Unauthenticated::Missing) };
        };
        let Some(t) = token::bearer(header) else {
            return Err(Unauthenticated::Invalid("not a bearer credential".into()));
        };
        if t.starts_with(token::AGENT_PREFIX) {
            let hash = token::hash(t);
            return match access.agent_by_hash(&hash) {
                Some(a) => {
                    Ok(Arc::new(Caller { name: a.name.clone(), source: Source::Token(hash), labels: a.labels.clone() }))
                }
                None => Err(Unauthenticated::Invalid("unknown or revoked agent token".into())),
            };
        }
        if t.starts_with(token::ADMIN_PREFIX) {
            return Err(Unauthenticated::Invalid("an operator's admin token is not an agent credential".into()));
        }
        match self.jwt.verify(t, access.idps.values()) {
            Ok(a) => Ok(Arc::new(Caller { name: a.name, source: Source::Idp(a.idp), labels: a.labels })),
            Err(e) => Err(Unauthenticated::Invalid(e.to_string())),
        }
    }
}
