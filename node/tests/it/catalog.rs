//! The catalog as an MCP Registry, end to end on three nodes: every answer validated against
//! the registry project's schema (vendored, pinned); pagination, `search`, `version`,
//! `updated_since`; a quarantine through node 2 gone from node 1's next listing; two agents'
//! listings differing by policy; a listed server reached through its `remotes` URL with the
//! official SDK client; the registry's own examples imported; an import from a joch node's
//! listing round-tripping name, version and description.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{e2e, http, python, FastMcp, TestCluster};

/// GET on a node's MCP listener, as `token` (none: anonymous); the JSON answer and its status.
fn get(c: &TestCluster, node: u64, path: &str, token: Option<&str>) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("accept", "application/json")];
    if let Some(b) = &bearer {
        h.push(("authorization", b));
    }
    let r = http("GET", &format!("{}{path}", c.node(node).mcp_url), &h, b"");
    (r.status, r.json())
}

/// Validates `answer` against the registry's schema `schema` (ServerList, ServerResponse).
#[track_caller]
fn valid(schema: &str, answer: &Value) {
    let mut p = Command::new(python())
        .arg(e2e("registry_check.py"))
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), answer.to_string().as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v["ok"], true, "{schema} {answer}: {v}");
}

fn names(list: &Value) -> Vec<String> {
    list["servers"].as_array().unwrap().iter().map(|s| s["server"]["name"].as_str().unwrap().to_string()).collect()
}

fn token(c: &TestCluster, name: &str, label: &str) -> String {
    let a = c.cli(1, &["agent", "create", name, "--label", label, "-o", "json"]).ok().json();
    a["token"].as_str().unwrap().to_string()
}

const NS: &str = "local.joch";

#[test]
fn the_catalog_is_served_as_an_mcp_registry_and_imports_server_json() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    let mut docs = String::new();
    for (name, extra) in [
        ("alpha", ""),
        ("beta", "  security: { pinServerVersion: true, pinnedVersion: \"1.4.2\" }\n"),
        ("gamma", ""),
        ("vault", ""),
        ("weather", "  description: \"Forecasts for the whole fleet\"\n  publisher: io.github.acme\n"),
    ] {
        docs.push_str(&format!(
            "apiVersion: joch.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  endpoint: {{ url: \"{}\" }}\n{extra}---\n",
            up.url
        ));
    }
    docs.push_str(
        "apiVersion: joch.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: vault-team-a\nspec:\n  appliesTo:\n    agents: { selector: { matchLabels: { team: b } } }\n    servers: { names: [vault] }\n  defaultDecision: DENY\n  rules: []\n",
    );
    let f = c.dir.path().join("servers.yaml");
    std::fs::write(&f, docs).unwrap();
    c.cli(1, &["apply", "-f", f.to_str().unwrap()]).ok();
    let alice = token(&c, "alice", "team=a");
    let bob = token(&c, "bob", "team=b");

    // Without a credential: nothing (catalog.anonymous: none).
    let (status, anon) = get(&c, 1, "/v0.1/servers", None);
    assert_eq!((status, names(&anon).len()), (200, 0), "{anon}");
    valid("ServerList", &anon);
    // A bad credential is refused, not treated as anonymous.
    assert_eq!(get(&c, 1, "/v0.1/servers", Some("jt_nope")).0, 401);

    // Alice sees every server; each entry names its remote through this fleet.
    let (_, all) = get(&c, 2, "/v0.1/servers", Some(&alice));
    valid("ServerList", &all);
    let want: Vec<String> =
        ["alpha", "beta", "gamma", "vault", "weather"].iter().map(|n| format!("{NS}/{n}")).collect();
    assert_eq!(names(&all), want, "{all}");
    let weather =
        all["servers"].as_array().unwrap().iter().find(|s| s["server"]["name"] == format!("{NS}/weather")).unwrap();
    assert_eq!(weather["server"]["description"], "Forecasts for the whole fleet");
    assert_eq!(weather["server"]["remotes"][0]["url"], format!("{}/mcp/weather", c.node(2).mcp_url), "{weather}");
    assert_eq!(weather["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"], true);
    assert_eq!(weather["_meta"]["dev.joch/governance"]["phase"], "Ready");
    // Bob's policy denies him vault: his listing lacks it.
    let (_, bobs) = get(&c, 3, "/v0.1/servers", Some(&bob));
    valid("ServerList", &bobs);
    assert_eq!(names(&bobs), want.iter().filter(|n| !n.ends_with("/vault")).cloned().collect::<Vec<_>>());
    assert_eq!(get(&c, 3, &format!("/v0.1/servers/{NS}%2Fvault/versions"), Some(&bob)).0, 404);

    // Pages of two, following nextCursor, give the same servers once each.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 5, "pagination does not end");
        let (_, p) = get(&c, 1, &format!("/v0.1/servers?limit=2&cursor={cursor}"), Some(&alice));
        valid("ServerList", &p);
        assert!(p["metadata"]["count"].as_u64().unwrap() <= 2, "{p}");
        seen.extend(names(&p));
        match p["metadata"]["nextCursor"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, want);
    assert_eq!(get(&c, 1, "/v0.1/servers?limit=0", Some(&alice)).0, 400);
    assert_eq!(get(&c, 1, "/v0.1/servers?cursor=%25%25", Some(&alice)).0, 400);

    // search, version, updated_since.
    let (_, s) = get(&c, 1, "/v0.1/servers?search=WEA", Some(&alice));
    assert_eq!(names(&s), [format!("{NS}/weather")]);
    let (_, v) = get(&c, 1, "/v0.1/servers?version=1.4.2", Some(&alice));
    assert_eq!(names(&v), [format!("{NS}/beta")]);
    let (_, latest) = get(&c, 1, "/v0.1/servers?version=latest", Some(&alice));
    assert_eq!(names(&latest), want);
    let (_, future) = get(&c, 1, "/v0.1/servers?updated_since=2999-01-01T00:00:00Z", Some(&alice));
    assert!(names(&future).is_empty());
    let (_, past) = get(&c, 1, "/v0.1/servers?updated_since=2020-01-01T00:00:00Z", Some(&alice));
    assert_eq!(names(&past), want);
    assert_eq!(get(&c, 1, "/v0.1/servers?updated_since=yesterday", Some(&alice)).0, 400);
    // v0 is the same API.
    assert_eq!(names(&get(&c, 1, "/v0/servers", Some(&alice)).1), want);

    // One server's versions, and one version.
    let (status, vs) = get(&c, 1, &format!("/v0.1/servers/{NS}%2Fbeta/versions"), Some(&alice));
    assert_eq!(status, 200);
    valid("ServerList", &vs);
    assert_eq!(vs["servers"][0]["server"]["version"], "1.4.2");
    for version in ["1.4.2", "latest"] {
        let (status, one) = get(&c, 1, &format!("/v0.1/servers/{NS}%2Fbeta/versions/{version}"), Some(&alice));
        assert_eq!(status, 200, "{one}");
        valid("ServerResponse", &one);
        assert_eq!(one["server"]["name"], format!("{NS}/beta"));
    }
    let (status, missing) = get(&c, 1, &format!("/v0.1/servers/{NS}%2Fbeta/versions/9.9.9"), Some(&alice));
    assert_eq!(status, 404);
    assert!(missing["error"].as_str().unwrap().contains("1.4.2"), "{missing}");
    assert_eq!(get(&c, 1, "/v0.1/servers/com.other%2Fbeta/versions", Some(&alice)).0, 404);

    // The remote a listing names is the gateway: the official SDK client calls through it.
    let r = c.sdk_env(
        "legacy",
        &["probe", "weather", r#"[["add", {"a": 20, "b": 22}]]"#, &c.node(2).mcp_url],
        &[("JOCH_AGENT_TOKEN", Path::new(&alice))],
    );
    assert_eq!(r["calls"]["add"], "42", "{r}");

    // A quarantine committed through node 2 is gone from node 1's next listing.
    c.cli(2, &["mcp", "quarantine", "gamma", "--reason", "drift"]).ok();
    let (_, after) = get(&c, 1, "/v0.1/servers", Some(&alice));
    assert!(!names(&after).contains(&format!("{NS}/gamma")), "{after}");
    assert_eq!(get(&c, 1, &format!("/v0.1/servers/{NS}%2Fgamma/versions/latest"), Some(&alice)).0, 404);

    // The registry's own examples import into manifests that apply.
    let examples = e2e("registry/examples");
    for (file, name, transport) in [
        ("with-remote.json", "remote-weather", "streamable_http"),
        ("with-package.json", "local-weather", "stdio"),
        ("pypi.json", "time", "stdio"),
        ("oci.json", "github-mcp-server", "stdio"),
    ] {
        let path = examples.join(file);
        let dry = c.cli(1, &["mcp", "import", "-f", path.to_str().unwrap(), "--dry-run", "-o", "json"]).ok().json();
        let manifest = dry["manifest"].as_str().unwrap();
        assert!(
            manifest.contains(&format!("name: {name}")) && manifest.contains(&format!("transport: {transport}")),
            "{manifest}"
        );
        let applied = c.cli(1, &["mcp", "import", "-f", path.to_str().unwrap()]).ok();
        assert!(applied.stdout.contains(&format!("mcpserver/{name} configured")), "{applied:?}");
    }
    let remote = c.cli(1, &["describe", "mcpserver", "remote-weather", "-o", "json"]).ok().json();
    assert_eq!(remote["spec"]["endpoint"]["url"], "https://api.example.com/mcp", "{remote}");
    assert_eq!(remote["spec"]["auth"]["type"], "bearer");
    assert_eq!(remote["spec"]["publisher"], "io.github.user");
    let time = c.cli(1, &["describe", "mcpserver", "time", "-o", "json"]).ok().json();
    assert_eq!(time["spec"]["stdio"]["command"], "uvx");
    assert_eq!(time["spec"]["stdio"]["args"], json!(["mcp-server-time==2025.9.25", "--local-timezone", "UTC"]));
    assert_eq!(time["spec"]["security"]["allowStdio"], false, "{time}");

    // Import from a registry: node 3's listing, round trip of name, version and description.
    let import_weather = |more: &[&str]| {
        let name = format!("{NS}/weather");
        let mut args = vec!["mcp", "import", "--from-registry", &c.node(3).mcp_url, "--name", &name];
        args.extend_from_slice(more);
        c.cli_env(1, &args, &[("JOCH_REGISTRY_TOKEN", alice.as_str())]).ok()
    };
    let imported = import_weather(&["--as", "weather-copy"]);
    assert!(imported.stdout.contains("mcpserver/weather-copy configured"), "{imported:?}");
    let (_, copy) = get(&c, 1, &format!("/v0.1/servers/{NS}%2Fweather-copy/versions/latest"), Some(&alice));
    valid("ServerResponse", &copy);
    assert_eq!(copy["server"]["description"], weather["server"]["description"]);
    assert_eq!(copy["server"]["version"], weather["server"]["version"]);
    assert_eq!(copy["_meta"]["dev.joch/governance"]["publisher"], "local.joch", "{copy}");
    // Without --as the server keeps its listed name.
    let named = import_weather(&["--dry-run", "-o", "json"]).json();
    assert!(named["manifest"].as_str().unwrap().contains("\n  name: weather\n"), "{named}");
    // A registry that does not know the name says so.
    let err = c
        .cli_env(
            1,
            &["mcp", "import", "--from-registry", &c.node(3).mcp_url, "--name", "x.y/none"],
            &[("JOCH_REGISTRY_TOKEN", alice.as_str())],
        )
        .fails(1);
    assert!(err.contains("404") && err.contains("Server not found"), "{err}");
}
