//! Resources as operators write them: `kind: MCPServer` and `kind: Policy` manifests
//! (apiVersion `joch.dev/v1alpha1`), parsed with errors that name the file, line and field.

pub mod manifest;
