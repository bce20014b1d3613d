//! The hook contract on the wire (Agent Control Standard v0.1, `docs/guardian-hooks.md`): the
//! request envelope joch sends, the decision it reads back, and how a MODIFY is applied. Pure:
//! no I/O here.

use serde_json::{json, Map, Value};

/// The ACS version joch speaks.
pub const ACS_VERSION: &str = "0.1.0";

/// What a redaction puts in place of a value when the guardian names no replacement.
pub const REDACTED: &str = "[REDACTED]";

/// Who and what a hook call is about (the envelope's `metadata`).
pub struct Meta<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The session (joch's handle for it, never the agent's session id), or the execution id.
    pub session: &'a str,
    /// joch's execution id.
    pub exec: &'a str,
    /// The W3C trace id.
    pub trace: &'a str,
    /// The node calling.
    pub node: u64,
}

/// The JSON-RPC request of one hook call.
pub fn request(id: u64, method: &str, meta: &Meta<'_>, payload: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": {
            "acs_version": ACS_VERSION,
            "request_id": uuid_v4(),
            "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "metadata": {
                "agent_id": meta.agent,
                "session_id": meta.session,
                "execution_id": meta.exec,
                "trace_id": meta.trace,
                "joch_node": meta.node,
            },
            "payload": payload,
        }
    })
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A guardian's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Proceed.
    Allow,
    /// Block.
    Deny,
    /// Proceed with this change.
    Modify(Modification),
    /// ASK or DEFER: a pause joch cannot hand to the guardian's approver; denied (ACS §6.5, §9.2).
    Unsupported(String),
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// `reasoning` (or `message`), as the guardian wrote it.
    pub reasoning: String,
    /// `reason_codes`.
    pub codes: Vec<String>,
}

impl Verdict {
    /// The decision's name as recorded: allow, deny, modify, ask, defer.
    pub fn name(&self) -> String {
        match &self.decision {
            Decision::Allow => "allow".into(),
            Decision::Deny => "deny".into(),
            Decision::Modify(_) => "modify".into(),
            Decision::Unsupported(d) => d.clone(),
        }
    }
}

/// A MODIFY's change to the subject of the hook (the MCP message for `protocols/MCP/*`, the
/// arguments for `steps/toolCallRequest`, the result for `steps/toolCallResult`).
#[derive(Debug, Clone, PartialEq)]
pub enum Modification {
    /// `modified_content`: the whole subject replaced.
    Replace(Value),
    /// `parameter_overrides` (top-level keys set) and `redactions` (JSON pointers replaced).
    Edit {
        /// Keys set on the subject.
        overrides: Map<String, Value>,
        /// (pointer, replacement).
        redactions: Vec<(String, Value)>,
    },
}

/// Reads a guardian's JSON-RPC answer. `Err`: no usable decision (the failure mode decides).
pub fn verdict(answer: &Value) -> Result<Verdict, String> {
    if let Some(e) = answer.get("error") {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or_default();
        let msg = e.get("message").and_then(Value::as_str).unwrap_or_default();
        return Err(format!("the guardian answered JSON-RPC error {code}: {msg}"));
    }
    let r = answer.get("result").ok_or("the answer has neither result nor error")?;
    let d = r.get("decision").and_then(Value::as_str).ok_or("the result has no decision")?;
    let reasoning =
        ["reasoning", "message"].iter().find_map(|k| r.get(*k).and_then(Value::as_str)).unwrap_or_default().to_string();
    let codes = r
        .get("reason_codes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let decision = match d.to_ascii_lowercase().as_str() {
        "allow" => Decision::Allow,
        "deny" => Decision::Deny,
        "modify" => Decision::Modify(modification(r)?),
        other @ ("ask" | "defer") => Decision::Unsupported(other.to_string()),
        other => return Err(format!("unknown decision {other:?} (expected allow, deny, modify, ask or defer)")),
    };
    Ok(Verdict { decision, reasoning, codes })
}

/// The change a MODIFY carries: `modifications` (ACS §6.3), or the `modifiedRequest` of the
/// ACS "Extending MCP" examples (a wrapped message). A malformed one is an error: the caller
/// fails closed (§6.3).
fn modification(r: &Value) -> Result<Modification, String> {
    if let Some(m) = r.get("modifications") {
        let content = m.get("modified_content");
        let overrides = m.get("parameter_overrides");
        let redactions = m.get("redactions");
        if let Some(c) = content {
            if overrides.is_some() || redactions.is_some() {
                return Err("modified_content must not come with redactions or parameter_overrides (ACS §6.3)".into());
            }
            return Ok(Modification::Replace(c.clone()));
        }
        let overrides = match overrides {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => return Err("parameter_overrides must be an object".into()),
        };
        let mut reds = Vec::new();
        for (i, r) in redactions.and_then(Value::as_array).into_iter().flatten().enumerate() {
            let (path, with) = match r {
                Value::String(p) => (p.clone(), Value::from(REDACTED)),
                Value::Object(o) => {
                    let p = o.get("path").or_else(|| o.get("pointer")).and_then(Value::as_str);
                    let p = p.ok_or(format!("redactions[{i}] has no path"))?;
                    (p.to_string(), o.get("replacement").cloned().unwrap_or_else(|| Value::from(REDACTED)))
                }
                _ => return Err(format!("redactions[{i}] is neither a JSON pointer nor an object")),
            };
            if !(path.is_empty() || path.starts_with('/')) {
                return Err(format!("redactions[{i}]: {path:?} is not a JSON pointer"));
            }
            reds.push((path, with));
        }
        // Disjoint targets (§6.3): no redaction at, above or below an overridden key.
        for (p, _) in &reds {
            for k in overrides.keys() {
                let at = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
                if p.is_empty() || *p == at || p.starts_with(&format!("{at}/")) {
                    return Err(format!("redaction {p:?} and parameter override {k:?} overlap (ACS §6.3)"));
                }
            }
        }
        if overrides.is_empty() && reds.is_empty() {
            return Err("modifications change nothing".into());
        }
        return Ok(Modification::Edit { overrides, redactions: reds });
    }
    if let Some(w) = r.get("modifiedRequest").or_else(|| r.get("modifiedResponse")) {
        // The wrapped form: `params` is the MCP message, or carries it as `payload.message`.
        let p = w.get("params").unwrap_or(w);
        let msg = p.get("payload").and_then(|p| p.get("message")).unwrap_or(p);
        return Ok(Modification::Replace(msg.clone()));
    }
    Err("decision modify without modifications".into())
}

impl Modification {
    /// Applies the change to `subject`.
    pub fn apply(&self, subject: &mut Value) -> Result<(), String> {
        match self {
            Modification::Replace(v) => *subject = v.clone(),
            Modification::Edit { overrides, redactions } => {
                if !overrides.is_empty() {
                    if subject.is_null() {
                        *subject = Value::Object(Map::new());
                    }
                    let Some(o) = subject.as_object_mut() else {
                        return Err("parameter_overrides on something that is not an object".into());
                    };
                    o.extend(overrides.clone());
                }
                for (p, with) in redactions {
                    // A path that is not there redacts nothing (it may name an optional field).
                    if let Some(v) = subject.pointer_mut(p) {
                        *v = with.clone();
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(result: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "result": result})
    }

    #[test]
    fn decisions_are_read_in_either_case_with_their_reasoning() {
        let v = verdict(&answer(json!({"decision": "ALLOW"}))).unwrap();
        assert_eq!(v.decision, Decision::Allow);
        let v =
            verdict(&answer(json!({"type": "final", "decision": "deny", "reasoning": "no", "reason_codes": ["x"]})))
                .unwrap();
        assert_eq!((v.decision, v.reasoning.as_str(), v.codes), (Decision::Deny, "no", vec!["x".to_string()]));
        let v = verdict(&answer(json!({"decision": "deny", "message": "from message"}))).unwrap();
        assert_eq!(v.reasoning, "from message");
        assert_eq!(verdict(&answer(json!({"decision": "ask"}))).unwrap().decision, Decision::Unsupported("ask".into()));
    }

    #[test]
    fn no_usable_decision_is_an_error() {
        for bad in [
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "nope"}}),
            json!({"jsonrpc": "2.0", "id": 1}),
            answer(json!({})),
            answer(json!({"decision": "maybe"})),
            answer(json!({"decision": "modify"})),
            answer(json!({"decision": "modify", "modifications": {"modified_content": 1, "redactions": ["/a"]}})),
            answer(json!({"decision": "modify", "modifications": {"redactions": ["a"]}})),
            answer(
                json!({"decision": "modify", "modifications": {"redactions": ["/a/b"], "parameter_overrides": {"a": 1}}}),
            ),
        ] {
            assert!(verdict(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_modification_replaces_or_edits_the_subject() {
        let mut args = json!({"to": "a@example.com", "body": "salary 200000", "keep": {"x": 1}});
        let v = verdict(&answer(json!({"decision": "modify", "modifications": {
            "parameter_overrides": {"to": "hr@example.com"},
            "redactions": ["/body", {"path": "/keep/x", "replacement": 0}, "/absent"],
        }})))
        .unwrap();
        let Decision::Modify(m) = v.decision else { panic!("modify") };
        m.apply(&mut args).unwrap();
        assert_eq!(args, json!({"to": "hr@example.com", "body": REDACTED, "keep": {"x": 0}}));

        let v =
            verdict(&answer(json!({"decision": "modify", "modifications": {"modified_content": {"n": 1}}}))).unwrap();
        let Decision::Modify(m) = v.decision else { panic!("modify") };
        m.apply(&mut args).unwrap();
        assert_eq!(args, json!({"n": 1}));

        // The wrapped form of the ACS MCP examples.
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}});
        let v = verdict(&answer(json!({"decision": "modify", "modifiedRequest": {
            "jsonrpc": "2.0", "id": 80, "method": "protocols/MCP/tools/call", "params": msg,
        }})))
        .unwrap();
        assert_eq!(v.decision, Decision::Modify(Modification::Replace(msg)));
    }

    #[test]
    fn the_request_carries_the_envelope() {
        let meta = Meta { agent: "a", session: "s", exec: "exec-1", trace: "t", node: 2 };
        let r = request(7, "steps/toolCallRequest", &meta, json!({"k": 1}));
        assert_eq!(r["method"], "steps/toolCallRequest");
        assert_eq!(r["params"]["acs_version"], ACS_VERSION);
        assert_eq!(r["params"]["metadata"]["agent_id"], "a");
        assert_eq!(r["params"]["payload"]["k"], 1);
        let id = r["params"]["request_id"].as_str().unwrap();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
        assert!(r["params"]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
