//! The list filter: `tools/list`, `prompts/list`, `resources/list` and
//! `resources/templates/list` answers show only what the caller may use, decided by
//! [`Governance::judge`] (the function that decides calls), on `/mcp/{server}`, on the
//! aggregate `/mcp` (items named `server.tool`) and on virtual servers (`/mcp/v/NAME`, items
//! under the names the virtual server gives them), in both eras, JSON or SSE. A filtered answer
//! says how many items it hid (`result._meta["dev.joch/policy"].hidden`): never a silent empty
//! list.

use std::sync::Arc;

use bytes::Bytes;
use joch_policy::{Action, Kind};
use joch_raft_store::RegistryHandle;
use serde_json::{json, Value};

use super::{Governance, Subject};
use crate::mcp::sse;
use crate::proxy::aggregate::{list_key, member_item};
use crate::proxy::request::Call;
use crate::proxy::stages::Stage;

/// The stage that filters lists.
pub struct ListFilter {
    gov: Arc<Governance>,
    registry: RegistryHandle,
}

impl ListFilter {
    /// A filter deciding with `gov` from `registry`'s snapshot.
    pub fn new(gov: Arc<Governance>, registry: RegistryHandle) -> ListFilter {
        ListFilter { gov, registry }
    }
}

/// The kind of item a list holds, the field naming it, and the method of using one.
fn item_kind(key: &str) -> (Kind, &'static str, &'static str) {
    match key {
        "tools" => (Kind::Tool, "name", "tools/call"),
        "prompts" => (Kind::Prompt, "name", "prompts/get"),
        "resourceTemplates" => (Kind::Resource, "uriTemplate", "resources/read"),
        _ => (Kind::Resource, "uri", "resources/read"),
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Stage for ListFilter {
    fn on_message(&self, call: &Call, server: &str, message: &mut Bytes) {
        let Some(key) = call.method().and_then(list_key) else { return };
        let trimmed = message.iter().position(|b| !b.is_ascii_whitespace()).map(|i| message[i]);
        let sse = trimmed != Some(b'{');
        let text = if sse {
            match sse::data(message) {
                Some(d) => d,
                None => return,
            }
        } else {
            match std::str::from_utf8(message) {
                Ok(t) => t.to_string(),
                Err(_) => return,
            }
        };
        let Ok(mut v) = serde_json::from_str::<Value>(&text) else { return };
        let Some(items) = v.get_mut("result").and_then(|r| r.get_mut(key)).and_then(Value::as_array_mut) else {
            return;
        };
        let state = self.registry.load();
        let (kind, field, method) = item_kind(key);
        let now = now_ms();
        let before = items.len();
        // Several servers behind one endpoint: `/mcp` (items named `server.tool`) or a virtual
        // server (`v/NAME`: items under the names it gives them).
        let view = server.strip_prefix("v/").map(|v| state.registry.virtual_servers.get(v).cloned());
        let merged = server.is_empty() || view.is_some();
        if kind == Kind::Tool && !merged {
            let learned = items.iter().filter_map(|t| {
                let name = t.get("name")?.as_str()?.to_string();
                Some((name, Action::from_annotations(t.get("annotations"))))
            });
            self.gov.learn(server, learned);
        }
        items.retain(|item| {
            let (member, name) = match &view {
                Some(None) => return false,
                Some(Some(vs)) => {
                    let exposed = item.get(field).and_then(Value::as_str).unwrap_or_default();
                    match vs.spec.resolve(exposed) {
                        Some(t) if kind == Kind::Tool => (t.server.clone(), t.tool.clone()),
                        _ => return false,
                    }
                }
                None if server.is_empty() => match member_item(key, item) {
                    Some(x) => x,
                    None => return false,
                },
                None => match item.get(field).and_then(Value::as_str) {
                    Some(n) => (server.to_string(), n.to_string()),
                    None => return false,
                },
            };
            let Some(rec) = state.registry.servers.get(&member) else { return false };
            if merged && kind == Kind::Tool {
                self.gov
                    .learn(&member, std::iter::once((name.clone(), Action::from_annotations(item.get("annotations")))));
            }
            let subject =
                Subject { kind, method, name: &name, annotations: item.get("annotations"), args: None, now_ms: now };
            self.gov.judge(&state, &call.caller, rec, &subject, None).is_ok()
        });
        let hidden = before - items.len();
        if hidden == 0 {
            return;
        }
        metrics::counter!("joch_policy_list_items_hidden_total").increment(hidden as u64);
        if let Some(r) = v.get_mut("result").and_then(Value::as_object_mut) {
            let meta = r.entry("_meta").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                m.insert("dev.joch/policy".into(), json!({"hidden": hidden}));
            }
        }
        let out = v.to_string();
        *message = if sse { with_data(message, &out) } else { Bytes::from(out) };
    }
}

/// The event with its data replaced (its other lines, such as `id:`, kept).
fn with_data(event: &[u8], data: &str) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::with_capacity(data.len() + 32);
    let mut wrote = false;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("data:") {
            if !wrote {
                out.push_str("data: ");
                out.push_str(data);
                out.push('\n');
                wrote = true;
            }
        } else if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}
