//! The one place that turns errors into gRPC statuses. Exhaustive: a new error variant forces a
//! decision here.

use joch_raft_store::ApplyError;
use tonic::Status;

use crate::cluster::message::Refusal;
use crate::cluster::ClusterError;

/// Maps a cluster error to a status, naming this node where the node matters.
pub fn to_status(node: u64, e: ClusterError) -> Status {
    let msg = e.to_string();
    let on_node = |m: &str| format!("node {node}: {m}");
    match e {
        ClusterError::NotInitialized => Status::failed_precondition(on_node(&msg)),
        ClusterError::AlreadyInitialized => Status::already_exists(on_node(&msg)),
        ClusterError::NoLeader { .. } => Status::unavailable(on_node(&msg)),
        ClusterError::Forward { .. } => Status::unavailable(on_node(&msg)),
        ClusterError::ReadTimeout { .. } => Status::unavailable(on_node(&msg)),
        ClusterError::Membership(_) => Status::failed_precondition(on_node(&msg)),
        ClusterError::Fatal(_) => Status::internal(on_node(&msg)),
        ClusterError::Rejected(a) => match a {
            ApplyError::UnknownServer { .. } | ApplyError::UnknownPolicy { .. } => Status::not_found(msg),
            ApplyError::ServerExists { .. } => Status::already_exists(msg),
            ApplyError::Invalid(_) => Status::invalid_argument(msg),
            ApplyError::AlreadyAtVersion { .. } | ApplyError::PolicyInUse { .. } | ApplyError::Approval { .. } => {
                Status::failed_precondition(msg)
            }
            ApplyError::Access { exists: true, .. } => Status::already_exists(msg),
            ApplyError::Access { exists: false, .. } => Status::not_found(msg),
        },
        ClusterError::Refused(r) => match r {
            Refusal::NotLeader { .. } | Refusal::NoQuorum { .. } | Refusal::NotVouching(_) | Refusal::NotMember(_) => {
                Status::unavailable(on_node(&msg))
            }
            Refusal::Membership(_) => Status::failed_precondition(on_node(&msg)),
            Refusal::Fatal(_) => Status::internal(on_node(&msg)),
        },
    }
}

/// Label for the admin request metric.
pub fn outcome(r: &Result<impl Sized, Status>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::NotFound => "not_found",
            tonic::Code::AlreadyExists => "already_exists",
            tonic::Code::FailedPrecondition => "failed_precondition",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Internal => "internal",
            _ => "error",
        },
    }
}
