//! The mesh refuses peers whose certificate the cluster CA did not sign, peers that are not
//! members, and a member's certificate presented at another member's address.

use std::sync::Arc;
use std::time::Duration;

use joch_node::cluster::message::{ControlRequest, ControlResponse};
use joch_node::mesh::pki::{self, PkiDir};
use joch_node::mesh::tls::NodeTls;
use joch_node::mesh::{BodyStream, ControlHandler, Mesh, StreamHandler};
use joch_node::proxy::forward::{McpForward, McpHead};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, metric, start_extra_node, TestCluster};

/// A test peer that answers nothing useful, counting what reaches it.
#[derive(Default)]
struct Nobody(std::sync::atomic::AtomicUsize);

impl ControlHandler for Nobody {
    type Request = ControlRequest;
    type Response = ControlResponse;

    async fn handle(&self, _req: ControlRequest) -> ControlResponse {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ControlResponse::BadRequest("test peer".into())
    }

    fn undecodable(&self, why: String) -> ControlResponse {
        ControlResponse::BadRequest(why)
    }
}

impl StreamHandler for Nobody {
    type Request = McpForward;
    type Head = McpHead;

    async fn handle(&self, _req: McpForward) -> (McpHead, BodyStream) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (McpHead { status: 404, content_type: None }, Box::pin(futures::stream::empty()))
    }
}

async fn status(m: &Mesh, addr: &str, t: Duration) -> Result<ControlResponse, joch_node::mesh::MeshError> {
    m.call(addr, &ControlRequest::Status, t).await
}

fn mesh(ca: &std::path::Path, pki: &PkiDir, id: u64) -> Arc<Mesh> {
    let tls = NodeTls::load(ca, &pki.node_cert(id), &pki.node_key(id)).expect("tls");
    Mesh::bind("127.0.0.1:0".parse().unwrap(), &tls).expect("bind")
}

fn handshake_failures(metrics_url: &str) -> u64 {
    metric(metrics_url, "joch_mesh_handshake_failures_total")
}

#[tokio::test]
async fn mesh_refuses_a_peer_from_another_ca_and_serves_members_only() {
    let c = TestCluster::up(1, &[]);
    let node = c.node(1).clone();
    let cluster_pki = PkiDir(c.pki_dir());
    let foreign_dir = TempDir::new().unwrap();
    let foreign = PkiDir(foreign_dir.path().to_path_buf());
    pki::init_ca(&foreign).unwrap();
    pki::issue_node(&foreign, 7, &[], None).unwrap();
    pki::issue_node(&cluster_pki, 8, &[], None).unwrap();
    pki::issue_node(&cluster_pki, 9, &[], None).unwrap();
    let t = Duration::from_secs(3);

    // A node not in a cluster yet answers any peer of its CA (that is how it joins one)...
    let (mut bare, addrs) = start_extra_node(c.dir.path(), &c.pki_dir(), 9, "");
    let good = mesh(&cluster_pki.ca_cert(), &cluster_pki, 8);
    match status(&good, addrs["mesh"].as_str().unwrap(), t).await {
        Ok(ControlResponse::Status(s)) => assert_eq!(s.id, 9),
        other => panic!("a bare node answers a peer of its CA: {other:?}"),
    }
    let _ = bare.kill();
    // ...a node in a cluster answers its members only: node 8 is not one.
    let r = status(&good, &node.mesh_addr, t).await;
    assert!(r.is_err(), "a non-member was answered: {r:?}");
    eventually("the refusal counted", Duration::from_secs(5), || {
        (metric(&node.metrics_url, "joch_mesh_peers_refused_total") > 0).then_some(())
    });
    // Not even with the node's own certificate, from another address.
    let copy = mesh(&cluster_pki.ca_cert(), &cluster_pki, 1);
    assert!(status(&copy, &node.mesh_addr, t).await.is_err());

    // A peer that trusts the cluster CA but presents a certificate from another CA: the node
    // refuses it during the handshake.
    let before = handshake_failures(&node.metrics_url);
    let impostor = mesh(&cluster_pki.ca_cert(), &foreign, 7);
    let r = status(&impostor, &node.mesh_addr, t).await;
    assert!(r.is_err(), "the node answered a peer with a foreign certificate: {r:?}");
    let after = handshake_failures(&node.metrics_url);
    assert!(after > before, "the node counts the refused handshake ({before} -> {after})");

    // A peer entirely from another CA does not trust the node either.
    let stranger = mesh(&foreign.ca_cert(), &foreign, 7);
    assert!(status(&stranger, &node.mesh_addr, t).await.is_err());

    // And the cluster's side refuses a server from another CA.
    let foreign_server = mesh(&foreign.ca_cert(), &foreign, 7);
    let addr = foreign_server.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(foreign_server.clone().serve(Arc::new(Nobody::default()), Arc::new(Nobody::default()), stop.clone()));
    let r = status(&good, &addr, t).await;
    assert!(matches!(r, Err(joch_node::mesh::MeshError::Connect { .. })), "{r:?}");
    stop.cancel();
}

// Multi-threaded: the impostor must answer handshakes while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_node_2_presented_at_node_3s_address_is_refused() {
    let c = TestCluster::up(3, &[]);
    let pki = PkiDir(c.pki_dir());
    let three = c.node(3).clone();
    c.kill9(3);
    // An impostor with node 2's certificate (signed by the cluster CA) where node 3 lived, once
    // the port is free (a killed process's threads may still be closing its sockets).
    let impostor = eventually("node 3's mesh port to be free", Duration::from_secs(10), || {
        let tls = NodeTls::load(&pki.ca_cert(), &pki.node_cert(2), &pki.node_key(2)).expect("tls");
        Mesh::bind(three.mesh_addr.parse().unwrap(), &tls).ok()
    });
    let seen = Arc::new(Nobody::default());
    let stop = CancellationToken::new();
    tokio::spawn(impostor.clone().serve(seen.clone(), seen.clone(), stop.clone()));
    // Node 1 keeps dialing node 3 (heartbeats, status): it refuses the certificate.
    let err = eventually("node 1 to report node 3's certificate", Duration::from_secs(20), || {
        let st = c.cli(1, &["cluster", "status", "-o", "json"]);
        let v = (st.code == 0).then(|| st.json())?;
        let m = v["members"].as_array()?.iter().find(|m| m["id"] == 3)?.clone();
        let e = m["error"].as_str()?.to_string();
        (m["reachable"] == false && e.contains("certificate")).then_some(e)
    });
    assert!(err.contains("node3.joch") || err.contains("NotValidForName"), "{err}");
    assert_eq!(seen.0.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the impostor");
    // And as a client, from node 3's address, claiming to be node 2: refused by node 1.
    let r = status(&impostor, &c.node(1).mesh_addr, Duration::from_secs(3)).await;
    assert!(r.is_err(), "node 1 answered node 2's certificate from node 3's address: {r:?}");
    stop.cancel();
}

/// The certificate node `addr` (HOST:PORT) serves over TLS, verified with the CA `ca`.
async fn served_certificate(ca: &std::path::Path, addr: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("a verified TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn first_cert(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let c = TestCluster::up(3, &[]);
    let pki = PkiDir(c.pki_dir());
    let admin2 = c.node(2).admin_url.strip_prefix("https://").unwrap().to_string();
    let old = first_cert(&pki.node_cert(2));
    assert_eq!(served_certificate(&pki.ca_cert(), &admin2).await, old);

    let out = crate::harness::joch([
        "cluster",
        "cert",
        "renew",
        "--dir",
        pki.0.to_str().unwrap(),
        "--id",
        "2",
        "--days",
        "30",
    ])
    .ok();
    assert!(out.stderr.contains("valid 30 days") || out.stdout.contains("valid 30 days"), "{out:?}");
    let new = first_cert(&pki.node_cert(2));
    assert_ne!(new, old);
    let reloads = "joch_certificate_reloads_total{what=\"node\"}";
    eventually("node 2 to reload its certificate", Duration::from_secs(10), || {
        (metric(&c.node(2).metrics_url, reloads) >= 1).then_some(())
    });
    assert_eq!(served_certificate(&pki.ca_cert(), &admin2).await, new, "the admin API serves the new one");
    assert!(crate::harness::alive(c.node(2).pid), "no restart");
    // The mesh too: node 2's peers accept it on new connections, the fleet acknowledges a write.
    c.cli(2, &["mcp", "add", "s", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    let q = c.cli(2, &["mcp", "quarantine", "s", "--reason", "after renewal", "-o", "json"]).ok().json();
    assert_eq!(q["fleet"]["complete"], true, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_listener_serves_tls_from_files_it_reloads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = TestCluster::up(1, &[]);
    let pki = PkiDir(c.pki_dir());
    // A certificate for the MCP listener (any CA would do; the cluster's is at hand).
    pki::issue_node(&pki, 50, &[], Some(30)).unwrap();
    pki::issue_node(&pki, 9, &[], None).unwrap();
    let tls = format!("mcp_tls: {{ cert: {}, key: {} }}\n", pki.node_cert(50).display(), pki.node_key(50).display());
    let (mut node, addrs) = start_extra_node(c.dir.path(), &c.pki_dir(), 9, &tls);
    let mcp = addrs["mcp"].as_str().unwrap().to_string();
    let served = eventually("the MCP listener to serve TLS", Duration::from_secs(10), || {
        let rt = tokio::runtime::Handle::current();
        let (ca, mcp) = (pki.ca_cert(), mcp.clone());
        std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), served_certificate(&ca, &mcp)).await.ok()
            })
        })
        .join()
        .unwrap()
    });
    assert_eq!(served, first_cert(&pki.node_cert(50)));
    // Plain HTTP gets no answer.
    let mut plain = tokio::net::TcpStream::connect(&mcp).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "plain HTTP answered: {buf:?}");
    // Replaced on disk: served from the next handshake on, no restart.
    pki::renew_node(&pki, 50, Some(30)).unwrap();
    let renewed = first_cert(&pki.node_cert(50));
    eventually("the renewed certificate to be served", Duration::from_secs(10), || {
        let rt = tokio::runtime::Handle::current();
        let (ca, mcp) = (pki.ca_cert(), mcp.clone());
        let got = std::thread::spawn(move || rt.block_on(served_certificate(&ca, &mcp))).join().unwrap();
        (got == renewed).then_some(())
    });
    let _ = node.kill();
}
