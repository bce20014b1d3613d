//! A real 3-node cluster: replication, fleet-wide acknowledgement, linearizable reads, crash
//! recovery, and a late joiner brought up by snapshot.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, http_get, joch, servers, start_extra_node, TestCluster};

#[test]
fn three_nodes_replicate_and_quarantine_is_acknowledged_fleet_wide() {
    let c = TestCluster::up(3, &[]);
    c.cli(1, &["mcp", "add", "github", "--endpoint", "https://mcp.example.com/github", "--auth", "oauth2"]).ok();
    // Linearizable reads by default: visible on the other nodes at once.
    for n in [2, 3] {
        let v = c.cli(n, &["mcp", "ls", "-o", "json"]).ok().json();
        assert_eq!(servers(&v), [("github".to_string(), "Ready".to_string())], "node {n}");
    }

    let leader = c.leader();
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    c.cli(1, &["mcp", "add", "suspicious-server", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    let q = c
        .cli(
            follower,
            &["mcp", "quarantine", "suspicious-server", "--reason", "schema drift detected at 03:14", "-o", "json"],
        )
        .ok()
        .json();
    let index = q["logIndex"].as_u64().unwrap();
    assert_eq!(q["changed"], true);
    assert_eq!(q["fleet"]["complete"], true, "{q}");
    let members = q["fleet"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["applied"], true, "{m}");
        assert!(m["appliedIndex"].as_u64().unwrap() >= index, "{m}");
    }
    // Acknowledged means applied everywhere: even a stale (local) read on every node shows it.
    for n in 1..=3 {
        let v = c.cli(n, &["mcp", "ls", "--stale", "-o", "json"]).ok().json();
        assert!(servers(&v).contains(&("suspicious-server".into(), "Quarantined".into())), "node {n}: {v}");
        let d = c.cli(n, &["describe", "mcpserver", "suspicious-server", "-o", "json"]).ok().json();
        assert_eq!(d["status"]["quarantine"]["reason"], "schema drift detected at 03:14");
        assert_eq!(d["status"]["quarantine"]["since"]["by"], "bootstrap");
        assert_eq!(d["status"]["quarantine"]["since"]["logIndex"].as_u64(), Some(index));
    }

    // Repeating a quarantine is idempotent: acknowledged, nothing changes, the first one stands.
    let again =
        c.cli(leader, &["mcp", "quarantine", "suspicious-server", "--reason", "again", "-o", "json"]).ok().json();
    assert_eq!(again["changed"], false);
    assert_eq!(again["fleet"]["complete"], true);
    let d = c.cli(follower, &["describe", "mcpserver", "suspicious-server", "-o", "json"]).ok().json();
    assert_eq!(d["status"]["quarantine"]["since"]["logIndex"].as_u64(), Some(index));

    // Pin, upgrade and history, each through a different node.
    c.cli(2, &["mcp", "pin", "github", "--to", "1.2.0"]).ok();
    c.cli(3, &["mcp", "upgrade", "github", "--to", "1.3.0"]).ok();
    let h = c.cli(1, &["mcp", "history", "github", "-o", "json"]).ok().json();
    let lines: Vec<(String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["action"].as_str().unwrap().to_string(), l["detail"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        lines,
        [
            ("create_server".to_string(), "registered (https://mcp.example.com/github) (trust 0.25)".to_string()),
            ("pin".to_string(), "pinned to 1.2.0 (was unpinned)".to_string()),
            ("upgrade".to_string(), "upgraded 1.2.0 -> 1.3.0".to_string()),
        ]
    );
    assert!(h.as_array().unwrap().iter().all(|l| l["actor"] == "bootstrap"));

    // The status command sees every member.
    let s = c.cli(3, &["cluster", "status", "-o", "json"]).ok().json();
    assert_eq!(s["leader"].as_u64(), Some(leader));
    let ms = s["members"].as_array().unwrap();
    assert_eq!(ms.len(), 3);
    assert!(ms.iter().all(|m| m["reachable"] == true && m["voter"] == true), "{s}");
    assert_eq!(ms.iter().filter(|m| m["role"] == "leader").count(), 1);
    for n in &c.nodes {
        let r = http_get(&format!("{}/readyz", n.mcp_url));
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("\"ready\":true"), "node {}: {r}", n.id);
        // The containers' health check: `joch probe` exits 0 on a ready node.
        let url = format!("{}/readyz", n.mcp_url);
        let out = joch(["probe", url.as_str()]);
        assert_eq!(out.code, 0, "node {}: {out:?}", n.id);
    }
    let url = format!("{}/no-such-page", c.nodes[0].mcp_url);
    let out = joch(["probe", url.as_str()]);
    assert!(out.code == 1 && out.stdout.contains("404"), "{out:?}");
}

#[test]
fn leader_crash_and_full_restart_lose_no_acknowledged_write() {
    let mut c = TestCluster::up(3, &[]);
    c.cli(1, &["mcp", "add", "s1", "--endpoint", "http://127.0.0.1:9/s1"]).ok();
    let old = c.leader();
    c.kill9(old);
    let survivor = c.nodes.iter().map(|n| n.id).find(|id| *id != old).unwrap();

    // Writes continue through the survivors (the CLI call waits out the election).
    c.cli(survivor, &["mcp", "add", "s2", "--endpoint", "http://127.0.0.1:9/s2"]).ok();
    let q = c.cli(survivor, &["mcp", "quarantine", "s1", "--reason", "leader died", "-o", "json"]);
    // Committed, but the dead node cannot confirm: exit code 3, and the reply says who did not apply.
    assert_eq!(q.code, 3, "{q:?}");
    let q = q.json();
    assert_eq!(q["fleet"]["complete"], false);
    let missing: Vec<u64> = q["fleet"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["applied"] == false)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(missing, [old]);
    let new = c.leader();
    assert_ne!(new, old);

    // The killed node restarts on its data and catches up.
    c.restart();
    let want = vec![("s1".to_string(), "Quarantined".to_string()), ("s2".to_string(), "Ready".to_string())];
    eventually("the restarted node to catch up", Duration::from_secs(30), || {
        let out = c.cli(old, &["mcp", "ls", "--stale", "-o", "json"]);
        (out.code == 0 && servers(&out.json()) == want).then_some(())
    });

    // Crash every node at once, start them again: every acknowledged write is there.
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    c.restart();
    for id in [1, 2, 3] {
        let v = c.cli(id, &["mcp", "ls", "-o", "json"]).ok().json();
        assert_eq!(servers(&v), want, "node {id}");
    }
    let h = c.cli(2, &["mcp", "history", "s1", "-o", "json"]).ok().json();
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
}

#[test]
fn late_joiner_is_brought_up_by_snapshot() {
    let c = TestCluster::up(3, &["--snapshot-after-logs", "20", "--logs-to-keep", "0"]);
    for i in 0..40 {
        c.cli(1 + (i % 3), &["mcp", "add", &format!("s{i}"), "--endpoint", &format!("http://127.0.0.1:9/s{i}")]).ok();
    }
    let leader = c.leader();
    eventually("the leader to purge its log", Duration::from_secs(30), || {
        let s = c.cli(leader, &["cluster", "status", "-o", "json"]).ok().json();
        let me = s["members"].as_array().unwrap().iter().find(|m| m["id"].as_u64() == Some(leader)).cloned().unwrap();
        (me["purged_index"].as_u64().unwrap_or(0) > 0).then_some(())
    });

    joch(["cluster", "ca", "issue", "--dir", &c.pki_dir().display().to_string(), "--id", "4"]).ok();
    let (mut child, addrs) =
        start_extra_node(c.dir.path(), &c.pki_dir(), 4, "raft: { snapshot_after_logs: 20, logs_to_keep: 0 }\n");
    let mesh = addrs["mesh"].as_str().unwrap().to_string();
    let admin = format!("https://{}", addrs["admin"].as_str().unwrap());
    let mcp = format!("http://{}", addrs["mcp"].as_str().unwrap());
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    // Through a follower: the membership change is forwarded to the leader.
    let m = c
        .cli(
            follower,
            &["cluster", "add", "--id", "4", "--mesh", &mesh, "--admin", &admin, "--mcp", &mcp, "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(m["voters"], serde_json::json!([1, 2, 3, 4]), "{m}");

    let names = |v: &Value| servers(v).len();
    // A linearizable read through node 4 sees everything at once; its local copy converges.
    let out = c.run_at(&admin, &["mcp", "ls", "-o", "json"]).ok();
    assert_eq!(names(&out.json()), 40, "node 4 has the whole registry once it is a voter");
    eventually("node 4's local copy to hold every server", Duration::from_secs(10), || {
        let out = c.run_at(&admin, &["mcp", "ls", "--stale", "-o", "json"]).ok();
        (names(&out.json()) == 40).then_some(())
    });
    let s = c.cli(1, &["cluster", "status", "-o", "json"]).ok().json();
    let n4 = s["members"].as_array().unwrap().iter().find(|m| m["id"] == 4).cloned().unwrap();
    assert!(n4["snapshot_index"].as_u64().unwrap() > 0, "node 4 holds a snapshot: {n4}");
    assert_eq!(n4["reachable"], true);

    // A linearizable read through the new node.
    c.run_at(&admin, &["describe", "mcpserver", "s39", "-o", "json"]).ok();

    // A fifth node joins from its own side (`cluster join --via` any member).
    joch(["cluster", "ca", "issue", "--dir", &c.pki_dir().display().to_string(), "--id", "5"]).ok();
    let (mut child5, addrs5) = start_extra_node(c.dir.path(), &c.pki_dir(), 5, "");
    let admin5 = format!("https://{}", addrs5["admin"].as_str().unwrap());
    let m = c.run_at(&admin5, &["cluster", "join", "--via", &c.node(3).admin_url, "-o", "json"]).ok().json();
    assert_eq!(m["voters"], serde_json::json!([1, 2, 3, 4, 5]), "{m}");
    let out = c.run_at(&admin5, &["mcp", "ls", "-o", "json"]).ok();
    assert_eq!(names(&out.json()), 40);

    // Remove both again.
    c.cli(2, &["cluster", "remove", "--id", "5"]).ok();
    let m = c.cli(2, &["cluster", "remove", "--id", "4", "-o", "json"]).ok().json();
    assert_eq!(m["voters"], serde_json::json!([1, 2, 3]), "{m}");
    let s = c.cli(1, &["cluster", "status", "-o", "json"]).ok().json();
    assert_eq!(s["members"].as_array().unwrap().len(), 3, "{s}");
    for ch in [&mut child, &mut child5] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}

#[test]
fn a_bare_node_is_initialised_alone_and_only_once() {
    let c = TestCluster::up(1, &[]); // only for its CA
    joch(["cluster", "ca", "issue", "--dir", &c.pki_dir().display().to_string(), "--id", "7"]).ok();
    let (mut child, addrs) = start_extra_node(c.dir.path(), &c.pki_dir(), 7, "");
    let admin = format!("https://{}", addrs["admin"].as_str().unwrap());
    let e = c.run_at(&admin, &["mcp", "ls"]).fails(1);
    assert!(e.contains("not part of an initialised cluster"), "{e}");
    c.run_at(&admin, &["cluster", "init"]).ok();
    let e = c.run_at(&admin, &["cluster", "init"]).fails(1);
    assert!(e.contains("node 7: the cluster is already initialised"), "{e}");
    eventually("node 7 to lead its own cluster", Duration::from_secs(30), || {
        let s = c.run_at(&admin, &["cluster", "status", "-o", "json"]).ok().json();
        (s["leader"].as_u64() == Some(7)).then_some(())
    });
    c.run_at(&admin, &["mcp", "add", "solo", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    let v = c.run_at(&admin, &["mcp", "ls", "-o", "json"]).ok().json();
    assert_eq!(servers(&v), [("solo".to_string(), "Ready".to_string())]);
    let _ = child.kill();
    let _ = child.wait();
}

/// What the compose file runs at every start: everything once, then only what added nodes need.
#[test]
fn scaffold_writes_a_cluster_once_and_then_only_added_nodes() {
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path().join("conf");
    let ds = d.to_str().unwrap();
    let out = joch(["cluster", "scaffold", ds, "--nodes", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let token = std::fs::read_to_string(d.join("admin-token")).unwrap();
    let node2 = std::fs::read_to_string(d.join("node2.yaml")).unwrap();
    for want in ["id: 2", "mesh: node2:7400", "admin: node2:8443", "allow_plain_http: true", "kek_file:"] {
        assert!(node2.contains(want), "{want:?} missing from:\n{node2}");
    }
    assert!(std::fs::read_to_string(d.join("pki").join("node2.hosts")).unwrap().contains("node2"));
    // Again: nothing changes.
    let out = joch(["cluster", "scaffold", ds, "--nodes", "2"]);
    assert!(out.code == 0 && out.stdout.contains("left as it is"), "{out:?}");
    assert_eq!(std::fs::read_to_string(d.join("admin-token")).unwrap(), token);
    // A third node: its certificate and config, the rest kept.
    let out = joch(["cluster", "scaffold", ds, "--nodes", "3"]);
    assert!(out.code == 0 && out.stdout.contains("added node3"), "{out:?}");
    assert!(d.join("node3.yaml").exists() && d.join("pki").join("node3.pem").exists());
    assert_eq!(std::fs::read_to_string(d.join("node2.yaml")).unwrap(), node2);
    assert_eq!(std::fs::read_to_string(d.join("admin-token")).unwrap(), token);
}
