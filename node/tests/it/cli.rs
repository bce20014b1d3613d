//! The CLI's contract: the seed commands as written, and a specific error for each bad input.
//! The seed manifests come from docs/examples/github.yaml, so the documented example is tested.

use crate::harness::{joch, TestCluster};

const SEED_SERVER: &str = include_str!("../../../docs/examples/github.yaml");

#[test]
fn seed_commands_and_specific_errors() {
    let c = TestCluster::up(1, &[]);
    let dir = c.dir.path();

    // Seed 000/001 commands, as written.
    c.cli(1, &["mcp", "add", "github", "--endpoint", "https://mcp.example.com/github", "--auth", "oauth2"]).ok();
    c.cli(1, &["mcp", "pin", "github", "--to", "1.2.0"]).ok();
    c.cli(1, &["mcp", "upgrade", "github", "--to", "1.3.0", "--review"]).ok();
    c.cli(1, &["mcp", "approve-tool", "github.create_issue"]).ok();
    c.cli(1, &["mcp", "policy", "set", "github", "--read-only"]).ok();
    c.cli(1, &["mcp", "add", "suspicious-server", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    c.cli(1, &["mcp", "quarantine", "suspicious-server", "--reason", "schema drift detected at 03:14"]).ok();
    c.cli(1, &["mcp", "unquarantine", "suspicious-server"]).ok();
    let d = c.cli(1, &["describe", "mcpserver", "github", "-o", "json"]).ok().json();
    assert_eq!(d["spec"]["auth"]["secretRef"]["name"], "github-mcp-oauth");
    assert_eq!(d["spec"]["security"]["pinnedVersion"], "1.2.0");
    assert_eq!(d["status"]["pendingUpgrade"], "1.3.0");
    assert_eq!(d["status"]["approvedTools"], serde_json::json!(["github.create_issue"]));
    assert_eq!(d["status"]["readOnly"], true);
    let table = c.cli(1, &["mcp", "ls"]).ok().stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("github") && table.contains("upgrade 1.3.0 pending"), "{table}");
    let yaml = c.cli(1, &["describe", "mcpserver", "suspicious-server"]).ok().stdout;
    assert!(yaml.contains("kind: MCPServer") && yaml.contains("phase: Ready"), "{yaml}");

    // Seed 002's MCPServer and seed 000's Policy as written name the policy differently: the
    // user is told which name exists, and nothing is written.
    let f = dir.join("seed.yaml");
    std::fs::write(&f, SEED_SERVER.replace("    - name: mcp-tool-safety\n", "    - name: mcp-tool-safety-policy\n"))
        .unwrap();
    let e = c.cli(1, &["apply", "-f", f.to_str().unwrap()]).fails(1);
    assert!(e.contains("policy \"mcp-tool-safety-policy\" does not exist; did you mean \"mcp-tool-safety\"?"), "{e}");
    // With the server naming seed 000's policy (docs/examples/github.yaml).
    std::fs::write(&f, SEED_SERVER).unwrap();
    let out = c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok().stdout;
    assert!(out.contains("mcpserver/github configured") && out.contains("policy/mcp-tool-safety configured"), "{out}");
    let d = c.cli(1, &["describe", "mcpserver", "github", "-o", "json"]).ok().json();
    assert_eq!(d["spec"]["discovery"]["onSchemaDrift"], "quarantine");
    assert_eq!(d["spec"]["security"]["minTrustScore"], 0.75);
    assert_eq!(d["status"]["approvedTools"], serde_json::json!(["github.create_issue"]), "apply keeps status");
    let p = c.cli(1, &["describe", "policy", "mcp-tool-safety", "-o", "json"]).ok().json();
    assert_eq!(p["spec"]["rules"][0]["action"]["reason"], "trust-score-too-low");
    let again = c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok().stdout;
    assert!(again.contains("mcpserver/github unchanged"), "{again}");
    // describe's YAML applies back unchanged.
    let round = dir.join("round.yaml");
    std::fs::write(&round, c.cli(1, &["describe", "mcpserver", "github", "-o", "yaml"]).ok().stdout).unwrap();
    assert!(c.cli(1, &["apply", "-f", round.to_str().unwrap()]).ok().stdout.contains("unchanged"));

    // Errors: specific message, non-zero exit, nothing written.
    let e = c.cli(1, &["mcp", "pin", "nope", "--to", "1.2.0"]).fails(1);
    assert!(e.contains("MCP server \"nope\" is not registered"), "{e}");
    let e = c.cli(1, &["mcp", "pin", "github", "--to", "latest"]).fails(1);
    assert!(e.contains("invalid version \"latest\""), "{e}");
    let e = c.cli(1, &["mcp", "add", "github", "--endpoint", "https://x.example/"]).fails(1);
    assert!(e.contains("already exists"), "{e}");
    let e = c.cli(1, &["mcp", "add", "Bad.Name", "--endpoint", "https://x.example/"]).fails(1);
    assert!(e.contains("invalid name \"Bad.Name\""), "{e}");
    let e = c.cli(1, &["mcp", "approve-tool", "create_issue"]).fails(1);
    assert!(e.contains("expected SERVER.TOOL"), "{e}");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        SEED_SERVER.replace("    refreshInterval: 10m\n", "    refreshInterval: 10m\n    refreshIntervall: 5m\n"),
    )
    .unwrap();
    let e = c.cli(1, &["apply", "-f", bad.to_str().unwrap()]).fails(1);
    assert!(e.contains(&format!("{}:23:5: spec.discovery: unknown field `refreshIntervall`", bad.display())), "{e}");
    let bad2 = dir.join("bad2.yaml");
    std::fs::write(
        &bad2,
        SEED_SERVER.replace("name: github\n", "name: other\n").replace("pinnedVersion: 1.2.0", "pinnedVersion: one"),
    )
    .unwrap();
    let e = c.cli(1, &["apply", "-f", bad2.to_str().unwrap()]).fails(1);
    assert!(e.contains(":28: spec.security.pinnedVersion: invalid version \"one\""), "{e}");
    let v = c.cli(1, &["mcp", "ls", "-o", "json"]).ok().json();
    assert_eq!(v.as_array().unwrap().len(), 2, "no document of a rejected apply was written");
    let e = joch(["--server", "http://127.0.0.1:1", "mcp", "ls"]).fails(1);
    assert!(e.contains("cannot reach the joch node at http://127.0.0.1:1"), "{e}");

    // A node with a bad configuration names every problem and does not start.
    let e = joch(["serve", "--id", "0", "--mesh-listen", "nowhere"]).fails(1);
    for field in ["id:", "data_dir:", "listen.mesh:", "tls.ca:", "tls.cert:", "tls.key:"] {
        assert!(e.contains(field), "{field} missing from: {e}");
    }
}

#[test]
fn history_is_kept_within_the_replicated_retention_on_every_node() {
    let c = TestCluster::up(3, &[]);
    let shown = c.cli(1, &["mcp", "history", "--retention", "-o", "json"]).ok().json();
    assert_eq!(shown, serde_json::json!({"historyPerServer": 1000, "historyMaxAge": "90d"}));
    c.cli(2, &["mcp", "history", "--retention", "--keep", "2", "--max-age", "30d"]).ok();
    c.cli(1, &["mcp", "add", "s", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    for reason in ["a", "b"] {
        c.cli(1, &["mcp", "quarantine", "s", "--reason", reason]).ok();
        c.cli(1, &["mcp", "unquarantine", "s"]).ok();
    }
    for n in 1..=3 {
        let h = c.cli(n, &["mcp", "history", "s", "-o", "json"]).ok().json();
        let actions: Vec<&str> = h.as_array().unwrap().iter().map(|l| l["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["quarantine", "unquarantine"], "node {n} keeps the newest two: {h}");
    }
    let bad = c.cli(1, &["mcp", "history", "--retention", "--max-age", "10m"]).fails(1);
    assert!(bad.contains("historyMaxAge: must be at least 1h"), "{bad}");
}
