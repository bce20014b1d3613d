//! The server streams (`GET /mcp/{server}`) of sessions with a stdio server, on the node that
//! owns them (runs the child). A stdio child is shared by every session on its node, so what it
//! sends on its own is routed here:
//! - `notifications/{tools,prompts,resources}/list_changed`: to every session of that server;
//! - `notifications/resources/updated`: to the sessions that subscribed to that URI;
//! - log messages (`notifications/message`) and anything else: to the node's log only (a shared
//!   child cannot say whose call a log line belongs to, and one agent's must not reach another).
//!
//! Each session known here has a bounded buffer of the messages meant for it, numbered as SSE
//! event ids (`<epoch>-<n>`), so a client that reconnects with `Last-Event-ID` (on any node: the
//! GET is forwarded here over the mesh) gets what it missed. The epoch changes when the node
//! restarts, so an id from an earlier run replays nothing rather than the wrong messages. One GET
//! stream per session at a time: a new one replaces the old.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::mcp::sse;

/// Messages kept per session for replay.
const BUFFER: usize = 256;
/// Sessions kept per node; the least recently used one goes first.
const MAX_SESSIONS: usize = 4096;
/// A session without an open stream and without a request for this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);
/// Ended sessions remembered (so their ids get 404), oldest forgotten first.
const ENDED: usize = 65536;

/// The stdio sessions of this node that have a server stream or a subscription.
pub struct Streams {
    epoch: u64,
    sessions: Mutex<HashMap<String, Arc<SessionQueue>>>,
    /// Sessions ended with DELETE. Session ids are sealed, not stored, so without this an ended
    /// id would keep working; every request of a stdio session reaches this node, so this is
    /// the one place that must know.
    ended: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams { epoch: rand::random::<u64>() & 0xffff_ffff, sessions: Mutex::default(), ended: Mutex::default() }
    }
}

/// Which list changes a queue takes: a `subscriptions/listen` stream names the kinds it wants;
/// a legacy session's stream takes every kind.
#[derive(Clone, Copy, Debug)]
pub struct Kinds {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl Kinds {
    const ALL: Kinds = Kinds { tools: true, prompts: true, resources: true };

    pub fn wants(&self, method: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            _ => false,
        }
    }
}

/// One session's messages.
pub struct SessionQueue {
    server: String,
    epoch: u64,
    kinds: Kinds,
    state: Mutex<QueueState>,
    /// Bumped on every change a reader must look at (a message, a new reader, the end).
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct QueueState {
    /// Number of the last message queued (messages count from 1).
    last: u64,
    events: VecDeque<(u64, Bytes)>,
    /// The current reader; an older one stops.
    reader: u64,
    readers_open: usize,
    subscriptions: HashSet<String>,
    touched: Option<Instant>,
    closed: bool,
}

/// Which messages a new stream starts after.
fn parse_event_id(id: &str, epoch: u64) -> Option<u64> {
    let (e, n) = id.split_once('-')?;
    (u64::from_str_radix(e, 16).ok()? == epoch).then_some(())?;
    n.parse().ok()
}

impl SessionQueue {
    fn touch(&self) {
        self.state.lock().touched = Some(Instant::now());
    }

    fn push(&self, msg: &Value) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        st.last += 1;
        let n = st.last;
        let mut event = format!("id: {:x}-{n}\n", self.epoch).into_bytes();
        event.extend_from_slice(&sse::message_event(&msg.to_string()));
        st.events.push_back((n, Bytes::from(event)));
        while st.events.len() > BUFFER {
            st.events.pop_front();
        }
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Opens the session's stream: the messages after `last_event_id` still buffered (none
    /// without one), then each new message as it comes, until a newer stream replaces this
    /// one or the session ends.
    pub fn open(self: &Arc<Self>, last_event_id: Option<&str>) -> impl futures::Stream<Item = Result<Bytes, String>> {
        let (me, after) = {
            let mut st = self.state.lock();
            st.reader += 1;
            st.readers_open += 1;
            st.touched = Some(Instant::now());
            let after = last_event_id.and_then(|id| parse_event_id(id, self.epoch)).unwrap_or(st.last);
            (st.reader, after)
        };
        self.changed.send_modify(|v| *v += 1);
        let reader = Reader { queue: self.clone(), me, sent: after, changes: self.changed.subscribe() };
        futures::stream::unfold(reader, |mut r| async move {
            loop {
                r.changes.borrow_and_update();
                {
                    let st = r.queue.state.lock();
                    if st.closed || st.reader != r.me {
                        return None;
                    }
                    if let Some((n, ev)) = st.events.iter().find(|(n, _)| *n > r.sent) {
                        r.sent = *n;
                        let ev = ev.clone();
                        drop(st);
                        return Some((Ok(ev), r));
                    }
                }
                if r.changes.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

/// An open stream; counted so an idle session is told apart from one being listened to.
struct Reader {
    queue: Arc<SessionQueue>,
    me: u64,
    sent: u64,
    changes: watch::Receiver<u64>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.queue.state.lock();
        st.readers_open -= 1;
        st.touched = Some(Instant::now());
    }
}

impl Streams {
    /// The queue of a session (`key`: its sealed id), created if new.
    pub fn queue(&self, key: &str, server: &str) -> Arc<SessionQueue> {
        let mut sessions = self.sessions.lock();
        if let Some(q) = sessions.get(key) {
            q.touch();
            return q.clone();
        }
        if sessions.len() >= MAX_SESSIONS {
            Self::evict(&mut sessions);
        }
        let q = Arc::new(SessionQueue {
            server: server.to_string(),
            epoch: self.epoch,
            kinds: Kinds::ALL,
            state: Mutex::new(QueueState { touched: Some(Instant::now()), ..Default::default() }),
            changed: watch::channel(0).0,
        });
        sessions.insert(key.to_string(), q.clone());
        q
    }

    /// Drops idle sessions, or if none is idle the least recently used one.
    fn evict(sessions: &mut HashMap<String, Arc<SessionQueue>>) {
        let now = Instant::now();
        let age = |q: &SessionQueue| {
            let st = q.state.lock();
            (st.readers_open == 0, st.touched.map(|t| now - t).unwrap_or_default())
        };
        let before = sessions.len();
        sessions.retain(|_, q| {
            let (unread, idle) = age(q);
            let keep = !(unread && idle > IDLE);
            if !keep {
                q.close();
            }
            keep
        });
        if sessions.len() == before {
            let oldest = sessions.iter().max_by_key(|(_, q)| age(q)).map(|(k, _)| k.clone());
            if let Some(k) = oldest.and_then(|k| sessions.remove(&k)) {
                k.close();
            }
        }
    }

    /// A queue for one `subscriptions/listen` stream of a modern caller: the list changes it
    /// asked for and the updates of these URIs. Returns its key (for [`Streams::forget`]) and
    /// the URIs no session of this node subscribed to before (the child must hear about them).
    pub fn listen(&self, server: &str, kinds: Kinds, uris: &[String]) -> (String, Arc<SessionQueue>, Vec<String>) {
        let key = format!("listen:{:x}", rand::random::<u128>());
        let mut sessions = self.sessions.lock();
        let new: Vec<String> = uris.iter().filter(|u| !Self::subscribed(&sessions, server, u)).cloned().collect();
        if sessions.len() >= MAX_SESSIONS {
            Self::evict(&mut sessions);
        }
        let q = Arc::new(SessionQueue {
            server: server.to_string(),
            epoch: self.epoch,
            kinds,
            state: Mutex::new(QueueState {
                touched: Some(Instant::now()),
                subscriptions: uris.iter().cloned().collect(),
                ..Default::default()
            }),
            changed: watch::channel(0).0,
        });
        sessions.insert(key.clone(), q.clone());
        (key, q, new)
    }

    /// Drops a listen queue (its stream ended); returns the URIs nobody subscribes to any more.
    pub fn forget(&self, key: &str) -> Vec<String> {
        let mut sessions = self.sessions.lock();
        let Some(q) = sessions.remove(key) else { return Vec::new() };
        q.close();
        let gone: Vec<String> = q.state.lock().subscriptions.drain().collect();
        gone.into_iter().filter(|uri| !Self::subscribed(&sessions, &q.server, uri)).collect()
    }

    /// Ends a session (DELETE): its stream closes. Returns the URIs of `server` that no other
    /// session of this node subscribes to any more (the child can stop sending their updates).
    pub fn remove(&self, key: &str) -> Vec<String> {
        {
            let mut ended = self.ended.lock();
            if ended.0.insert(key.to_string()) {
                ended.1.push_back(key.to_string());
            }
            while ended.1.len() > ENDED {
                if let Some(old) = ended.1.pop_front() {
                    ended.0.remove(&old);
                }
            }
        }
        self.forget(key)
    }

    /// Whether the session was ended with DELETE.
    pub fn ended(&self, key: &str) -> bool {
        self.ended.lock().0.contains(key)
    }

    fn subscribed(sessions: &HashMap<String, Arc<SessionQueue>>, server: &str, uri: &str) -> bool {
        sessions.values().any(|q| q.server == server && q.state.lock().subscriptions.contains(uri))
    }

    /// Records a session's subscription to a resource.
    pub fn subscribe(&self, key: &str, server: &str, uri: &str) {
        self.queue(key, server).state.lock().subscriptions.insert(uri.to_string());
    }

    /// Removes a session's subscription; true if another session of this node still
    /// subscribes to the URI (then the child must keep sending its updates).
    pub fn unsubscribe(&self, key: &str, server: &str, uri: &str) -> bool {
        let sessions = self.sessions.lock();
        if let Some(q) = sessions.get(key) {
            q.state.lock().subscriptions.remove(uri);
        }
        Self::subscribed(&sessions, server, uri)
    }

    /// Routes a message the child of `server` sent on its own.
    pub fn publish(&self, server: &str, msg: &Value) {
        let method = msg["method"].as_str().unwrap_or_default();
        let targets: Vec<Arc<SessionQueue>> = {
            let sessions = self.sessions.lock();
            let of_server = sessions.values().filter(|q| q.server == server);
            match method {
                "notifications/tools/list_changed"
                | "notifications/prompts/list_changed"
                | "notifications/resources/list_changed" => {
                    of_server.filter(|q| q.kinds.wants(method)).cloned().collect()
                }
                "notifications/resources/updated" => {
                    let uri = msg["params"]["uri"].as_str().unwrap_or_default();
                    of_server.filter(|q| q.state.lock().subscriptions.contains(uri)).cloned().collect()
                }
                "notifications/message" => {
                    let p = &msg["params"];
                    tracing::info!(target: "joch::stdio", server, level = %p["level"], logger = %p["logger"], "{}", p["data"]);
                    return;
                }
                _ => {
                    tracing::debug!(server, method, "stdio server notification dropped (no session to route it to)");
                    return;
                }
            }
        };
        metrics::counter!("joch_stdio_notifications_routed_total").increment(targets.len() as u64);
        for q in targets {
            q.push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn ids(events: &[Bytes]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(e).lines().next().unwrap_or_default().trim_start_matches("id: ").into())
            .collect()
    }

    async fn take(s: &mut (impl futures::Stream<Item = Result<Bytes, String>> + Unpin), n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ev = tokio::time::timeout(Duration::from_secs(2), s.next()).await.expect("an event in time");
            out.push(ev.expect("stream open").expect("ok"));
        }
        out
    }

    #[tokio::test]
    async fn list_changes_reach_every_session_of_the_server_and_replay_after_the_last_event_id() {
        let streams = Streams::default();
        let (a, b, other) = (streams.queue("a", "time"), streams.queue("b", "time"), streams.queue("c", "git"));
        let mut sa = Box::pin(a.open(None));
        let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        streams.publish("time", &changed);
        streams.publish("time", &json!({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}));
        let got = take(&mut sa, 2).await;
        assert!(String::from_utf8_lossy(&got[0]).contains("tools/list_changed"));
        assert_eq!(b.state.lock().events.len(), 2, "buffered for b without a stream");
        assert!(other.state.lock().events.is_empty(), "not for another server's session");
        // Reconnect after the first: the second is replayed, then new ones follow.
        let first = ids(&got)[0].clone();
        let mut again = Box::pin(a.open(Some(&first)));
        assert!(sa.next().await.is_none(), "the older stream ends when a new one opens");
        let replay = take(&mut again, 1).await;
        assert_eq!(ids(&replay), vec![ids(&got)[1].clone()]);
        streams.publish("time", &changed);
        assert_eq!(take(&mut again, 1).await.len(), 1);
        // An id from another epoch (an earlier run of the node) replays nothing.
        let mut fresh = Box::pin(a.open(Some("ffffffffff-1")));
        streams.publish("time", &changed);
        let next = take(&mut fresh, 1).await;
        assert!(ids(&next)[0].ends_with("-4"), "{:?}", ids(&next));
    }

    #[tokio::test]
    async fn updates_go_to_subscribers_only_and_the_last_one_out_reports_the_uri() {
        let streams = Streams::default();
        streams.subscribe("a", "fs", "file:///x");
        streams.subscribe("b", "fs", "file:///x");
        streams.subscribe("b", "fs", "file:///y");
        let c = streams.queue("c", "fs");
        let update =
            |uri: &str| json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}});
        streams.publish("fs", &update("file:///y"));
        assert_eq!(streams.queue("b", "fs").state.lock().events.len(), 1);
        assert!(streams.queue("a", "fs").state.lock().events.is_empty());
        assert!(c.state.lock().events.is_empty());
        assert!(streams.unsubscribe("a", "fs", "file:///x"), "b still subscribes");
        let mut orphaned = streams.remove("b");
        orphaned.sort();
        assert_eq!(orphaned, vec!["file:///x".to_string(), "file:///y".to_string()], "nobody subscribes any more");
        streams.subscribe("d", "fs", "file:///z");
        streams.subscribe("e", "fs", "file:///z");
        assert!(streams.remove("d").is_empty(), "e still subscribes to z");
    }

    #[tokio::test]
    async fn a_listen_queue_takes_only_the_kinds_and_uris_it_asked_for() {
        let streams = Streams::default();
        streams.subscribe("legacy", "fs", "file:///a");
        let kinds = Kinds { tools: true, prompts: false, resources: false };
        let (key, q, new) = streams.listen("fs", kinds, &["file:///a".into(), "file:///b".into()]);
        assert_eq!(new, vec!["file:///b".to_string()], "a was subscribed already");
        for m in ["tools", "prompts", "resources"] {
            streams.publish("fs", &json!({"jsonrpc": "2.0", "method": format!("notifications/{m}/list_changed")}));
        }
        streams.publish(
            "fs",
            &json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///b"}}),
        );
        let got: Vec<String> = q.state.lock().events.iter().map(|(_, e)| String::from_utf8_lossy(e).into()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("tools/list_changed") && got[1].contains("file:///b"), "{got:?}");
        assert_eq!(streams.forget(&key), vec!["file:///b".to_string()], "a is still the legacy session's");
        assert!(!streams.ended(&key), "a listen stream is not a session");
    }

    #[tokio::test]
    async fn a_removed_session_ends_its_stream_and_log_lines_reach_no_session() {
        let streams = Streams::default();
        let q = streams.queue("a", "time");
        let mut s = Box::pin(q.open(None));
        streams.publish("time", &json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "secret of another agent"}}));
        assert!(q.state.lock().events.is_empty());
        assert!(!streams.ended("a"));
        streams.remove("a");
        assert!(tokio::time::timeout(Duration::from_secs(2), s.next()).await.expect("ends").is_none());
        assert!(streams.ended("a"), "an ended session is remembered");
    }
}
