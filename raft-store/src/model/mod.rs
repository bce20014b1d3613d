//! The replicated data model: resources, commands, the registry and its deterministic apply.

pub mod access;
pub mod approval;
pub mod command;
pub mod discovery;
pub mod guard;
pub mod incident;
pub mod once;
pub mod registry;
pub mod resource;
pub mod trust;
pub mod validate;
