//! Protocol buffers of the joch admin API and their generated tonic/prost code. Nothing else.

/// `joch.admin.v1`: the registry and cluster services every node serves.
pub mod admin {
    tonic::include_proto!("joch.admin.v1");
}
