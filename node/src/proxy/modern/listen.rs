//! `subscriptions/listen` (2026-07-28) where the upstream cannot serve it: from a stdio child's
//! routed notifications, or through a legacy session of the listener's own with a legacy-only
//! HTTP upstream; and the reverse, a legacy session's server stream (GET) as a listen to a
//! modern-only upstream. Every frame of a listen stream carries the listen request's id.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};

use super::legacy_headers;
use super::translate::UpstreamSession;
use crate::mcp::envelope::{self, META_SUBSCRIPTION_ID};
use crate::mcp::{jsonrpc, sse};
use crate::proxy::admission::{check_pin, Admitted};
use crate::proxy::exit::{Answer, EventMap, Stream};
use crate::proxy::streams::{Kinds, Streams};
use crate::proxy::upstream::is_type;
use crate::proxy::upstream::stdio::Child;
use crate::proxy::Proxy;

/// A `subscriptions/listen` request: what it asked for (what joch can deliver of it).
pub struct Listen {
    pub(crate) kinds: Kinds,
    pub(crate) uris: Vec<String>,
    pub(crate) id: Value,
}

impl Listen {
    /// The listen `msg` asks for; resource URIs only if the server `can_subscribe`.
    pub fn new(msg: &Value, can_subscribe: bool, id: &Value) -> Listen {
        let f = msg.pointer("/params/notifications").cloned().unwrap_or(Value::Null);
        let flag = |k: &str| f.get(k).and_then(Value::as_bool).unwrap_or(false);
        let kinds = Kinds {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
        };
        let uris = match f.get("resourceSubscriptions").and_then(Value::as_array) {
            Some(a) if can_subscribe => a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        Listen { kinds, uris, id: id.clone() }
    }

    /// The acknowledgement (the stream's first event): the kinds and URIs joch will deliver.
    pub fn ack(&self) -> Bytes {
        let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": self.honored(), "_meta": {META_SUBSCRIPTION_ID: self.id}}});
        sse::message_event(&ack.to_string())
    }

    /// The filter as the wire spells it: the kinds set, and the URIs if any.
    pub fn honored(&self) -> serde_json::Map<String, Value> {
        let mut honored = serde_json::Map::new();
        let k = &self.kinds;
        for (key, on) in
            [("toolsListChanged", k.tools), ("promptsListChanged", k.prompts), ("resourcesListChanged", k.resources)]
        {
            if on {
                honored.insert(key.into(), json!(true));
            }
        }
        if !self.uris.is_empty() {
            honored.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        honored
    }

    /// Whether a message on the listen stream is one this listener asked for.
    fn wants(&self, v: &Value) -> bool {
        let method = v.get("method").and_then(Value::as_str).unwrap_or_default();
        if v.get("id").is_some() {
            return false;
        }
        match method {
            "notifications/subscriptions/acknowledged" => {
                v.pointer("/params/_meta").and_then(|m| m.get(META_SUBSCRIPTION_ID)) == Some(&self.id)
            }
            "notifications/resources/updated" => {
                v.pointer("/params/uri").and_then(Value::as_str).is_some_and(|u| self.uris.iter().any(|x| x == u))
            }
            m => self.kinds.wants(m),
        }
    }

    /// The event, tagged with the listen request's id.
    fn tag(&self, ev: Bytes) -> Bytes {
        let Some(mut v) = sse::json(&ev) else {
            return ev;
        };
        envelope::set_meta(&mut v, META_SUBSCRIPTION_ID, self.id.clone());
        sse::message_event(&v.to_string())
    }
}

/// Ends a listen stream's subscriptions when the stream ends (the agent went away, or the
/// server was quarantined): the child hears unsubscribe for URIs nobody else on this node wants.
struct ListenGuard {
    streams: Arc<Streams>,
    key: String,
    child: Arc<Child>,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.child.subscriptions("resources/unsubscribe", self.streams.forget(&self.key));
    }
}

impl Proxy {
    /// A listen to this node's stdio child: the acknowledgement, then the child's own
    /// notifications of the kinds asked for (and updates of the URIs asked for, if the child
    /// supports resource subscriptions), each tagged. The subscriptions end with the stream.
    pub(super) fn child_listen_events(&self, child: Arc<Child>, msg: &Value, id: &Value) -> BoxStream<'static, Bytes> {
        let can_subscribe =
            child.init.pointer("/capabilities/resources/subscribe").and_then(Value::as_bool).unwrap_or(false);
        let listen = Listen::new(msg, can_subscribe, id);
        let streams = self.stdio.streams.clone();
        let server = child.server().to_string();
        let (key, queue, new) = streams.listen(&server, listen.kinds, &listen.uris);
        child.subscriptions("resources/subscribe", new);
        let ack = listen.ack();
        let guard = ListenGuard { streams, key, child };
        let events = queue.open(None).take_while(|r| std::future::ready(r.is_ok())).filter_map(move |ev| {
            let _held_until_the_stream_ends = &guard;
            std::future::ready(ev.ok().map(|ev| listen.tag(ev)))
        });
        Box::pin(futures::stream::once(std::future::ready(ack)).chain(events))
    }

    /// A listen to a legacy-only HTTP upstream: joch opens a legacy session of the listener's
    /// own with the upstream (the node's shared one may have only one stream), subscribes the URIs
    /// asked for, and relays the session's server stream: the kinds asked for, tagged; anything
    /// else on it is dropped. The session is ended (DELETE) when the listen stream ends.
    pub(super) async fn http_listen_events(
        &self,
        adm: &Admitted,
        msg: &Value,
        id: &Value,
    ) -> Result<BoxStream<'static, Bytes>, Answer> {
        let (sid, init) = self.open_legacy_session(adm).await.map_err(|e| Answer::from(e.deny(adm)))?;
        let session = UpstreamSession { adm: adm.clone(), upstream: self.upstream.clone(), sid: sid.clone() };
        check_pin(adm, init.pointer("/serverInfo/version").and_then(Value::as_str)).map_err(Answer::from)?;
        let can_subscribe = init.pointer("/capabilities/resources/subscribe").and_then(Value::as_bool).unwrap_or(false);
        let listen = Listen::new(msg, can_subscribe, id);
        let h = legacy_headers();
        for uri in &listen.uris {
            let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": uri}});
            self.upstream
                .send(adm, reqwest::Method::POST, &h, sid.as_deref(), Some(Bytes::from(sub.to_string())))
                .await
                .map_err(|e| Answer::from(e.deny(adm)))?;
        }
        let resp = self
            .upstream
            .send(adm, reqwest::Method::GET, &h, sid.as_deref(), None)
            .await
            .map_err(|e| Answer::from(e.deny(adm)))?;
        if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
            return Err(Answer::Message(jsonrpc::error(
                id.clone(),
                jsonrpc::METHOD_NOT_FOUND,
                &format!(
                    "subscriptions/listen is not available: the upstream offers no server stream (GET: {})",
                    resp.status()
                ),
                None,
            )));
        }
        let ack = listen.ack();
        let events = sse::events(resp.bytes_stream()).filter_map(move |ev| {
            let _ended_when_the_stream_ends = &session;
            let wanted = sse::json(&ev).is_some_and(|v| listen.wants(&v));
            std::future::ready(wanted.then(|| listen.tag(ev)))
        });
        Ok(Box::pin(futures::stream::once(std::future::ready(ack)).chain(events)))
    }

    /// A listen to one server as a modern caller sees it, whatever the server's era (for the
    /// aggregate endpoint): the events as they come, the acknowledgement first.
    pub(crate) async fn listen_source(
        &self,
        adm: &Admitted,
        msg: &Value,
        id: &Value,
    ) -> Result<BoxStream<'static, Bytes>, Answer> {
        let (era, child) = self.resolve_era(adm).await.map_err(|e| Answer::from(e.deny(adm)))?;
        check_pin(adm, era.version.as_deref()).map_err(Answer::from)?;
        if era.modern {
            let resp = self.send_modern(adm, msg, "subscriptions/listen").await.map_err(Answer::from)?;
            if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
                return Err(self.relay(adm, resp, Some(id.clone())).await);
            }
            return Ok(Box::pin(sse::events(resp.bytes_stream())));
        }
        match child {
            Some(c) => Ok(self.child_listen_events(c, msg, id)),
            None => self.http_listen_events(adm, msg, id).await,
        }
    }

    /// The server stream (GET) of a legacy session whose upstream speaks only the modern era:
    /// a `subscriptions/listen` for every list change, relayed as the plain notifications the
    /// legacy era sends (the acknowledgement dropped, the subscription id taken out). `None` if
    /// the upstream offers no listen stream (the caller then gets 405, as from a server without
    /// a stream).
    pub(crate) async fn listen_as_session_stream(&self, adm: &Admitted) -> Option<Answer> {
        let listen_id = format!("joch-listen-{:x}", rand::random::<u64>());
        let mut msg = json!({"jsonrpc": "2.0", "id": listen_id, "method": "subscriptions/listen", "params": {
            "notifications": {"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true}}});
        msg["params"]["_meta"] = envelope::joch_envelope();
        let resp = match self.send_modern(adm, &msg, "subscriptions/listen").await {
            Ok(r) => r,
            Err(d) => return Some(d.into()),
        };
        if !resp.status().is_success() || !is_type(resp.headers().get("content-type"), "text/event-stream") {
            return None;
        }
        let transform: EventMap = Box::new(|ev: Bytes| {
            let Some(mut v) = sse::json(&ev) else {
                return Bytes::new();
            };
            let method = v.get("method").and_then(Value::as_str).unwrap_or_default();
            // The acknowledgement, and the listen's own answer (its end): not for a legacy client.
            if v.get("id").is_some() || method.is_empty() || method == "notifications/subscriptions/acknowledged" {
                return Bytes::new();
            }
            if let Some(meta) = v.pointer_mut("/params/_meta").and_then(Value::as_object_mut) {
                meta.remove(META_SUBSCRIPTION_ID);
                if meta.is_empty() {
                    v.get_mut("params").and_then(Value::as_object_mut).map(|p| p.remove("_meta"));
                }
            }
            sse::message_event(&v.to_string())
        });
        Some(Answer::Stream(Stream::sse(resp.bytes_stream(), None, adm.cut()).map(transform)))
    }
}
