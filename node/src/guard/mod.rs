//! The content guard on the request path (`docs/content-guard.md`): the scanner is the
//! `joch-guard` crate (one rule set, built once per process); `stage.rs` scans what servers send
//! back before it reaches the agent; `poison.rs` reads tools' descriptions and schemas at
//! discovery with the same detectors.

pub mod poison;
pub mod stage;

use std::sync::LazyLock;

/// Every other server's discovered tools, as agents on the aggregate endpoint see them
/// (`server.tool`): a tool's description or a result that sends the model there is suspect.
pub fn other_tools(state: &joch_raft_store::PublishedState, server: &str) -> Vec<String> {
    state
        .registry
        .servers
        .values()
        .filter(|r| r.name != server)
        .flat_map(|r| {
            let tools = r.status.discovery.as_ref().map(|d| d.tools.clone()).unwrap_or_default();
            tools.into_iter().map(move |t| format!("{}.{}", r.name, t.name))
        })
        .collect()
}

/// Every string under `v`, at any depth.
pub fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Replaces the secrets and personal data in every string under `v` by `[REDACTED:RULE]`
/// (every secret and PII rule); returns what was replaced, as `rule@pointer` (for the audit).
pub fn redact_strings(v: &mut serde_json::Value) -> Vec<String> {
    fn walk(v: &mut serde_json::Value, at: &mut String, opts: &joch_guard::Options, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => {
                let hits = SCANNER.scan(s, opts);
                if !hits.is_empty() {
                    let path = if at.is_empty() { "/" } else { at.as_str() };
                    out.extend(hits.iter().map(|h| format!("{}@{path}", h.rule)));
                    *s = joch_guard::redact(s, &hits);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    let len = at.len();
                    at.push_str(&format!("/{i}"));
                    walk(x, at, opts, out);
                    at.truncate(len);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    walk(x, at, opts, out);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let opts = joch_guard::Options { injection: false, ..joch_guard::Options::all() };
    let mut out = Vec::new();
    walk(v, &mut String::new(), &opts, &mut out);
    out
}

/// The built-in rule set, compiled once.
pub static SCANNER: LazyLock<joch_guard::Scanner> = LazyLock::new(joch_guard::Scanner::new);

/// What a tool call's arguments hold that should not leave (exfiltration through a tool's
/// inputs): every secret and PII rule, and the injection families, over every string of the
/// arguments. The facts policies read as `mcpArgs.*`:
/// `{"secretScan": {"hit", "rules", "classes"}, "injectionScan": {"hit", "families", "rules"}}`.
pub fn scan_arguments(args: &serde_json::Value) -> serde_json::Value {
    let mut texts = Vec::new();
    strings(args, &mut texts);
    let mut secret_rules = std::collections::BTreeSet::new();
    let mut injection_rules = std::collections::BTreeSet::new();
    let mut families = std::collections::BTreeSet::new();
    for t in texts {
        for h in SCANNER.scan(t, &joch_guard::Options::all()) {
            if h.family.is_injection() {
                injection_rules.insert(h.rule);
                families.insert(h.family.as_str());
            } else {
                secret_rules.insert(h.rule);
            }
        }
    }
    let classes: Vec<&str> = joch_guard::CLASSES
        .iter()
        .copied()
        .filter(|c| !matches!(*c, "secrets" | "pii" | "apiTokens"))
        .filter(|c| joch_guard::class_rules(c).is_some_and(|r| r.iter().any(|x| secret_rules.contains(x))))
        .collect();
    serde_json::json!({
        "secretScan": {"hit": !secret_rules.is_empty(), "rules": secret_rules, "classes": classes},
        "injectionScan": {"hit": !injection_rules.is_empty(), "families": families, "rules": injection_rules},
    })
}
