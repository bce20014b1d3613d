//! Denials and proxy errors: one stable JSON-RPC code and reason per case, with the HTTP status.
//! `Reason` is matched exhaustively: a new reason forces a code, a status and a name.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::mcp::jsonrpc;

/// Why joch answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No MCPServer of that name.
    ServerNotRegistered,
    /// The server is quarantined.
    ServerQuarantined,
    /// The upstream's version differs from the pinned one.
    VersionPinMismatch,
    /// stdio transport without `security.allowStdio: true`.
    StdioNotAllowed,
    /// This node has not heard from a leader within its lease.
    ControlPlaneStale,
    /// The session id is unknown, tampered, foreign or bound to another server or caller.
    SessionUnknown,
    /// A request other than initialize came without a session id.
    SessionRequired,
    /// The upstream could not be reached.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The request body is larger than the limit.
    BodyTooLarge,
    /// The Origin header is not allowed.
    OriginNotAllowed,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// The node is at its connection or concurrent-request limit.
    NodeOverloaded,
    /// No valid agent credential (and anonymous callers not allowed).
    Unauthenticated,
    /// The agent was revoked (or its identity provider removed) since its session began.
    AgentRevoked,
    /// joch could not get the credential it presents upstream (a missing secret, a key that
    /// does not open here, an OAuth token endpoint that refused).
    UpstreamCredentials,
    /// A policy rule decided DENY.
    PolicyDenied,
    /// `toolApproval: manual` and the tool is not approved.
    ToolNotApproved,
    /// The server is read-only and the tool writes.
    ServerReadOnly,
    /// The server's record does not expose that kind of capability.
    CapabilityNotExposed,
    /// A policy rule requires an operator's approval.
    ApprovalRequired,
    /// The call is held for an approval and the caller did not wait (or went away): the id.
    ApprovalPending,
    /// A policy's rate limit is used up for now.
    RateLimited,
    /// An operator denied the held call.
    ApprovalDenied,
    /// No operator decided within the rule's approval timeout.
    ApprovalTimeout,
    /// The call cannot meet its ALLOW_WITH_CONSTRAINTS bounds (an upstream host outside the
    /// allow-list, the runtime limit reached).
    ConstraintViolated,
    /// The server drifted from its baseline and its `discovery.onSchemaDrift` is `deny`.
    SchemaDrift,
    /// The server's trust score is below its `security.minTrustScore`.
    TrustScoreTooLow,
    /// A guardian hook denied the message (or answered with what joch cannot apply).
    GuardianDenied,
    /// A guardian that fails closed gave no decision in time.
    GuardianUnavailable,
}

impl Reason {
    /// The stable JSON-RPC error code: -32001..-32012 the registry, sessions, the upstream and
    /// the request; -32013..-32019 policy; -32030.. node limits; -32040.. identity and
    /// credentials; -32050.. approvals; -32060.. guardian hooks.
    pub fn code(self) -> i64 {
        match self {
            Reason::ServerNotRegistered => -32001,
            Reason::ServerQuarantined => -32002,
            Reason::VersionPinMismatch => -32003,
            Reason::StdioNotAllowed => -32004,
            Reason::ControlPlaneStale => -32005,
            Reason::SessionUnknown => -32006,
            Reason::SessionRequired => -32007,
            Reason::UpstreamUnavailable => -32008,
            Reason::UpstreamTimeout => -32009,
            Reason::BodyTooLarge => -32010,
            Reason::OriginNotAllowed => -32011,
            Reason::RequestTimeout => -32012,
            Reason::UpstreamCredentials => -32042,
            Reason::PolicyDenied => -32013,
            Reason::ToolNotApproved => -32014,
            Reason::ServerReadOnly => -32015,
            Reason::CapabilityNotExposed => -32016,
            Reason::ApprovalRequired => -32017,
            Reason::ConstraintViolated => -32019,
            Reason::RateLimited => -32018,
            Reason::ApprovalPending => -32050,
            Reason::ApprovalDenied => -32051,
            Reason::ApprovalTimeout => -32052,
            Reason::SchemaDrift => -32024,
            Reason::TrustScoreTooLow => -32025,
            Reason::GuardianDenied => -32060,
            Reason::GuardianUnavailable => -32061,
            Reason::NodeOverloaded => -32030,
            Reason::Unauthenticated => -32040,
            Reason::AgentRevoked => -32041,
        }
    }

    /// The stable reason string in `error.data.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ServerNotRegistered => "server-not-registered",
            Reason::ServerQuarantined => "server-quarantined",
            Reason::VersionPinMismatch => "version-pin-mismatch",
            Reason::StdioNotAllowed => "stdio-not-allowed",
            Reason::ControlPlaneStale => "control-plane-stale",
            Reason::SessionUnknown => "session-unknown",
            Reason::SessionRequired => "session-required",
            Reason::UpstreamUnavailable => "upstream-unavailable",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::BodyTooLarge => "request-too-large",
            Reason::OriginNotAllowed => "origin-not-allowed",
            Reason::RequestTimeout => "request-timeout",
            Reason::NodeOverloaded => "node-overloaded",
            Reason::Unauthenticated => "unauthenticated",
            Reason::AgentRevoked => "agent-revoked",
            Reason::UpstreamCredentials => "upstream-credentials",
            Reason::PolicyDenied => "policy-denied",
            Reason::ToolNotApproved => "tool-not-approved",
            Reason::ServerReadOnly => "server-read-only",
            Reason::CapabilityNotExposed => "capability-not-exposed",
            Reason::ApprovalRequired => "approval-required",
            Reason::ConstraintViolated => "constraint-violated",
            Reason::RateLimited => "rate-limited",
            Reason::ApprovalPending => "approval-pending",
            Reason::ApprovalDenied => "approval-denied",
            Reason::ApprovalTimeout => "approval-timeout",
            Reason::SchemaDrift => "schema-drift",
            Reason::TrustScoreTooLow => "trust-score-too-low",
            Reason::GuardianDenied => "guardian-denied",
            Reason::GuardianUnavailable => "guardian-unavailable",
        }
    }

    /// The HTTP status the answer carries.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::ServerNotRegistered => StatusCode::NOT_FOUND,
            Reason::ServerQuarantined => StatusCode::FORBIDDEN,
            Reason::VersionPinMismatch => StatusCode::FORBIDDEN,
            Reason::StdioNotAllowed => StatusCode::FORBIDDEN,
            Reason::ControlPlaneStale => StatusCode::SERVICE_UNAVAILABLE,
            Reason::SessionUnknown => StatusCode::NOT_FOUND,
            Reason::SessionRequired => StatusCode::BAD_REQUEST,
            Reason::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::OriginNotAllowed => StatusCode::FORBIDDEN,
            Reason::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::NodeOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Unauthenticated | Reason::AgentRevoked => StatusCode::UNAUTHORIZED,
            Reason::UpstreamCredentials => StatusCode::BAD_GATEWAY,
            Reason::PolicyDenied
            | Reason::ToolNotApproved
            | Reason::ServerReadOnly
            | Reason::CapabilityNotExposed
            | Reason::ApprovalRequired
            | Reason::ConstraintViolated
            | Reason::ApprovalPending
            | Reason::ApprovalDenied => StatusCode::FORBIDDEN,
            Reason::ApprovalTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::SchemaDrift | Reason::TrustScoreTooLow | Reason::GuardianDenied => StatusCode::FORBIDDEN,
            Reason::GuardianUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A decision not to forward, with everything the caller and the audit need.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Why.
    pub reason: Reason,
    /// The server asked for.
    pub server: Box<str>,
    /// The node that decided.
    pub node: u64,
    /// The rule or check that decided.
    pub rule: Box<str>,
    /// Human-readable message.
    pub message: String,
    /// The JSON-RPC id it answers (null if none).
    pub id: Value,
    /// What few denials carry (kept out of line: a denial travels in every `Result` of the
    /// request path).
    pub extra: Option<Box<Extra>>,
}

/// The rarer parts of a denial.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// A `WWW-Authenticate` challenge to send with it (401).
    pub challenge: Option<String>,
    /// The policy decision that refused: `{policy, rule, decision, reason}` in `error.data.policy`.
    pub policy: Option<Value>,
    /// Seconds after which the call may pass (`Retry-After`, and `error.data.retryAfter`).
    pub retry_after: Option<u64>,
    /// The execution id (`error.data.execId`): what `joch trace` starts from.
    pub exec: Option<Box<str>>,
}

impl Denial {
    /// A denial.
    pub fn new(reason: Reason, server: &str, node: u64, rule: &str, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            server: server.into(),
            node,
            rule: rule.into(),
            message: message.into(),
            id: Value::Null,
            extra: None,
        }
    }

    /// Answers request `id`.
    pub fn with_id(mut self, id: Value) -> Denial {
        self.id = id;
        self
    }

    /// Sent with a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: String) -> Denial {
        self.extra.get_or_insert_with(Default::default).challenge = Some(challenge);
        self
    }

    /// Says when to try again.
    pub fn with_retry_after(mut self, secs: u64) -> Denial {
        self.extra.get_or_insert_with(Default::default).retry_after = Some(secs);
        self
    }

    /// Names the execution it ends.
    pub fn with_exec(mut self, exec: &str) -> Denial {
        self.extra.get_or_insert_with(Default::default).exec = Some(exec.into());
        self
    }

    /// Names the policy decision that refused.
    pub fn with_policy(mut self, policy: Value) -> Denial {
        self.extra.get_or_insert_with(Default::default).policy = Some(policy);
        self
    }

    /// The JSON-RPC error body.
    pub fn body(&self) -> Value {
        let mut data =
            json!({"reason": self.reason.as_str(), "server": self.server, "node": self.node, "rule": self.rule});
        if let Some(p) = self.extra.as_ref().and_then(|e| e.policy.as_ref()) {
            data["policy"] = p.clone();
        }
        if let Some(s) = self.extra.as_ref().and_then(|e| e.retry_after) {
            data["retryAfter"] = json!(s);
        }
        if let Some(e) = self.extra.as_ref().and_then(|e| e.exec.as_deref()) {
            data["execId"] = json!(e);
        }
        jsonrpc::error(self.id.clone(), self.reason.code(), &self.message, Some(data))
    }
}

impl IntoResponse for Denial {
    fn into_response(self) -> Response {
        let mut r =
            (self.reason.status(), [("content-type", "application/json")], self.body().to_string()).into_response();
        if matches!(self.reason, Reason::NodeOverloaded | Reason::ControlPlaneStale) {
            // Worth retrying (here, or on another node behind the balancer) in a moment.
            r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        if let Some(s) = self.extra.as_ref().and_then(|e| e.retry_after) {
            r.headers_mut().insert("retry-after", axum::http::HeaderValue::from(s));
        }
        if let Some(v) = self
            .extra
            .as_ref()
            .and_then(|e| e.challenge.as_deref())
            .and_then(|c| axum::http::HeaderValue::from_str(c).ok())
        {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }
}

/// A protocol-level error (not a denial): parse errors, bad requests, unsupported versions.
pub fn protocol_error(status: StatusCode, id: Value, code: i64, message: &str, data: Option<Value>) -> Response {
    (status, [("content-type", "application/json")], jsonrpc::error(id, code, message, data).to_string())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_range() {
        let all = [
            Reason::ServerNotRegistered,
            Reason::ServerQuarantined,
            Reason::VersionPinMismatch,
            Reason::StdioNotAllowed,
            Reason::ControlPlaneStale,
            Reason::SessionUnknown,
            Reason::SessionRequired,
            Reason::UpstreamUnavailable,
            Reason::UpstreamTimeout,
            Reason::BodyTooLarge,
            Reason::OriginNotAllowed,
            Reason::RequestTimeout,
            Reason::NodeOverloaded,
            Reason::Unauthenticated,
            Reason::AgentRevoked,
            Reason::UpstreamCredentials,
            Reason::PolicyDenied,
            Reason::ToolNotApproved,
            Reason::ServerReadOnly,
            Reason::CapabilityNotExposed,
            Reason::ApprovalRequired,
            Reason::ConstraintViolated,
            Reason::ApprovalPending,
            Reason::ApprovalDenied,
            Reason::ApprovalTimeout,
            Reason::RateLimited,
            Reason::GuardianDenied,
            Reason::GuardianUnavailable,
            Reason::SchemaDrift,
            Reason::TrustScoreTooLow,
        ];
        let mut codes: Vec<i64> = all.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(codes
            .iter()
            .all(|c| (-32019..=-32001).contains(c) || (-32025..=-32024).contains(c) || (-32069..=-32030).contains(c)));
        let d = Denial::new(Reason::ServerQuarantined, "s", 2, "registry.quarantine", "quarantined").with_id(json!(5));
        assert_eq!(
            d.body(),
            json!({"jsonrpc":"2.0","id":5,"error":{"code":-32002,"message":"quarantined",
                "data":{"reason":"server-quarantined","server":"s","node":2,"rule":"registry.quarantine"}}})
        );
    }
}
