//! Tokens: 256 random bits, printed once as `joch_adm_...` (operators) or `joch_agt_...`
//! (agents); the store keeps their SHA-256 only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Prefix of operators' tokens.
pub const ADMIN_PREFIX: &str = "joch_adm_";
/// Prefix of agents' tokens.
pub const AGENT_PREFIX: &str = "joch_agt_";

/// A new token with this prefix.
pub fn generate(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The hash the store keeps.
pub fn hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (generate(AGENT_PREFIX), generate(AGENT_PREFIX));
        assert!(a.starts_with("joch_agt_") && a.len() == 9 + 43);
        assert_ne!(a, b);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
