//! Operators on the admin API. Every call carries `Authorization: Bearer TOKEN`: a replicated
//! admin token (with its role) or this node's bootstrap token (role admin, from the node's config:
//! how a cluster is initialised and nodes are joined before any token is replicated). Each method
//! needs a role; [`AuthLayer`] answers `unauthenticated` or `permission_denied` (naming the role
//! needed) before any handler runs, and hands the handler the [`Operator`] in the request's
//! extensions. The actor recorded for a change is the operator's name: a caller cannot choose it.
//!
//! Client certificates are not accepted for operators: a token can be revoked fleet-wide in one
//! consensus round, a certificate only by waiting for it to expire.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use joch_raft_store::model::access::Role;
use joch_raft_store::RegistryHandle;
use tonic::Status;

use super::token;

/// The authenticated caller of an admin method.
#[derive(Clone, Debug, PartialEq)]
pub struct Operator {
    /// The token's name: the actor recorded for what it does.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Name of the node-local bootstrap token's operator.
pub const BOOTSTRAP: &str = "bootstrap";

/// Decides who calls.
pub struct AdminAuth {
    node: u64,
    registry: RegistryHandle,
    bootstrap: Option<[u8; 32]>,
    insecure: bool,
}

impl AdminAuth {
    /// An authenticator over the replicated tokens and this node's bootstrap token (its hash);
    /// `insecure`: no authentication at all (`joch serve --insecure-dev`).
    pub fn new(node: u64, registry: RegistryHandle, bootstrap: Option<[u8; 32]>, insecure: bool) -> AdminAuth {
        AdminAuth { node, registry, bootstrap, insecure }
    }

    /// Who a call comes from, by its `authorization` header.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Operator, Status> {
        if self.insecure {
            return Ok(Operator { name: "insecure-dev".into(), role: Role::Admin });
        }
        let Some(t) = header.and_then(token::bearer) else {
            return Err(Status::unauthenticated(format!(
                "node {}: no admin token (set JOCH_TOKEN, or run `joch login`)",
                self.node
            )));
        };
        let h = token::hash(t);
        if self.bootstrap.is_some_and(|b| b == h) {
            return Ok(Operator { name: BOOTSTRAP.into(), role: Role::Admin });
        }
        let state = self.registry.load();
        match state.registry.access.admin_by_hash(&h) {
            Some(tok) => Ok(Operator { name: tok.name.clone(), role: tok.role }),
            None => Err(Status::unauthenticated(format!(
                "node {}: the admin token is not valid here (unknown or revoked)",
                self.node
            ))),
        }
    }

    /// Checks `op` may call `path` (`/joch.admin.v1.Service/Method`).
    pub fn authorize(&self, op: &Operator, path: &str) -> Result<(), Status> {
        let needed = required_role(path);
        if op.role >= needed {
            return Ok(());
        }
        Err(denied(op, needed, method_name(path)))
    }
}

/// The permission-denied status for `op` calling `what`, which needs `needed`.
pub fn denied(op: &Operator, needed: Role, what: &str) -> Status {
    Status::permission_denied(format!(
        "{what} needs the {} role; token {:?} has {}",
        needed.as_str(),
        op.name,
        op.role.as_str()
    ))
}

fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The role each admin method needs; an unknown method needs admin.
pub fn required_role(path: &str) -> Role {
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some((s, m)) => (s.rsplit('.').next().unwrap_or(s), m),
        None => return Role::Admin,
    };
    match (service, method) {
        (
            "Registry",
            "GetServer" | "ListServers" | "GetPolicy" | "ListPolicies" | "ExplainPolicy" | "ListApprovals"
            | "ListVirtualServers" | "History" | "GetRetention" | "VerifyAudit" | "Gates" | "GetTrust" | "ListGuardFeeds",
        ) => Role::Viewer,
        (
            "Registry",
            "Apply"
            | "AddServer"
            | "DeleteServer"
            | "Pin"
            | "Upgrade"
            | "Quarantine"
            | "Discover"
            | "Unquarantine"
            | "ApproveTool"
            | "SetServerPolicy"
            | "DeletePolicy"
            | "DecideApproval"
            | "DeleteVirtualServer"
            // Audit records name agents and may hold arguments: more than a viewer sees.
            | "QueryAudit"
            | "Agbom"
            // Incidents quote what servers sent; operators handle them.
            | "ListIncidents"
            | "AckIncident",
        ) => Role::Operator,
        ("Cluster", "NodeInfo" | "Status") => Role::Viewer,
        ("Access", "WhoAmI" | "ListAgents" | "ListIdps") => Role::Viewer,
        _ => Role::Admin,
    }
}

/// The tower layer in front of the admin services.
#[derive(Clone)]
pub struct AuthLayer(Arc<AdminAuth>);

impl AuthLayer {
    /// A layer deciding with `auth`.
    pub fn new(auth: AdminAuth) -> AuthLayer {
        AuthLayer(Arc::new(auth))
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.0.clone() }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<AdminAuth>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let path = req.uri().path().to_string();
        let decided = self.auth.authenticate(header).and_then(|op| self.auth.authorize(&op, &path).map(|()| op));
        match decided {
            Ok(op) => {
                req.extensions_mut().insert(op);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                metrics::counter!("joch_admin_refused_total", "code" => format!("{:?}", status.code())).increment(1);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_needs_its_role() {
        assert_eq!(required_role("/joch.admin.v1.Registry/ListServers"), Role::Viewer);
        assert_eq!(required_role("/joch.admin.v1.Registry/Quarantine"), Role::Operator);
        assert_eq!(required_role("/joch.admin.v1.Registry/SetRetention"), Role::Admin);
        assert_eq!(required_role("/joch.admin.v1.Cluster/AddMember"), Role::Admin);
        assert_eq!(required_role("/joch.admin.v1.Access/CreateAgent"), Role::Admin);
        assert_eq!(required_role("/joch.admin.v1.Nope/Whatever"), Role::Admin, "unknown: fail closed");
        assert_eq!(required_role("garbage"), Role::Admin);
    }

    #[test]
    fn bootstrap_and_refusals() {
        let boot = token::generate(token::ADMIN_PREFIX);
        let auth = AdminAuth::new(1, RegistryHandle::default(), Some(token::hash(&boot)), false);
        let op = auth.authenticate(Some(&format!("Bearer {boot}"))).unwrap();
        assert_eq!(op, Operator { name: BOOTSTRAP.into(), role: Role::Admin });
        assert_eq!(auth.authenticate(None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.authenticate(Some("Bearer joch_adm_nope")).unwrap_err().code(), tonic::Code::Unauthenticated);
        let viewer = Operator { name: "v".into(), role: Role::Viewer };
        let e = auth.authorize(&viewer, "/joch.admin.v1.Registry/Quarantine").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("Quarantine needs the operator role; token \"v\" has viewer"), "{}", e.message());
    }
}
