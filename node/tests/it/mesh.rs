//! The mesh refuses peers whose certificate the cluster CA did not sign.

use std::sync::Arc;
use std::time::Duration;

use joch_node::cluster::message::{ControlRequest, ControlResponse};
use joch_node::mesh::pki::{self, PkiDir};
use joch_node::mesh::tls::NodeTls;
use joch_node::mesh::{BodyStream, ControlHandler, Mesh, StreamHandler};
use joch_node::proxy::forward::{McpForward, McpHead};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::harness::{metric, TestCluster};

struct Nobody;

impl ControlHandler for Nobody {
    type Request = ControlRequest;
    type Response = ControlResponse;

    async fn handle(&self, _req: ControlRequest) -> ControlResponse {
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
async fn mesh_refuses_a_peer_from_another_ca() {
    let c = TestCluster::up(1, &[]);
    let node = c.node(1).clone();
    let cluster_pki = PkiDir(c.pki_dir());
    let foreign_dir = TempDir::new().unwrap();
    let foreign = PkiDir(foreign_dir.path().to_path_buf());
    pki::init_ca(&foreign).unwrap();
    pki::issue_node(&foreign, 7, &[]).unwrap();
    pki::issue_node(&cluster_pki, 8, &[]).unwrap();
    let t = Duration::from_secs(3);

    // Control: a peer with a certificate from the cluster CA is answered.
    let good = mesh(&cluster_pki.ca_cert(), &cluster_pki, 8);
    match status(&good, &node.mesh_addr, t).await {
        Ok(ControlResponse::Status(s)) => assert_eq!(s.id, 1),
        other => panic!("a peer from the cluster CA must be answered: {other:?}"),
    }

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
    tokio::spawn(foreign_server.clone().serve(Arc::new(Nobody), Arc::new(Nobody), stop.clone()));
    let r = status(&good, &addr, t).await;
    assert!(matches!(r, Err(joch_node::mesh::MeshError::Connect { .. })), "{r:?}");
    stop.cancel();
}
