//! MCP protocol versions, by era.

/// Legacy (session) era versions joch proxies, newest first.
pub const LEGACY: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// Modern (stateless) era versions.
pub const MODERN: [&str; 1] = ["2026-07-28"];

/// The version assumed when a legacy client sends no `MCP-Protocol-Version` header.
pub const LEGACY_DEFAULT: &str = "2025-03-26";

/// Whether JSON-RPC batches are allowed at this version (only 2025-03-26 had them).
pub fn batches_allowed(version: &str) -> bool {
    version == "2025-03-26"
}

/// A known legacy version.
pub fn is_legacy(v: &str) -> bool {
    LEGACY.contains(&v)
}

/// A known modern version.
pub fn is_modern(v: &str) -> bool {
    MODERN.contains(&v)
}
