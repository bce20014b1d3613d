//! The lease, on real processes with real partitions (iptables on loopback): a node that cannot
//! know what the majority committed stops forwarding within its lease, whatever its role, and
//! cuts what it has in flight; a quarantine committed while it was cut off reaches the upstream
//! from nowhere after the bound the CLI prints. Also the cluster's edges that the lease rests on:
//! a removed member stops serving, a data directory serves only its own node.

use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{eventually, http, joch, recorded, FastMcp, Split, TestCluster};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON_CT: (&str, &str) = ("content-type", "application/json");
/// The default lease.
const LEASE: Duration = Duration::from_secs(6);

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn session(bearer: &str, base: &str) -> String {
    let r =
        http("POST", &format!("{base}/mcp/heldout"), &[ACCEPT, JSON_CT, ("authorization", bearer)], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    r.header("mcp-session-id").expect("session id")
}

fn add(bearer: &str, base: &str, sid: &str) -> crate::harness::HttpReply {
    let body = br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;
    http(
        "POST",
        &format!("{base}/mcp/heldout"),
        &[ACCEPT, JSON_CT, ("authorization", bearer), ("mcp-session-id", sid), ("mcp-protocol-version", "2025-11-25")],
        body,
    )
}

/// A long legacy `slow` call with progress on `base`, read as it streams in a thread. Sends
/// `()` on `progress` at the first progress event; the thread returns the last JSON-RPC
/// message it read (the answer, or the denial that cut it) and when the stream ended.
fn long_call(
    bearer: &str,
    base: &str,
    sid: &str,
    progress: mpsc::Sender<()>,
) -> std::thread::JoinHandle<(Value, Instant)> {
    let rest = base.strip_prefix("http://").unwrap().to_string();
    let (sid, bearer) = (sid.to_string(), bearer.to_string());
    std::thread::spawn(move || {
        let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{"steps":2000},"_meta":{"progressToken":"p"}}}"#;
        let mut s = std::net::TcpStream::connect(&rest).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let req = format!(
            "POST /mcp/heldout HTTP/1.1\r\nHost: {rest}\r\nConnection: close\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\nauthorization: {bearer}\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut last = Value::Null;
        let mut told = false;
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    if !told && v["method"] == "notifications/progress" {
                        let _ = progress.send(());
                        told = true;
                    }
                    last = v;
                }
            }
        }
        (last, Instant::now())
    })
}

/// Calls `add` on `base` until it is denied as stale (503); returns when that happened.
fn until_stale(bearer: &str, base: &str, sid: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let r = add(bearer, base, sid);
        if r.status == 503 {
            assert_eq!(r.json()["error"]["data"]["reason"], "control-plane-stale", "{r:?}");
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "still serving {within:?} after the cut: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The quarantine through `admin_node`, acknowledged by the majority only: (the bound printed
/// for the members that did not confirm, unix seconds).
fn quarantine_on_majority(c: &TestCluster, id: u64) -> f64 {
    let q = c.cli(id, &["mcp", "quarantine", "heldout", "--reason", "during partition", "-o", "json"]);
    assert_eq!(q.code, 3, "acknowledged by the majority, not by the cut-off members: {q:?}");
    let v = q.json();
    assert_eq!(v["fleet"]["complete"], false);
    let by = v["fleet"]["laggardsStopServingByMs"].as_u64().expect("the bound for the laggards");
    let table = c.cli(id, &["mcp", "quarantine", "heldout", "--reason", "again"]);
    assert!(table.stderr.contains("did not confirm; it stops serving by"), "{table:?}");
    by as f64 / 1000.0
}

/// The server `heldout`, a recording upstream, registered through node 1: (its record file, the
/// upstream, to keep alive).
fn heldout(c: &TestCluster) -> (std::path::PathBuf, FastMcp) {
    let rec = c.dir.path().join("upstream.jsonl");
    let up = FastMcp::start_recording(&[], Some(&rec));
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    (rec, up)
}

/// The `add` calls the upstream recorded after `t` (unix seconds).
fn calls_after(rec: &std::path::Path, t: f64) -> Vec<(String, f64)> {
    recorded(rec).into_iter().filter(|(tool, at)| tool == "add" && *at > t).collect()
}

#[test]
fn a_minority_with_the_old_leader_stops_forwarding_within_its_lease_and_cuts_what_it_has_in_flight() {
    let c = TestCluster::up(5, &[]);
    let (rec, _up) = heldout(&c);
    let leader = c.leader();
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap().clone();
    let majority: Vec<_> = c.nodes.iter().filter(|n| n.id != leader && n.id != follower.id).cloned().collect();
    let sid = session(&c.agent_bearer, &follower.mcp_url);
    assert_eq!(add(&c.agent_bearer, &follower.mcp_url, &sid).status, 200);
    // A long call in flight on the follower: under way at the upstream before the cut.
    let (tx, rx) = mpsc::channel();
    let call = long_call(&c.agent_bearer, &follower.mcp_url, &sid, tx);
    rx.recv_timeout(Duration::from_secs(30)).expect("the long call is under way");
    assert!(recorded(&rec).iter().any(|(t, _)| t == "slow"), "the upstream has the call");

    let minority = [c.node(leader).mesh_addr.as_str(), follower.mesh_addr.as_str()];
    let others: Vec<&str> = majority.iter().map(|n| n.mesh_addr.as_str()).collect();
    let mut split = Split::cut(&minority, &others);
    let cut = Instant::now();
    // The follower keeps hearing from its old leader, which cannot reach a quorum any more: it
    // must fail closed within the lease all the same.
    let stale = until_stale(&c.agent_bearer, &follower.mcp_url, &sid, LEASE + Duration::from_secs(4));
    let bound = stale - cut;
    eprintln!(
        "freshness bound measured: the minority follower failed closed {:.2} s after the cut (lease 6 s)",
        bound.as_secs_f64()
    );
    assert!(bound <= LEASE + Duration::from_secs(2), "failed closed {bound:?} after the cut; the lease is 6 s");
    let old_leader_stale = until_stale(&c.agent_bearer, &c.node(leader).mcp_url, &sid, Duration::from_secs(10));
    assert!(old_leader_stale - cut <= LEASE + Duration::from_secs(2));
    // The call in flight was cut when the lease ran out, with the reason.
    let (last, ended) = call.join().unwrap();
    assert_eq!(last["error"]["data"]["reason"], "control-plane-stale", "{last}");
    assert_eq!(last["id"], 7);
    assert!(ended - cut <= LEASE + Duration::from_secs(3), "the call ran on {:?} after the cut", ended - cut);

    // The majority elects a leader and quarantines; nothing reaches the upstream from the
    // minority after the bound the CLI printed for it.
    let by = quarantine_on_majority(&c, majority[0].id);
    let slack = 1.0;
    let late = calls_after(&rec, by + slack);
    assert!(late.is_empty(), "forwarded after the quarantine's bound ({by}): {late:?}");
    for n in &majority {
        let r = add(&c.agent_bearer, &n.mcp_url, &sid);
        assert_eq!(r.status, 403, "{r:?}");
    }

    // Healed: the minority enforces what was committed meanwhile from its first answer.
    split.heal();
    for id in [follower.id, leader] {
        let back = eventually("the healed node to answer again", Duration::from_secs(30), || {
            let r = add(&c.agent_bearer, &c.node(id).mcp_url, &sid);
            (r.status != 503).then_some(r)
        });
        assert_eq!(back.status, 403, "{back:?}");
        assert_eq!(back.json()["error"]["data"]["reason"], "server-quarantined");
    }
}

#[test]
fn a_quarantine_committed_before_the_cut_node_knows_it_is_cut_reaches_nothing_after_the_printed_bound() {
    let c = TestCluster::up(3, &[]);
    let (rec, _up) = heldout(&c);
    let cut_id = c.leader();
    let cut = c.node(cut_id).clone();
    let other = c.nodes.iter().find(|n| n.id != cut_id).unwrap().clone();
    let sid = session(&c.agent_bearer, &cut.mcp_url);
    // Calls through the cut node all along, as an agent behind a balancer would make them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (url, sid, stop, bearer) = (cut.mcp_url.clone(), sid.clone(), stop.clone(), c.agent_bearer.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push((add(&bearer, &url, &sid).status, unix_now()));
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };
    let mut partition = crate::harness::Partition::cut(&cut.mesh_addr);
    // At once, before the cut node's lease can have run out.
    let by = quarantine_on_majority(&c, other.id);
    eventually("the cut node to fail closed", Duration::from_secs(15), || {
        (add(&c.agent_bearer, &cut.mcp_url, &sid).status == 503).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = hammer.join().unwrap();
    assert!(statuses.iter().any(|(s, _)| *s == 200), "the cut node served before the cut: {statuses:?}");
    let late = calls_after(&rec, by + 1.0);
    assert!(late.is_empty(), "the upstream got calls after the bound {by}: {late:?}");
    let served_late: Vec<_> = statuses.iter().filter(|(s, at)| *s == 200 && *at > by + 1.0).collect();
    assert!(served_late.is_empty(), "served after the bound {by}: {served_late:?}");
    partition.heal();
    let back = eventually("the healed node to answer again", Duration::from_secs(30), || {
        let r = add(&c.agent_bearer, &cut.mcp_url, &sid);
        (r.status != 503).then_some(r)
    });
    assert_eq!(back.status, 403, "{back:?}");
}

/// Seed 11 of the chaos suite: a member removed while it cannot hear of it keeps the lease it
/// had. The acknowledgements that follow count it (it no longer receives the log), and it serves
/// nothing after the bound they print.
#[test]
fn a_member_removed_while_cut_off_counts_as_a_laggard_until_its_lease_runs_out() {
    let c = TestCluster::up(3, &[]);
    let (rec, _up) = heldout(&c);
    let leader = c.leader();
    let gone = c.nodes.iter().find(|n| n.id != leader).unwrap().clone();
    let sid = session(&c.agent_bearer, &gone.mcp_url);
    assert_eq!(add(&c.agent_bearer, &gone.mcp_url, &sid).status, 200);
    let mut partition = crate::harness::Partition::cut(&gone.mesh_addr);
    c.cli(leader, &["cluster", "remove", "--id", &gone.id.to_string()]).ok();
    let q = c.cli(leader, &["mcp", "quarantine", "heldout", "--reason", "after a removal", "-o", "json"]);
    assert_eq!(q.code, 3, "the removed node may still serve from its lease: {q:?}");
    let v = q.json();
    let members = v["fleet"]["members"].as_array().unwrap();
    let laggard =
        members.iter().find(|m| m["id"] == gone.id).unwrap_or_else(|| panic!("node {} counted: {v}", gone.id));
    assert_eq!(laggard["applied"], false, "{v}");
    assert!(laggard["error"].as_str().unwrap().contains("left the cluster"), "{v}");
    assert!(members.iter().filter(|m| m["id"] != gone.id).all(|m| m["applied"] == true), "{v}");
    let by = v["fleet"]["laggardsStopServingByMs"].as_u64().unwrap() as f64 / 1000.0;
    eventually("the removed node to fail closed", Duration::from_secs(15), || {
        (add(&c.agent_bearer, &gone.mcp_url, &sid).status == 503).then_some(())
    });
    let late = calls_after(&rec, by + 1.0);
    assert!(late.is_empty(), "the upstream got calls after the bound {by}: {late:?}");
    partition.heal();
}

#[test]
fn a_removed_member_stops_serving_and_a_data_directory_serves_only_its_own_node() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    let gone = c.nodes.iter().find(|n| n.id != c.leader()).unwrap().clone();
    let sid = session(&c.agent_bearer, &gone.mcp_url);
    assert_eq!(add(&c.agent_bearer, &gone.mcp_url, &sid).status, 200);
    c.cli(1, &["cluster", "remove", "--id", &gone.id.to_string()]).ok();
    let removed = Instant::now();
    let r = eventually("the removed node to stop serving", Duration::from_secs(15), || {
        let r = add(&c.agent_bearer, &gone.mcp_url, &sid);
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.json()["error"]["data"]["reason"], "control-plane-stale", "{r:?}");
    assert!(removed.elapsed() <= LEASE + Duration::from_secs(3), "served {:?} after its removal", removed.elapsed());
    let ready = http("GET", &format!("{}/readyz", gone.mcp_url), &[], b"");
    assert_eq!(ready.status, 503, "{ready:?}");

    // Its data directory belongs to it: another id there is refused with the reason.
    let data = c.dir.path().join(format!("node{}", gone.id)).join("data");
    let _ = std::process::Command::new("kill").arg("-9").arg(gone.pid.to_string()).status();
    eventually("the node to be gone", Duration::from_secs(10), || (!crate::harness::alive(gone.pid)).then_some(()));
    let mut args = c.serve_args(7, gone.id, &data);
    args.extend(["--admin-token-file".to_string(), c.dir.path().join("admin-token").display().to_string()]);
    let out = joch(args);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&format!("belongs to node {}", gone.id)) && out.stderr.contains("configured as node 7"),
        "{}",
        out.stderr
    );
}
