//! The README's quick start, as a newcomer runs it: `joch dev up` (with its demo MCP server),
//! the example agent (the official Python SDK, with the dev agent's token) calling a tool
//! through the cluster, a quarantine, and the denial the agent then sees.

use std::process::Command;
use std::time::Duration;

use crate::harness::{alive, eventually, joch, python, TestCluster};

fn example(c: &TestCluster) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/quickstart.py");
    let out = Command::new(python())
        .arg(script)
        .arg(c.dir.path().join("cluster.json"))
        .output()
        .expect("run the quick start's agent");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn the_quick_start_ends_with_a_governed_call_a_quarantine_and_its_denial() {
    let mut c = TestCluster::up_as_is(3, &[]);
    let (pid, url) = c.demo.clone().expect("dev up runs the demo MCP server");
    let d = c.cli(1, &["describe", "mcpserver", "demo", "-o", "json"]).ok().json();
    assert_eq!(d["spec"]["endpoint"]["url"], url.as_str());

    let out = example(&c);
    assert!(out.contains("tools: add, echo, utc_now"), "{out}");
    assert!(out.contains("add(2, 3) = 5"), "{out}");

    c.cli(2, &["mcp", "quarantine", "demo", "--reason", "quick start"]).ok();
    let out = example(&c);
    assert!(
        out.contains("denied by joch: ") && out.contains("code -32002") && out.contains("server-quarantined"),
        "{out}"
    );
    c.cli(1, &["mcp", "unquarantine", "demo"]).ok();

    // `dev down` stops it with the nodes; `dev up` brings it back where it was registered.
    let dir = c.dir.path().display().to_string();
    joch(["dev", "down", "--dir", &dir]).ok();
    eventually("the demo server to stop", Duration::from_secs(10), || (!alive(pid)).then_some(()));
    c.restart();
    assert_eq!(c.demo.as_ref().map(|d| d.1.as_str()), Some(url.as_str()), "same endpoint after a restart");
    assert!(example(&c).contains("add(2, 3) = 5"));
}
