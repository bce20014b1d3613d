//! Trust end to end: a publisher's key pair (`joch mcp keygen`), the publisher trusted
//! (`joch trust publisher add`), a manifest signed (`joch mcp sign`), checked (`joch mcp
//! verify`) and applied: its signature raises the server's score on every node, a tampered copy
//! does not, and `minTrustScore` denies the server below it with `trust-score-too-low`. The
//! allow-list and the weights move scores, with a history line saying why. Then an agent's
//! AgBOM after calls through two servers (a fastmcp server over HTTP and mcp-server-time over
//! stdio), as CycloneDX 1.6 checked by CycloneDX's own validator, and its diff after an upgrade.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, http, FastMcp, TestCluster};

fn manifest(name: &str, url: &str, security: &str) -> String {
    format!(
        "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  endpoint:\n    url: \"{url}\"\n  security:\n{security}"
    )
}

/// The score and the components of a server, as node `node` has them (its local copy).
fn trust(c: &TestCluster, node: u64, name: &str) -> Value {
    c.cli(node, &["mcp", "trust", name, "-o", "json"]).ok().json()["trust"].clone()
}

fn component<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["components"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

fn initialize(c: &TestCluster, node: usize, server: &str) -> crate::harness::HttpReply {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let h = [("content-type", "application/json"), ("accept", "application/json, text/event-stream"), c.auth()];
    http("POST", &format!("{}/mcp/{server}", c.nodes[node].mcp_url), &h, init.as_bytes())
}

#[test]
fn a_signed_manifest_raises_the_score_a_tampered_one_does_not_and_min_trust_score_is_enforced() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    let dir = c.dir.path();
    let key = dir.join("acme.key");
    let public = c.cli(1, &["mcp", "keygen", "--out", key.to_str().unwrap()]).ok().stdout;
    assert!(public.trim().starts_with("ed25519:"), "{public}");
    let pub_file = format!("{}.pub", key.display());
    c.cli(2, &["trust", "publisher", "add", "acme", "--key", &pub_file]).ok();
    let shown = c.cli(3, &["trust", "publisher", "ls"]).ok().stdout;
    assert!(shown.contains("acme") && shown.contains(public.trim()), "{shown}");

    // An unsigned manifest of a trusted publisher's server, and the same signed.
    let security = "    trustedPublisher: acme\n    minTrustScore: 0.65\n";
    let unsigned = dir.join("toolbox.yaml");
    std::fs::write(&unsigned, manifest("toolbox", &up.url, security)).unwrap();
    let signed = dir.join("toolbox.signed.yaml");
    c.cli(
        1,
        &[
            "mcp",
            "sign",
            "-f",
            unsigned.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--publisher",
            "acme",
            "--out",
            signed.to_str().unwrap(),
        ],
    )
    .ok();
    let checked = c.cli(2, &["mcp", "verify", "-f", signed.to_str().unwrap()]).ok().stdout;
    assert!(checked.contains("toolbox") && checked.contains("verifies"), "{checked}");
    // A copy of the signed manifest under another name: the name is signed, so it does not verify.
    let tampered = dir.join("evil.yaml");
    std::fs::write(&tampered, std::fs::read_to_string(&signed).unwrap().replace("name: toolbox", "name: evil"))
        .unwrap();
    let out = c.cli(2, &["mcp", "verify", "-f", tampered.to_str().unwrap()]);
    assert!(out.code == 1 && out.stdout.contains("FAILED") && out.stdout.contains("does NOT verify"), "{}", out.stdout);
    std::fs::write(dir.join("plain.yaml"), manifest("plain", &up.url, security)).unwrap();

    for f in [&signed, &tampered, &dir.join("plain.yaml")] {
        c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();
    }
    // Every node holds the same scores: the signature counts for `toolbox` only.
    let good = eventually("the first discovery of toolbox", Duration::from_secs(20), || {
        let t = trust(&c, 3, "toolbox");
        (component(&t, "poisoning")["value"] == 1.0).then_some(t)
    });
    assert_eq!(component(&good, "signature")["value"], 1.0, "{good}");
    assert!(component(&good, "signature")["detail"].as_str().unwrap().contains("signature by acme verifies"), "{good}");
    assert_eq!(component(&good, "publisher")["value"], 1.0, "{good}");
    let evil = trust(&c, 2, "evil");
    assert_eq!(component(&evil, "signature")["value"], 0.0, "{evil}");
    assert!(component(&evil, "signature")["detail"].as_str().unwrap().contains("does not verify"), "{evil}");
    let plain = trust(&c, 1, "plain");
    assert_eq!(component(&plain, "signature")["detail"], "the manifest is not signed", "{plain}");
    let (g, e) = (good["score"].as_f64().unwrap(), evil["score"].as_f64().unwrap());
    assert!(g >= 0.65 && e < 0.65 && g > e, "toolbox {g}, evil {e}");
    for n in 1..=3 {
        assert_eq!(trust(&c, n, "toolbox")["score"], good["score"], "node {n}");
    }

    // minTrustScore: the signed server serves (the official SDK client, through node 2), the
    // others are denied on every node with the score and why.
    let r = c.sdk(&["probe", "toolbox", r#"[["add", {"a": 2, "b": 3}]]"#, &c.nodes[1].mcp_url]);
    assert_eq!(r["calls"]["add"], "5", "{r}");
    for node in 0..3 {
        let r = initialize(&c, node, "evil");
        let e = r.json();
        assert_eq!((r.status, e["error"]["code"].as_i64()), (403, Some(-32025)), "node {node}: {r:?}");
        assert_eq!(e["error"]["data"]["reason"], "trust-score-too-low", "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains("below its minTrustScore 0.65") && m.contains("does not verify"), "{m}");
    }
    let table = c.cli(1, &["mcp", "trust", "evil"]).ok().stdout;
    assert!(table.contains("BELOW") && table.contains("COMPONENT") && table.contains("signature"), "{table}");

    // The third-party allow-list lifts `plain` over its minimum; the history says why.
    let list = dir.join("allow.yaml");
    std::fs::write(&list, "source: secteam-2026-12\nservers: [plain]\n").unwrap();
    c.cli(3, &["trust", "allowlist", "apply", "-f", list.to_str().unwrap()]).ok();
    let listed = trust(&c, 1, "plain");
    assert_eq!(component(&listed, "allowlist")["detail"], "on secteam-2026-12 (server plain)", "{listed}");
    assert!(listed["score"].as_f64().unwrap() > plain["score"].as_f64().unwrap());
    let hist = c.cli(1, &["mcp", "history", "plain", "-o", "json"]).ok().json();
    let trusted: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["detail"].as_str())
        .filter(|d| d.contains("allow-list"))
        .collect();
    assert!(trusted.len() == 1 && trusted[0].starts_with("trust "), "{hist}");
    // A bad allow-list file is refused, naming the field.
    std::fs::write(&list, "servers: [plain]\nservrs: [x]\n").unwrap();
    let err = c.cli(3, &["trust", "allowlist", "apply", "-f", list.to_str().unwrap()]).fails(1);
    assert!(err.contains("unknown field `servrs`"), "{err}");
    // Weights: signature counts for everything, publisher for nothing.
    c.cli(
        2,
        &[
            "trust",
            "weights",
            "--publisher",
            "0",
            "--stability",
            "0",
            "--poisoning",
            "0",
            "--traffic",
            "0",
            "--allowlist",
            "0",
        ],
    )
    .ok();
    assert_eq!(trust(&c, 3, "toolbox")["score"], 1.0);
    assert_eq!(trust(&c, 3, "evil")["score"], 0.0);
    let err = c.cli(2, &["trust", "weights", "--signature=-1"]).fails(1);
    assert!(err.contains("weights.signature"), "{err}");
    // Removing the publisher takes the signature's worth away.
    c.cli(1, &["trust", "publisher", "rm", "acme"]).ok();
    assert_eq!(trust(&c, 2, "toolbox")["score"], 0.0);
    let r = initialize(&c, 0, "toolbox");
    assert_eq!(r.json()["error"]["code"].as_i64(), Some(-32025), "{r:?}");
}

#[test]
fn an_agents_agbom_lists_the_servers_it_called_and_its_diff_shows_an_upgrade() {
    let c = TestCluster::up_stdio(3);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "github", "--endpoint", &up.url]).ok();
    let time_bin = crate::harness::venv_bin().join("mcp-server-time").display().to_string();
    c.cli(1, &["mcp", "add", "time", "--transport", "stdio", "--command", &time_bin, "--allow-stdio"]).ok();
    c.cli(1, &["mcp", "add", "unused", "--endpoint", &up.url]).ok();
    let r = c.sdk(&["probe", "github", r#"[["add", {"a": 1, "b": 2}]]"#, &c.nodes[0].mcp_url]);
    assert_eq!(r["calls"]["add"], "3", "{r}");
    let r = c.sdk(&["probe", "time", r#"[["get_current_time", {"timezone": "UTC"}]]"#, &c.nodes[2].mcp_url]);
    assert!(r["calls"]["get_current_time"].as_str().unwrap().contains("UTC"), "{r}");

    // Both servers, discovered by the leader on registration, with their versions and tools.
    let bom = eventually("an AgBOM with both servers discovered", Duration::from_secs(30), || {
        let b = c.cli(2, &["agbom", "show", "dev-agent", "-o", "json"]).ok().json();
        let servers = b["servers"].as_array()?;
        (servers.len() == 2 && servers.iter().all(|s| !s["serverVersion"].is_null())).then_some(b)
    });
    let servers = bom["servers"].as_array().unwrap();
    let by = |n: &str| servers.iter().find(|s| s["name"] == n).unwrap();
    assert_eq!(by("github")["serverVersion"], "1.4.2", "{bom}");
    assert!(by("github")["tools"].as_array().unwrap().iter().any(|t| t["name"] == "add"), "{bom}");
    assert_eq!(by("time")["serverName"], "mcp-time", "{bom}");
    assert_eq!(by("time")["transport"], "stdio");
    for s in servers {
        assert!(s["calls"].as_u64().unwrap() >= 1 && s["firstUsedMs"].as_u64().unwrap() > 0, "{s}");
        assert!(s["trustScore"].as_f64().is_some(), "{s}");
    }
    let table = c.cli(3, &["agbom", "show", "dev-agent"]).ok().stdout;
    assert!(table.contains("AgBOM of agent dev-agent: 2 MCP server(s)") && table.contains("github"), "{table}");
    assert!(!table.contains("unused"), "{table}");

    // CycloneDX 1.6, checked by CycloneDX's own library against the schema.
    let cdx = c.cli(1, &["agbom", "show", "dev-agent", "-o", "cyclonedx"]).ok().stdout;
    let mut check = Command::new(crate::harness::python())
        .arg(crate::harness::e2e("cyclonedx_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(cdx.as_bytes()).unwrap();
    let res = check.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "{}\n{}\n{cdx}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let b: Value = serde_json::from_str(&cdx).unwrap();
    assert_eq!(b["metadata"]["component"]["name"], "dev-agent");
    let names: Vec<&str> = b["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"github") && names.contains(&"time"));

    // An upgrade (pin, then upgrade) shows in the diff: who, what, when.
    c.cli(1, &["mcp", "pin", "github", "--to", "1.4.2"]).ok();
    c.cli(2, &["mcp", "upgrade", "github", "--to", "1.5.0"]).ok();
    let diff = c.cli(3, &["agbom", "diff", "dev-agent", "--since", "1h", "-o", "json"]).ok().json();
    let changes = diff["changes"].as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        changes.iter().map(|c| (c["server"].as_str().unwrap(), c["action"].as_str().unwrap())).collect();
    assert!(actions.contains(&("github", "pin")) && actions.contains(&("github", "upgrade")), "{diff}");
    assert!(actions.contains(&("time", "FirstUsed")), "{diff}");
    let upgrade = changes.iter().find(|c| c["action"] == "upgrade").unwrap();
    assert!(upgrade["detail"].as_str().unwrap().contains("1.5.0") && upgrade["actor"].as_str().is_some(), "{upgrade}");
    let table = c.cli(3, &["agbom", "diff", "dev-agent", "--since", "1h"]).ok().stdout;
    assert!(table.contains("upgrade") && table.contains("1.5.0"), "{table}");
    // Nothing before: an empty diff since the future.
    let none = c.cli(3, &["agbom", "diff", "dev-agent", "--since", "2099-01-01T00:00:00Z"]).ok().stdout;
    assert!(none.contains("no changes"), "{none}");
}
