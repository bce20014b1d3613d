//! Trust: the replicated settings a server's trust score is computed from (trusted publishers
//! with their ed25519 keys, an operator-loaded third-party allow-list, the weights), the
//! traffic counts the leader commits, and the score itself: a pure function of the replicated
//! state, computed in the state machine, so every node holds the same score and enforces
//! `minTrustScore` alike (`docs/trust.md`).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Applied;
use super::registry::{changed, invalid, server_target, unchanged, ApplyError, Stamp, Touched};
use super::resource::McpServerSpec;
use super::validate::check_name;
use super::validate::FieldError;

/// A publisher on the trusted-publisher list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Publisher {
    /// Its name, as servers name it (`spec.security.trustedPublisher`, `spec.publisher`,
    /// `spec.signature.publisher`).
    pub name: String,
    /// Its ed25519 public keys (32 bytes each): a manifest signed with any of them verifies.
    pub keys: Vec<[u8; 32]>,
    /// Who added it, when.
    pub at: Stamp,
}

/// An operator-loaded third-party allow-list (`joch trust allowlist apply -f`): a server is on
/// it by name, by publisher or by endpoint (a URL prefix, or a stdio command).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AllowList {
    /// Where it came from (the file name, or the list's own `source:`).
    pub source: String,
    /// Server names.
    pub servers: Vec<String>,
    /// Publisher names.
    pub publishers: Vec<String>,
    /// Endpoint URL prefixes, or stdio commands.
    pub endpoints: Vec<String>,
    /// Who loaded it, when (`None`: no list is loaded; the component is not counted).
    pub at: Option<Stamp>,
}

/// How much each component counts (any non-negative numbers; the score divides by their sum).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Weights {
    /// The server's publisher is on the trusted-publisher list.
    pub publisher: f64,
    /// Its manifest carries a signature that verifies with a trusted publisher's key.
    pub signature: f64,
    /// Its tool set stayed the same over the last discoveries, and it does not drift now.
    pub stability: f64,
    /// The tool-poisoning checks found nothing in its tools.
    pub poisoning: f64,
    /// Calls to it were seldom denied or failed (last 24 hours, fleet-wide).
    pub traffic: f64,
    /// It is on the operator's third-party allow-list (counted only while one is loaded).
    pub allowlist: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { publisher: 0.25, signature: 0.2, stability: 0.15, poisoning: 0.15, traffic: 0.15, allowlist: 0.1 }
    }
}

impl Weights {
    /// Every weight finite and in [0, 100], and not all zero.
    pub fn check(&self) -> Result<(), FieldError> {
        let all = self.named();
        if let Some((name, w)) = all.iter().find(|(_, w)| !w.is_finite() || *w < 0.0 || *w > 100.0) {
            return Err(FieldError { field: format!("weights.{name}"), message: format!("{w} is not in [0, 100]") });
        }
        if all.iter().all(|(_, w)| *w == 0.0) {
            return Err(FieldError { field: "weights".into(), message: "every weight is 0".into() });
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("publisher", self.publisher),
            ("signature", self.signature),
            ("stability", self.stability),
            ("poisoning", self.poisoning),
            ("traffic", self.traffic),
            ("allowlist", self.allowlist),
        ]
    }
}

/// The cluster's trust settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TrustSettings {
    /// Trusted publishers by name.
    pub publishers: BTreeMap<String, Publisher>,
    /// The third-party allow-list.
    pub allowlist: AllowList,
    /// The weights.
    pub weights: Weights,
}

/// A change of the trust settings (one command).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum TrustChange {
    /// Adds a publisher, or replaces its keys.
    SetPublisher {
        /// Name.
        name: String,
        /// Public keys.
        keys: Vec<[u8; 32]>,
    },
    /// Removes a publisher.
    RemovePublisher {
        /// Name.
        name: String,
    },
    /// Replaces the allow-list (an empty one with `at` unset unloads it).
    AllowList(AllowList),
    /// Replaces the weights.
    Weights(Weights),
}

/// Calls to a server over the last window, fleet-wide (committed by the leader from the audit
/// trail of every node).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Calls.
    pub calls: u64,
    /// Denied.
    pub denied: u64,
    /// Failed (error answers, timeouts, cut streams).
    pub errors: u64,
    /// Over how long (milliseconds, up to when it was counted).
    pub window_ms: u64,
    /// Mean time the server took to answer the calls that reached it (milliseconds; 0: none).
    pub mean_latency_ms: u64,
}

/// One component of a score.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Component {
    /// `publisher`, `signature`, `stability`, `poisoning`, `traffic`, `allowlist`.
    pub name: String,
    /// Its weight (0: not counted).
    pub weight: f64,
    /// Its value in [0, 1].
    pub value: f64,
    /// Why.
    pub detail: String,
}

/// A server's trust score and how it came about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TrustReport {
    /// In [0, 1], to three decimals.
    pub score: f64,
    /// Each component.
    pub components: Vec<Component>,
}

impl TrustReport {
    /// `publisher 1.00 (...); signature 0.00 (...)`, for a denial.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .components
            .iter()
            .filter(|c| c.weight > 0.0)
            .map(|c| format!("{} {:.2}: {}", c.name, c.value, c.detail))
            .collect();
        parts.join("; ")
    }
}

/// Neutral value of a component without data yet.
const UNKNOWN: f64 = 0.5;
/// Fewer calls than this in the window say nothing about a server's traffic.
pub const MIN_CALLS: u64 = 20;
/// How many discoveries stability looks back over.
pub const STABILITY_WINDOW: usize = 5;

/// What the score of one server is computed from.
pub struct Inputs<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a McpServerSpec,
    /// The last discovery.
    pub discovery: Option<&'a super::discovery::Discovery>,
    /// Tool-set hashes of the last discoveries, oldest first.
    pub recent: &'a [String],
    /// Whether it drifts from its baseline now.
    pub drifting: bool,
    /// Its traffic, if counted.
    pub traffic: Option<Traffic>,
    /// Tool poisoning seen in `tools/list` answers (open incidents), beyond discovery's.
    pub reported: &'a [super::discovery::Finding],
}

/// The server's publisher: `security.trustedPublisher`, else `publisher`.
pub fn publisher_of(spec: &McpServerSpec) -> Option<&str> {
    spec.security.trusted_publisher.as_deref().or(spec.publisher.as_deref())
}

/// The score. Pure: the same inputs give the same report on every replica.
pub fn score(inp: &Inputs<'_>, settings: &TrustSettings) -> TrustReport {
    let w = settings.weights;
    let publisher = publisher_of(inp.spec);
    let mut components = Vec::with_capacity(6);
    let mut push = |name: &str, weight: f64, value: f64, detail: String| {
        components.push(Component { name: name.into(), weight, value, detail });
    };
    // Publisher.
    let (v, d) = match publisher {
        None => (0.0, "no publisher named (spec.security.trustedPublisher)".to_string()),
        Some(p) if settings.publishers.contains_key(p) => (1.0, format!("{p} is a trusted publisher")),
        Some(p) => (0.0, format!("{p} is not on the trusted-publisher list")),
    };
    push("publisher", w.publisher, v, d);
    // Signature.
    let (v, d) = signature(inp.spec, publisher, settings);
    push("signature", w.signature, v, d);
    // Stability.
    let (v, d) = if inp.drifting {
        (0.0, "drifts from its baseline now (joch mcp diff)".to_string())
    } else if inp.recent.len() < 2 {
        let n = inp.recent.len();
        (UNKNOWN, format!("{n} {} so far: not enough to tell", if n == 1 { "discovery" } else { "discoveries" }))
    } else {
        let pairs = inp.recent.len() - 1;
        let same = inp.recent.windows(2).filter(|p| p[0] == p[1]).count();
        (same as f64 / pairs as f64, format!("tool set unchanged in {same} of the last {pairs} rediscoveries"))
    };
    push("stability", w.stability, v, d);
    // Poisoning.
    let (v, d) = match (inp.discovery, inp.reported.first()) {
        (_, Some(f)) => (
            0.0,
            format!(
                "{} finding(s) in tools/list answers (open incidents), first: {} in tool {}",
                inp.reported.len(),
                f.rule,
                f.tool
            ),
        ),
        (None, None) => (UNKNOWN, "not discovered yet".to_string()),
        (Some(d), None) if d.findings.is_empty() => (1.0, format!("nothing found in {} tools", d.tools.len())),
        (Some(d), None) => {
            let f = &d.findings[0];
            (0.0, format!("{} finding(s), first: {} in tool {}", d.findings.len(), f.rule, f.tool))
        }
    };
    push("poisoning", w.poisoning, v, d);
    // Traffic.
    let (v, d) = match inp.traffic {
        Some(t) if t.calls >= MIN_CALLS => {
            let bad = (t.denied + t.errors).min(t.calls);
            let ok = 1.0 - bad as f64 / t.calls as f64;
            (
                0.8 * ok + 0.2 * latency_value(t.mean_latency_ms),
                format!(
                    "{} calls in the last {}h: {} denied, {} failed; mean upstream latency {} ms",
                    t.calls,
                    t.window_ms / 3_600_000,
                    t.denied,
                    t.errors,
                    t.mean_latency_ms
                ),
            )
        }
        Some(t) => (UNKNOWN, format!("{} calls counted: fewer than {MIN_CALLS}, not enough to tell", t.calls)),
        None => (UNKNOWN, "no traffic counted yet".to_string()),
    };
    push("traffic", w.traffic, v, d);
    // Allow-list.
    let list = &settings.allowlist;
    let (weight, v, d) = if list.at.is_none() {
        (0.0, 0.0, "no third-party allow-list loaded: not counted".to_string())
    } else if let Some(why) = on_list(inp.name, inp.spec, publisher, list) {
        (w.allowlist, 1.0, format!("on {} ({why})", list.source))
    } else {
        (w.allowlist, 0.0, format!("not on {}", list.source))
    };
    push("allowlist", weight, v, d);
    let total: f64 = components.iter().map(|c| c.weight).sum();
    let sum: f64 = components.iter().map(|c| c.weight * c.value).sum();
    let score = if total > 0.0 { (sum / total * 1000.0).round() / 1000.0 } else { 0.0 };
    TrustReport { score, components }
}

/// A mean latency as a value: 1 up to [`FAST_MS`], 0 from [`SLOW_MS`], straight between.
fn latency_value(ms: u64) -> f64 {
    if ms <= FAST_MS {
        1.0
    } else if ms >= SLOW_MS {
        0.0
    } else {
        1.0 - (ms - FAST_MS) as f64 / (SLOW_MS - FAST_MS) as f64
    }
}

/// A mean upstream latency that costs nothing.
pub const FAST_MS: u64 = 1_000;
/// A mean upstream latency that costs the whole latency part (a fifth) of the traffic component.
pub const SLOW_MS: u64 = 10_000;

fn on_list(name: &str, spec: &McpServerSpec, publisher: Option<&str>, list: &AllowList) -> Option<String> {
    if list.servers.iter().any(|s| s == name) {
        return Some(format!("server {name}"));
    }
    if let Some(p) = publisher.filter(|p| list.publishers.iter().any(|x| x == p)) {
        return Some(format!("publisher {p}"));
    }
    let endpoint = match (&spec.endpoint, &spec.stdio) {
        (Some(e), _) => e.url.as_str(),
        (_, Some(s)) => s.command.as_str(),
        _ => return None,
    };
    list.endpoints.iter().find(|e| !e.is_empty() && endpoint.starts_with(e.as_str())).map(|e| format!("endpoint {e}"))
}

fn signature(spec: &McpServerSpec, publisher: Option<&str>, settings: &TrustSettings) -> (f64, String) {
    let Some(sig) = &spec.signature else { return (0.0, "the manifest is not signed".into()) };
    let by = sig.publisher.as_str();
    if let Some(p) = publisher.filter(|p| *p != by) {
        return (0.0, format!("signed by {by}, but the server's publisher is {p}"));
    }
    let Some(trusted) = settings.publishers.get(by) else {
        return (0.0, format!("signed by {by}, which is not a trusted publisher"));
    };
    if sig.signed.is_empty() {
        return (0.0, format!("signed by {by}, but the manifest was not applied with joch apply (nothing to verify)"));
    }
    match verifying_key(&trusted.keys, &sig.signed, &sig.value) {
        Err(e) => (0.0, e),
        Ok(Some(k)) => (1.0, format!("ed25519 signature by {by} verifies (key {})", key_id(k))),
        Ok(None) => (0.0, format!("the signature does not verify with any of {by}'s {} key(s)", trusted.keys.len())),
    }
}

/// The key among `keys` with which `value` (`ed25519:BASE64`) is a signature of `document`, if
/// any; `Err` when `value` is not written so.
pub fn verifying_key<'a>(keys: &'a [[u8; 32]], document: &str, value: &str) -> Result<Option<&'a [u8; 32]>, String> {
    let raw = value
        .strip_prefix("ed25519:")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or("spec.signature.value is not ed25519:BASE64")?;
    Ok(keys.iter().find(|k| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k).verify(document.as_bytes(), &raw).is_ok()
    }))
}

/// A key's short id: the first 8 bytes of its SHA-256, hex.
pub fn key_id(key: &[u8; 32]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical JSON of a value: object keys sorted at every level, no whitespace (RFC 8785 for
/// the JSON MCP servers and manifests hold: strings, integers, and floats as serde_json writes
/// them). Tool hashes and manifest signatures are computed over it.
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// What a publisher signs of an MCPServer manifest (a document as JSON): `apiVersion`, `kind`,
/// `metadata.name` and `metadata.labels`, and `spec` without `spec.signature`, canonical. Status,
/// annotations and formatting are not signed.
pub fn signed_document(doc: &Value) -> String {
    let mut out = serde_json::Map::new();
    for k in ["apiVersion", "kind"] {
        if let Some(v) = doc.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut meta = serde_json::Map::new();
    for k in ["name", "labels"] {
        if let Some(v) = doc.pointer(&format!("/metadata/{k}")) {
            meta.insert(k.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    let mut spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(s) = spec.as_object_mut() {
        s.remove("signature");
    }
    out.insert("spec".into(), spec);
    canonical(&Value::Object(out))
}

/// The trust commands and the scores they move, applied to the registry.
impl super::registry::Registry {
    /// Recomputes a server's trust score and stores it if the report changed; says how the
    /// score moved (`trust 0.25 -> 0.65`, `trust 0.25` for the first), if it did.
    pub(super) fn retrust(&mut self, name: &str) -> (bool, Option<String>) {
        let Some(old) = self.servers.get(name) else { return (false, None) };
        let st = &old.status;
        let inputs = super::trust::Inputs {
            name,
            spec: &old.spec,
            discovery: st.discovery.as_ref(),
            recent: &st.recent,
            drifting: !st.drift.is_empty(),
            traffic: st.traffic,
            reported: self.incidents.findings(name),
        };
        let report = super::trust::score(&inputs, &self.trust);
        if st.trust.as_ref() == Some(&report) {
            return (false, None);
        }
        let moved = match &st.trust {
            Some(t) if t.score == report.score => None,
            Some(t) => Some(format!("trust {:.2} -> {:.2}", t.score, report.score)),
            None => Some(format!("trust {:.2}", report.score)),
        };
        let mut rec = (**old).clone();
        rec.status.trust = Some(report);
        self.servers.insert(name.to_string(), Arc::new(rec));
        (true, moved)
    }

    /// A change of the trust settings; every server's score is recomputed, and a server whose
    /// score moved gets a history line saying why.
    pub(super) fn apply_trust(
        &mut self,
        change: &super::trust::TrustChange,
        stamp: &Stamp,
        touched: &mut Touched,
    ) -> Result<(String, Applied), ApplyError> {
        use super::trust::{Publisher, TrustChange};
        let trust = Arc::make_mut(&mut self.trust);
        let detail = match change {
            TrustChange::SetPublisher { name, keys } => {
                check_name("name", name).map_err(invalid)?;
                if keys.is_empty() {
                    return Err(invalid(FieldError {
                        field: "keys".into(),
                        message: "a publisher needs at least one public key".into(),
                    }));
                }
                let ids: Vec<String> = keys.iter().map(super::trust::key_id).collect();
                let new = Publisher { name: name.clone(), keys: keys.clone(), at: stamp.clone() };
                match trust.publishers.insert(name.clone(), new) {
                    Some(old) if old.keys == *keys => {
                        return Ok((format!("publisher/{name}"), unchanged("publisher unchanged")))
                    }
                    Some(_) => format!("trusted publisher {name}: keys replaced ({})", ids.join(", ")),
                    None => format!("trusted publisher {name} added (keys {})", ids.join(", ")),
                }
            }
            TrustChange::RemovePublisher { name } => {
                if trust.publishers.remove(name).is_none() {
                    return Err(ApplyError::Access {
                        kind: "trusted publisher".into(),
                        name: name.clone(),
                        exists: false,
                    });
                }
                format!("trusted publisher {name} removed")
            }
            TrustChange::AllowList(list) => {
                let mut list = list.clone();
                let loaded = !(list.servers.is_empty() && list.publishers.is_empty() && list.endpoints.is_empty());
                list.at = loaded.then(|| stamp.clone());
                if !loaded && trust.allowlist.at.is_none() {
                    return Ok(("trust/allowlist".into(), unchanged("no allow-list loaded")));
                }
                let what = if loaded {
                    format!(
                        "allow-list {} loaded: {} servers, {} publishers, {} endpoints",
                        list.source,
                        list.servers.len(),
                        list.publishers.len(),
                        list.endpoints.len()
                    )
                } else {
                    "allow-list unloaded".to_string()
                };
                trust.allowlist = list;
                what
            }
            TrustChange::Weights(w) => {
                w.check().map_err(invalid)?;
                if trust.weights == *w {
                    return Ok(("trust/weights".into(), unchanged("weights unchanged")));
                }
                trust.weights = *w;
                format!(
                    "trust weights: publisher {}, signature {}, stability {}, poisoning {}, traffic {}, allowlist {}",
                    w.publisher, w.signature, w.stability, w.poisoning, w.traffic, w.allowlist
                )
            }
        };
        touched.trust = true;
        let names: Vec<String> = self.servers.keys().cloned().collect();
        for name in names {
            let (stored, moved) = self.retrust(&name);
            if stored {
                touched.servers.push(name.clone());
            }
            if let Some(moved) = moved {
                self.note(&server_target(&name), "Trust", &format!("{moved} ({detail})"), stamp, touched);
            }
        }
        Ok(("cluster/trust".into(), changed(detail)))
    }

    /// The leader's count of every server's calls over the last window; a server it does not
    /// name had none.
    pub(super) fn apply_traffic(
        &mut self,
        window_ms: u64,
        counts: &BTreeMap<String, super::trust::Traffic>,
        touched: &mut Touched,
    ) -> (String, Applied) {
        let names: Vec<String> = self.servers.keys().cloned().collect();
        let mut counted = 0;
        for name in names {
            let t = counts.get(&name).copied().unwrap_or(super::trust::Traffic { window_ms, ..Default::default() });
            let Some(old) = self.servers.get(&name) else { continue };
            if old.status.traffic == Some(t) {
                continue;
            }
            let mut rec = (**old).clone();
            rec.status.traffic = Some(t);
            self.servers.insert(name.clone(), Arc::new(rec));
            self.retrust(&name);
            touched.servers.push(name);
            counted += 1;
        }
        // Not a change operators review: no history line.
        (
            "cluster/traffic".into(),
            Applied { changed: false, summary: format!("traffic counted: {counted} servers changed") },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resource::ManifestSignature;

    fn keypair() -> ring::signature::Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn public(k: &ring::signature::Ed25519KeyPair) -> [u8; 32] {
        use ring::signature::KeyPair;
        k.public_key().as_ref().try_into().unwrap()
    }

    fn inputs<'a>(spec: &'a McpServerSpec) -> Inputs<'a> {
        Inputs { name: "gh", spec, discovery: None, recent: &[], drifting: false, traffic: None, reported: &[] }
    }

    #[test]
    fn a_valid_signature_from_a_trusted_publisher_raises_the_score_and_a_bad_one_does_not() {
        let key = keypair();
        let mut settings = TrustSettings::default();
        settings.publishers.insert(
            "github".into(),
            Publisher { name: "github".into(), keys: vec![public(&key)], at: Stamp::default() },
        );
        let mut spec = McpServerSpec::default();
        spec.security.trusted_publisher = Some("github".into());
        let unsigned = score(&inputs(&spec), &settings);
        let doc = serde_json::json!({"apiVersion": "joch.dev/v1alpha1", "kind": "MCPServer",
            "metadata": {"name": "gh"}, "spec": {"security": {"trustedPublisher": "github"}}});
        let signed = signed_document(&doc);
        let value = format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(key.sign(signed.as_bytes()).as_ref())
        );
        spec.signature =
            Some(ManifestSignature { publisher: "github".into(), value: value.clone(), signed: signed.clone() });
        let good = score(&inputs(&spec), &settings);
        assert!(good.score > unsigned.score, "{good:?} vs {unsigned:?}");
        assert_eq!(good.components[1].value, 1.0, "{:?}", good.components[1]);
        // The document changed after signing: the signature no longer verifies.
        spec.signature.as_mut().unwrap().signed = signed.replace("github", "gitlab");
        let bad = score(&inputs(&spec), &settings);
        assert_eq!(bad.score, unsigned.score);
        assert!(bad.components[1].detail.contains("does not verify"), "{}", bad.components[1].detail);
        // Signed by another key of no trusted publisher.
        let other = keypair();
        spec.signature = Some(ManifestSignature {
            publisher: "github".into(),
            value: format!(
                "ed25519:{}",
                base64::engine::general_purpose::STANDARD.encode(other.sign(signed.as_bytes()).as_ref())
            ),
            signed,
        });
        assert_eq!(score(&inputs(&spec), &settings).components[1].value, 0.0);
    }

    #[test]
    fn unknown_components_are_neutral_and_the_allowlist_counts_only_when_loaded() {
        let spec = McpServerSpec::default();
        let mut settings = TrustSettings::default();
        let r = score(&inputs(&spec), &settings);
        // publisher 0, signature 0, stability 0.5, poisoning 0.5, traffic 0.5; the allow-list not counted.
        let w = Weights::default();
        let want = (0.5 * (w.stability + w.poisoning + w.traffic)) / (1.0 - w.allowlist);
        assert!((r.score - (want * 1000.0).round() / 1000.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.components[5].weight, 0.0);
        settings.allowlist = AllowList {
            source: "sec.yaml".into(),
            servers: vec!["gh".into()],
            at: Some(Stamp::default()),
            ..Default::default()
        };
        let listed = score(&inputs(&spec), &settings);
        assert!(listed.score > r.score);
        assert_eq!(listed.components[5].detail, "on sec.yaml (server gh)");
        // Traffic: mostly denied calls lower it.
        let mut inp = inputs(&spec);
        inp.traffic = Some(Traffic { calls: 100, denied: 90, errors: 0, window_ms: 86_400_000, mean_latency_ms: 20 });
        // 0.8 x (1 - 0.9) + 0.2 x fast.
        assert!((score(&inp, &settings).components[4].value - 0.28).abs() < 1e-9);
        // Slow: the latency fifth is lost, half of it at 5.5 s.
        inp.traffic = Some(Traffic { calls: 100, denied: 0, errors: 0, window_ms: 86_400_000, mean_latency_ms: 5_500 });
        assert!((score(&inp, &settings).components[4].value - 0.9).abs() < 1e-9);
        assert!(Weights { publisher: -1.0, ..w }.check().is_err());
    }

    #[test]
    fn the_signed_document_ignores_status_annotations_key_order_and_the_signature() {
        let a = serde_json::json!({"kind": "MCPServer", "apiVersion": "v", "metadata": {"name": "x", "annotations": {"a": "b"}},
            "spec": {"b": 1, "a": 2, "signature": {"value": "x"}}, "status": {"phase": "Ready"}});
        let b = serde_json::json!({"apiVersion": "v", "kind": "MCPServer", "metadata": {"name": "x"}, "spec": {"a": 2, "b": 1}});
        assert_eq!(signed_document(&a), signed_document(&b));
        assert_eq!(
            signed_document(&b),
            r#"{"apiVersion":"v","kind":"MCPServer","metadata":{"name":"x"},"spec":{"a":2,"b":1}}"#
        );
    }
}
