//! Identity: who an operator is on the admin API (`admin.rs`: tokens with a role), who an agent is
//! on the data plane (`agent.rs`: a joch token, an IdP's JWT, or anonymous where a node allows
//! it), and the tokens themselves (`token.rs`). Everything is decided from the node's in-memory
//! registry snapshot, where tokens exist only as hashes.

pub mod admin;
pub mod agent;
pub mod jwt;
pub mod token;
