//! Agents that present a JWT from the company's identity provider. The token's `iss` picks the
//! provider; its signature must verify with one of the provider's replicated keys (JWKS), with an
//! asymmetric algorithm (RS*, PS*, ES*, EdDSA: never `none`, never HMAC, so a public key cannot
//! be turned into a shared secret); `iss`, `aud`, `exp` and `nbf` are checked (30 s of leeway).
//! The agent's name is the provider's name claim (`sub` by default); labels come from the claims
//! the provider maps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use joch_raft_store::model::access::Idp;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::Value;

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT at all.
    #[error("not a JWT")]
    Malformed,
    /// No configured identity provider has this issuer.
    #[error("no identity provider has issuer {0:?}")]
    UnknownIssuer(String),
    /// The algorithm is not an asymmetric one.
    #[error("algorithm {0} is not accepted (asymmetric algorithms only)")]
    Algorithm(String),
    /// No key of the provider matches.
    #[error("no key of identity provider {idp:?} matches (kid {kid:?})")]
    NoKey {
        /// The provider.
        idp: String,
        /// The token's key id.
        kid: Option<String>,
    },
    /// The signature or a claim check failed.
    #[error("{0}")]
    Invalid(String),
    /// The name claim is missing or not a string.
    #[error("the token has no {0:?} claim to name the agent")]
    NoName(String),
}

/// An agent named by a JWT.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAgent {
    /// The identity provider.
    pub idp: String,
    /// The agent's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// The algorithms accepted.
fn asymmetric(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    )
}

type Keys = Arc<Vec<(Option<String>, DecodingKey)>>;

/// Verifies JWTs; keeps each provider's parsed keys until its record changes.
#[derive(Default)]
pub struct Verifier {
    keys: Mutex<HashMap<String, (u64, Keys)>>,
}

impl Verifier {
    fn keys(&self, idp: &Idp) -> Keys {
        let mut cache = self.keys.lock();
        if let Some((index, k)) = cache.get(&idp.name) {
            if *index == idp.updated.index {
                return k.clone();
            }
        }
        let parsed: Vec<(Option<String>, DecodingKey)> = serde_json::from_str::<JwkSet>(&idp.jwks_json)
            .map(|set| {
                set.keys
                    .iter()
                    .filter_map(|k| Some((k.common.key_id.clone(), DecodingKey::from_jwk(k).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        let k: Keys = Arc::new(parsed);
        cache.insert(idp.name.clone(), (idp.updated.index, k.clone()));
        k
    }

    /// The agent a JWT names, if one of `idps` vouches for it.
    pub fn verify<'a>(&self, token: &str, idps: impl Iterator<Item = &'a Idp>) -> Result<JwtAgent, JwtError> {
        let mut parts = token.split('.');
        let part = |p: Option<&str>| -> Result<Value, JwtError> {
            URL_SAFE_NO_PAD
                .decode(p.ok_or(JwtError::Malformed)?.trim_end_matches('='))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(Value::is_object)
                .ok_or(JwtError::Malformed)
        };
        let (head, claims) = (part(parts.next())?, part(parts.next())?);
        // The algorithm is checked before anything else is believed (`none`, HMAC: refused).
        let alg = head.get("alg").and_then(Value::as_str).unwrap_or("(none given)");
        if !alg.parse::<Algorithm>().is_ok_and(asymmetric) {
            return Err(JwtError::Algorithm(alg.to_string()));
        }
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_string();
        let idp = idps.into_iter().find(|i| i.issuer == iss).ok_or(JwtError::UnknownIssuer(iss))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let keys = self.keys(idp);
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => keys.iter().filter(|(k, _)| k.as_deref() == Some(kid.as_str())).map(|(_, d)| d).collect(),
            None => keys.iter().map(|(_, d)| d).collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::NoKey { idp: idp.name.clone(), kid: header.kid.clone() });
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&idp.issuer]);
        v.set_audience(&[&idp.audience]);
        v.validate_nbf = true;
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = JwtError::Invalid("no key verified the signature".into());
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    let name = c
                        .get(&idp.name_claim)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| JwtError::NoName(idp.name_claim.clone()))?;
                    let labels = idp
                        .label_claims
                        .iter()
                        .filter_map(|(label, claim)| {
                            let v = c.get(claim)?;
                            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                            Some((label.clone(), text))
                        })
                        .collect();
                    return Ok(JwtAgent { idp: idp.name.clone(), name: name.to_string(), labels });
                }
                Err(e) => last = JwtError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}
