//! The mesh: one QUIC endpoint per node (quinn, rustls, mutual TLS with the cluster CA), a
//! transport for two kinds of exchange:
//! - control calls (the cluster's: Raft RPCs, forwarded admin writes, read index, lease probes,
//!   applied-index probes, status): one request, one answer;
//! - streamed calls (the data plane's: an MCP request forwarded to the node that owns its
//!   session): one request, then the answer as frames (length-prefixed: the head, then body
//!   chunks as they are produced), so streams stay streams across nodes.
//!
//! Each call opens one bidirectional stream on a cached connection to the peer; its first byte
//! says which kind it is.
//!
//! Who is who: a certificate names its node (`node<ID>.joch`). Dialing an address membership
//! gives to node N, the mesh asks for N's name, so a CA-signed certificate of another node there
//! fails the handshake. Accepting, once this node is in a cluster, it serves only current
//! members, each from the address membership gives it (a removed node's connections are
//! closed). A node not yet in a cluster answers any peer of its CA (that is how it joins). The mesh knows nothing about what the messages mean: their types
//! belong to the cluster and the proxy, and a [`ControlHandler`] and a [`StreamHandler`] (wired
//! in `app.rs`) answer them.

pub mod pki;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use joch_raft_store::codec;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Longest wait for a QUIC handshake (a dead peer never refuses: UDP just goes unanswered).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest message accepted on the mesh (snapshot chunks are far smaller).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Why a mesh call failed. Every variant means "the peer did not answer": the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The address does not resolve.
    #[error("cannot resolve mesh address {addr}: {message}")]
    Resolve {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// No connection could be made (unreachable, refused, or TLS handshake failed).
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The stream broke.
    #[error("mesh stream to {addr} failed: {message}")]
    Stream {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer could not be decoded.
    #[error("bad message from {addr}: {message}")]
    Codec {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
}

/// Answers control calls (the cluster).
pub trait ControlHandler: Send + Sync + 'static {
    /// What a peer asks.
    type Request: DeserializeOwned + Send;
    /// What is answered.
    type Response: Serialize + Send;
    /// Handles one request.
    fn handle(&self, req: Self::Request) -> impl Future<Output = Self::Response> + Send;
    /// The answer to a request that could not be decoded.
    fn undecodable(&self, why: String) -> Self::Response;
}

/// Answers streamed calls (the data plane).
pub trait StreamHandler: Send + Sync + 'static {
    /// What a peer asks.
    type Request: DeserializeOwned + Send;
    /// The head of the answer, sent before its body.
    type Head: Serialize + Send;
    /// Handles one request: the head of the answer, then its body as it is produced.
    fn handle(&self, req: Self::Request) -> impl Future<Output = (Self::Head, BodyStream)> + Send;
}

/// First byte of a call: which kind it is.
const CONTROL: u8 = 0;
const STREAMED: u8 = 1;

/// A body produced chunk by chunk.
pub type BodyStream = futures::stream::BoxStream<'static, bytes::Bytes>;

/// Largest frame of a streamed answer.
const MAX_FRAME: usize = 16 << 20;

/// This node's mesh endpoint: a server for peers and a client to them.
pub struct Mesh {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// The cluster's members and their mesh addresses (empty: not in a cluster yet).
    members: Mutex<Arc<BTreeMap<u64, String>>>,
    /// Connections peers opened to this node, with the node id their certificate names.
    incoming: Mutex<HashMap<usize, (Option<u64>, quinn::Connection)>>,
}

/// Close code of a connection refused after the handshake (not a member, wrong address).
const NOT_A_MEMBER: u32 = 403;

impl Mesh {
    /// Binds the endpoint on `addr`.
    pub fn bind(addr: SocketAddr, tls: &tls::NodeTls) -> anyhow::Result<Arc<Self>> {
        let mut endpoint = quinn::Endpoint::server(tls.server_config()?, addr)
            .map_err(|e| anyhow::anyhow!("cannot bind the mesh (QUIC/UDP) on {addr}: {e}"))?;
        let client = tls.client_config()?;
        endpoint.set_default_client_config(client.clone());
        Ok(Arc::new(Mesh {
            endpoint,
            client,
            conns: Mutex::new(HashMap::new()),
            members: Mutex::default(),
            incoming: Mutex::default(),
        }))
    }

    /// The current members (id -> mesh address), from Raft's membership. Connections to an
    /// address whose node changed are dropped; peers no longer members are disconnected.
    pub fn set_members(&self, members: BTreeMap<u64, String>) {
        {
            let mut cur = self.members.lock();
            if **cur == members {
                return;
            }
            *cur = Arc::new(members.clone());
        }
        self.conns.lock().clear();
        let gone: Vec<quinn::Connection> = self
            .incoming
            .lock()
            .values()
            .filter(|(id, _)| !id.is_some_and(|id| members.contains_key(&id)))
            .map(|(_, c)| c.clone())
            .collect();
        for c in gone {
            c.close(NOT_A_MEMBER.into(), b"not a member of this cluster");
        }
    }

    /// Whether a peer whose certificate names `peer` (from `remote`) may talk to this node.
    async fn admits(&self, peer: Option<u64>, remote: SocketAddr) -> Result<(), String> {
        let members = self.members.lock().clone();
        if members.is_empty() {
            return Ok(());
        }
        let id = peer.ok_or("its certificate names no node (node<ID>.joch)")?;
        let addr = members.get(&id).ok_or_else(|| format!("node {id} is not a member of this cluster"))?;
        let expected: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => tokio::net::lookup_host(addr.as_str()).await.map(|i| i.collect()).unwrap_or_default(),
        };
        let same = |e: &SocketAddr| {
            e.port() == remote.port()
                && (e.ip().is_unspecified() || e.ip().to_canonical() == remote.ip().to_canonical())
        };
        if expected.iter().any(same) {
            Ok(())
        } else {
            Err(format!("node {id} lives at {addr}, not at {remote}"))
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves peers until `stop` is cancelled: control calls go to `control`, streamed ones to
    /// `streams`.
    pub async fn serve<C: ControlHandler, S: StreamHandler>(
        self: Arc<Self>,
        control: Arc<C>,
        streams: Arc<S>,
        stop: CancellationToken,
    ) {
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => break,
                i = self.endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let (control, streams) = (control.clone(), streams.clone());
            let stop = stop.clone();
            let me = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh: refused incoming connection");
                        metrics::counter!("joch_mesh_handshake_failures_total").increment(1);
                        return;
                    }
                };
                let peer = conn
                    .peer_identity()
                    .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                    .and_then(|chain| tls::node_id_of(chain.first()?));
                if let Err(why) = me.admits(peer, conn.remote_address()).await {
                    tracing::warn!(peer = ?peer, remote = %conn.remote_address(), reason = %why, "mesh: refused peer");
                    metrics::counter!("joch_mesh_peers_refused_total").increment(1);
                    conn.close(NOT_A_MEMBER.into(), why.as_bytes());
                    return;
                }
                me.incoming.lock().insert(conn.stable_id(), (peer, conn.clone()));
                metrics::gauge!("joch_mesh_connections", "dir" => "in").increment(1.0);
                loop {
                    let (send, recv) = tokio::select! {
                        _ = stop.cancelled() => break,
                        s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => break },
                    };
                    let (control, streams) = (control.clone(), streams.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_stream(send, recv, control.as_ref(), streams.as_ref()).await {
                            tracing::debug!(error = %e, "mesh: stream failed");
                        }
                    });
                }
                me.incoming.lock().remove(&conn.stable_id());
                metrics::gauge!("joch_mesh_connections", "dir" => "in").decrement(1.0);
            });
        }
    }

    /// Sends a control request to the node at `addr` and waits for its answer, at most `timeout`.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<A, MeshError> {
        match tokio::time::timeout(timeout, self.call_inner(addr, req)).await {
            Ok(r) => r,
            Err(_) => Err(MeshError::Timeout { addr: addr.to_string(), timeout }),
        }
    }

    async fn call_inner<Q: Serialize, A: DeserializeOwned>(&self, addr: &str, req: &Q) -> Result<A, MeshError> {
        let bytes = request_bytes(CONTROL, req, addr)?;
        let sock = resolve(addr).await?;
        // One retry on a fresh connection: a cached connection may have died since last use.
        let mut last = None;
        for attempt in 0..2 {
            let conn = self.connection(sock, addr, attempt > 0).await?;
            match exchange(&conn, &bytes, addr).await {
                Ok(resp) => return Ok(resp),
                Err(e @ MeshError::Stream { .. }) => {
                    self.conns.lock().remove(&sock);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| MeshError::Stream { addr: addr.to_string(), message: "no attempt made".into() }))
    }

    async fn connection(&self, sock: SocketAddr, addr: &str, fresh: bool) -> Result<quinn::Connection, MeshError> {
        if !fresh {
            let cached = self.conns.lock().get(&sock).cloned();
            if let Some(c) = cached {
                if c.close_reason().is_none() {
                    return Ok(c);
                }
            }
        }
        let connect_err = |message: String| MeshError::Connect { addr: addr.to_string(), message };
        // The node membership says lives there must answer, not any node of the CA.
        let name = self
            .members
            .lock()
            .iter()
            .find(|(_, a)| a.as_str() == addr)
            .map(|(id, _)| tls::node_server_name(*id))
            .unwrap_or_else(|| pki::MESH_SERVER_NAME.to_string());
        let connecting =
            self.endpoint.connect_with(self.client.clone(), sock, &name).map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| connect_err(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| connect_err(e.to_string()))?;
        metrics::counter!("joch_mesh_connects_total").increment(1);
        self.conns.lock().insert(sock, conn.clone());
        Ok(conn)
    }

    /// Closes every connection and waits (bounded) for peers to be told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, MeshError> {
    if let Ok(s) = addr.parse() {
        return Ok(s);
    }
    let err = |message: String| MeshError::Resolve { addr: addr.to_string(), message };
    tokio::net::lookup_host(addr).await.map_err(|e| err(e.to_string()))?.next().ok_or_else(|| err("no address".into()))
}

/// The kind byte, then the encoded request.
fn request_bytes<Q: Serialize>(kind: u8, req: &Q, addr: &str) -> Result<Vec<u8>, MeshError> {
    let mut bytes = vec![kind];
    bytes.extend(codec::encode(req).map_err(|e| MeshError::Codec { addr: addr.into(), message: e.to_string() })?);
    Ok(bytes)
}

async fn exchange<A: DeserializeOwned>(conn: &quinn::Connection, bytes: &[u8], addr: &str) -> Result<A, MeshError> {
    let stream_err = |message: String| MeshError::Stream { addr: addr.to_string(), message };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(e.to_string()))?;
    send.write_all(bytes).await.map_err(|e| stream_err(e.to_string()))?;
    send.finish().map_err(|e| stream_err(e.to_string()))?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "sent").increment(bytes.len() as u64);
    let resp = recv.read_to_end(MAX_MESSAGE).await.map_err(|e| stream_err(e.to_string()))?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "received").increment(resp.len() as u64);
    codec::decode(&resp).map_err(|e| MeshError::Codec { addr: addr.to_string(), message: e.to_string() })
}

async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> anyhow::Result<()> {
    send.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    send.write_all(frame).await?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "sent").increment(frame.len() as u64 + 4);
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes exceeds {MAX_FRAME}"));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "received").increment(len as u64 + 4);
    Ok(Some(buf))
}

impl Mesh {
    /// Sends a streamed request; returns the answer's head once it arrives (within `timeout`)
    /// and its body as a stream that yields chunks as the peer sends them.
    pub async fn call_streamed<Q: Serialize, H: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<(H, BodyStream), MeshError> {
        let stream_err = |message: String| MeshError::Stream { addr: addr.to_string(), message };
        let bytes = request_bytes(STREAMED, req, addr)?;
        let sock = resolve(addr).await?;
        let head = async {
            let conn = self.connection(sock, addr, false).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(e.to_string()))?;
            send.write_all(&bytes).await.map_err(|e| stream_err(e.to_string()))?;
            send.finish().map_err(|e| stream_err(e.to_string()))?;
            let frame =
                read_frame(&mut recv).await.map_err(stream_err)?.ok_or_else(|| stream_err("no answer".into()))?;
            let head: H = codec::decode(&frame)
                .map_err(|e| MeshError::Codec { addr: addr.to_string(), message: e.to_string() })?;
            Ok::<_, MeshError>((head, recv))
        };
        let (head, recv) = tokio::time::timeout(timeout, head)
            .await
            .map_err(|_| MeshError::Timeout { addr: addr.to_string(), timeout })??;
        let body = futures::stream::unfold(recv, |mut recv| async move {
            match read_frame(&mut recv).await {
                Ok(Some(chunk)) => Some((bytes::Bytes::from(chunk), recv)),
                _ => None,
            }
        });
        Ok((head, Box::pin(body)))
    }
}

async fn serve_stream<C: ControlHandler, S: StreamHandler>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    control: &C,
    streams: &S,
) -> anyhow::Result<()> {
    let bytes = recv.read_to_end(MAX_MESSAGE).await?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "received").increment(bytes.len() as u64);
    let resp = match bytes.split_first() {
        Some((&STREAMED, rest)) => {
            let req = match codec::decode::<S::Request>(rest) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "mesh: undecodable streamed request");
                    return Ok(());
                }
            };
            // Streamed: the head, then each body chunk as a frame, then the end of the stream.
            use futures::StreamExt;
            let (head, mut body) = streams.handle(req).await;
            write_frame(&mut send, &codec::encode(&head)?).await?;
            // A peer that stops reading (its agent went away) ends the body here at once, not
            // at the next write: a server stream may be idle for long.
            let stopped = send.stopped();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    chunk = body.next() => match chunk {
                        Some(chunk) => write_frame(&mut send, &chunk).await?,
                        None => break,
                    },
                    _ = &mut stopped => return Ok(()),
                }
            }
            send.finish()?;
            let _ = send.stopped().await;
            return Ok(());
        }
        Some((&CONTROL, rest)) => match codec::decode::<C::Request>(rest) {
            Ok(req) => control.handle(req).await,
            Err(e) => control.undecodable(format!("undecodable request: {e}")),
        },
        Some((k, _)) => control.undecodable(format!("unknown call kind {k}")),
        None => control.undecodable("empty request".into()),
    };
    let out = codec::encode(&resp)?;
    send.write_all(&out).await?;
    send.finish()?;
    metrics::counter!("joch_mesh_bytes_total", "dir" => "sent").increment(out.len() as u64);
    // Keep the stream open until the peer has read everything.
    let _ = send.stopped().await;
    Ok(())
}
