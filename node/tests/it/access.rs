//! Identity and access from the outside: operators' roles on the admin API (TLS, tokens, the
//! actor recorded is the token's, whatever the caller claims), agents' tokens and JWTs on the data
//! plane (401 with the protected-resource metadata, sessions bound to their agent, a revocation
//! through one node refused on another and cutting open streams).

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::harness::{eventually, http, joch_env, FastMcp, TestCluster};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON_CT: (&str, &str) = ("content-type", "application/json");

/// The CLI with this token (and the cluster's CA).
fn as_token(c: &TestCluster, token: &str, args: &[&str]) -> crate::harness::Out {
    let mut all = vec!["--server", c.node(1).admin_url.as_str()];
    all.extend_from_slice(args);
    joch_env(all, &[("JOCH_TOKEN", token), ("JOCH_CA", c.ca.as_str())])
}

/// A new admin token of this role; its secret.
fn token(c: &TestCluster, name: &str, role: &str) -> String {
    let v = c.run(&["--server", &c.node(1).admin_url, "admin", "token", "create", name, "--role", role, "-o", "json"]);
    v.ok().json()["token"].as_str().expect("the token is printed").to_string()
}

#[test]
fn a_viewer_reads_an_operator_quarantines_and_the_actor_is_the_tokens_name() {
    let c = TestCluster::up(1, &[]);
    c.cli(1, &["mcp", "add", "s", "--endpoint", "http://127.0.0.1:9/mcp"]).ok();
    let vera = token(&c, "vera", "viewer");
    let otto = token(&c, "otto", "operator");

    // The store keeps hashes only; the list shows names and roles.
    let ls = c.cli(1, &["admin", "token", "ls", "-o", "json"]).ok();
    assert!(ls.stdout.contains("vera") && ls.stdout.contains("operator"), "{}", ls.stdout);
    assert!(!ls.stdout.contains(&vera) && !ls.stdout.contains(&otto), "no token is shown again: {}", ls.stdout);

    // A viewer reads, and cannot quarantine: permission denied (exit 5), naming the role needed.
    as_token(&c, &vera, &["mcp", "ls"]).ok();
    let e = as_token(&c, &vera, &["mcp", "quarantine", "s", "--reason", "x"]);
    assert_eq!(e.code, 5, "{e:?}");
    assert!(e.stderr.contains("needs the operator role") && e.stderr.contains("\"vera\" has viewer"), "{}", e.stderr);
    // No token, or a wrong one: unauthenticated (exit 4).
    let e = joch_env(["--server", &c.node(1).admin_url, "mcp", "ls"], &[("JOCH_CA", c.ca.as_str())]);
    assert_eq!(e.code, 4, "{e:?}");
    assert!(e.stderr.contains("no admin token"), "{}", e.stderr);
    let e = as_token(&c, "joch_adm_not-a-token", &["mcp", "ls"]);
    assert_eq!(e.code, 4, "{e:?}");
    assert!(e.stderr.contains("not valid"), "{}", e.stderr);
    // Without the CA, the node's certificate is not trusted: nothing is sent in the clear.
    let e = joch_env(["--server", &c.node(1).admin_url, "mcp", "ls"], &[("JOCH_TOKEN", vera.as_str())]);
    assert_ne!(e.code, 0, "{e:?}");
    assert!(e.stderr.contains("--ca"), "{}", e.stderr);

    // An operator quarantines, and cannot mint tokens.
    as_token(&c, &otto, &["mcp", "quarantine", "s", "--reason", "drift"]).ok();
    let e = as_token(&c, &otto, &["admin", "token", "create", "eve", "--role", "admin"]);
    assert_eq!(e.code, 5, "{e:?}");
    assert!(e.stderr.contains("needs the admin role"), "{}", e.stderr);

    // A caller claiming another actor over raw gRPC: the actor recorded is the token's name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use joch_proto::admin::registry_client::RegistryClient;
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let pem = std::fs::read(&c.ca).unwrap();
        let ch = Channel::from_shared(c.node(1).admin_url.clone())
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut reg = RegistryClient::new(ch);
        let mut r = tonic::Request::new(joch_proto::admin::NameRequest { name: "s".into() });
        r.metadata_mut().insert("authorization", format!("Bearer {otto}").parse().unwrap());
        r.metadata_mut().insert("x-joch-actor", "mallory".parse().unwrap());
        reg.unquarantine(r).await.expect("an operator lifts the quarantine");
    });
    let h = c.cli(1, &["mcp", "history", "s", "-o", "json"]).ok().json();
    let actors: Vec<&str> = h.as_array().unwrap().iter().filter_map(|l| l["actor"].as_str()).collect();
    assert_eq!(actors, ["bootstrap", "otto", "otto"], "{h}");

    // A revoked token stops working at once.
    c.cli(1, &["admin", "token", "revoke", "otto"]).ok();
    assert_eq!(as_token(&c, &otto, &["mcp", "ls"]).code, 4);
}

/// An SSE GET stream of session `sid` on `base`, read in a thread; returns when it ends.
fn hold_stream(base: &str, bearer: &str, sid: &str) -> std::thread::JoinHandle<()> {
    let host = base.strip_prefix("http://").unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /mcp/heldout HTTP/1.1\r\nHost: {host}\r\naccept: text/event-stream\r\nauthorization: {bearer}\r\n\
         mcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    std::thread::spawn(move || {
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            line.clear();
        }
    })
}

#[test]
fn agents_authenticate_sessions_are_theirs_and_a_revocation_cuts_them_everywhere() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    let base = c.node(1).mcp_url.clone();
    let url = format!("{base}/mcp/heldout");

    // No credential: 401, the challenge naming the protected-resource metadata, which is served.
    let r = http("POST", &url, &[ACCEPT, JSON_CT], INIT.as_bytes());
    assert_eq!((r.status, r.json()["error"]["code"].as_i64()), (401, Some(-32040)), "{r:?}");
    assert_eq!(r.json()["error"]["data"]["reason"], "unauthenticated");
    let challenge = r.header("www-authenticate").expect("a challenge");
    let host = base.strip_prefix("http://").unwrap();
    let meta_url = format!("http://{host}/.well-known/oauth-protected-resource");
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{meta_url}\""));
    let meta = http("GET", &meta_url, &[], b"");
    assert_eq!(meta.status, 200, "{meta:?}");
    assert_eq!(meta.json()["resource"], format!("http://{host}/mcp"), "{meta:?}");
    assert_eq!(meta.json()["bearer_methods_supported"], json!(["header"]));
    // A wrong token, or an operator's admin token: 401 too, saying why.
    let r = http("POST", &url, &[ACCEPT, JSON_CT, ("authorization", "Bearer joch_agt_nope")], INIT.as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("unknown or revoked agent token"), "{r:?}");
    let admin = format!("Bearer {}", c.admin_token);
    let r = http("POST", &url, &[ACCEPT, JSON_CT, ("authorization", &admin)], INIT.as_bytes());
    assert_eq!(r.status, 401, "{r:?}");

    // An agent of its own, through node 1.
    let bob = c.cli(1, &["agent", "create", "bob", "--label", "team=support", "-o", "json"]).ok().json();
    let bob = format!("Bearer {}", bob["token"].as_str().unwrap());
    let ls = c.cli(2, &["agent", "ls", "-o", "json"]).ok().json();
    assert!(ls.to_string().contains("\"team\":\"support\""), "{ls}");
    let r = http("POST", &url, &[ACCEPT, JSON_CT, ("authorization", &bob)], INIT.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap();
    let in_session = |bearer: &str, node: u64| {
        let h = [
            ACCEPT,
            JSON_CT,
            ("authorization", bearer),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        http("POST", &format!("{}/mcp/heldout", c.node(node).mcp_url), &h, LIST.as_bytes())
    };
    assert_eq!(in_session(&bob, 2).status, 200, "bob's session continues on node 2");
    // Another agent presenting bob's session id: refused, as if it did not exist.
    let r = in_session(&c.agent_bearer, 1);
    assert_eq!((r.status, r.json()["error"]["data"]["reason"].as_str()), (404, Some("session-unknown")), "{r:?}");

    // Bob's stream on node 1; bob revoked through node 3, acknowledged by the fleet.
    let stream = hold_stream(&base, &bob, &sid);
    let w = c.cli(3, &["agent", "revoke", "bob", "-o", "json"]).ok().json();
    assert_eq!(w["fleet"]["complete"], true, "{w}");
    let r = in_session(&bob, 1);
    assert_eq!(r.status, 401, "refused on node 1 at the next request: {r:?}");
    eventually("bob's open stream to be cut", Duration::from_secs(10), || stream.is_finished().then_some(()));
    assert!(!c.cli(1, &["agent", "ls"]).ok().stdout.contains("bob"));
    // Recreated under the same name: a new token; the old one stays dead.
    c.cli(1, &["agent", "create", "bob"]).ok();
    assert_eq!(in_session(&bob, 2).status, 401);
}

/// An ES256 key pair of an identity provider, and JWTs it signs.
struct Idp {
    key: rcgen::KeyPair,
}

impl Idp {
    fn new() -> Idp {
        Idp { key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap() }
    }

    /// Its JWKS document.
    fn jwks(&self) -> Value {
        let raw = self.key.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])}]})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_jwt_from_a_configured_idp_names_the_agent_and_forged_or_stale_ones_are_refused() {
    let c = TestCluster::up(1, &[]);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    let idp = Idp::new();
    let jwks = c.dir.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks().to_string()).unwrap();
    c.cli(
        1,
        &[
            "idp",
            "add",
            "corp",
            "--issuer",
            "https://idp.corp.test",
            "--audience",
            "joch",
            "--jwks-file",
            jwks.to_str().unwrap(),
            "--name-claim",
            "email",
            "--label-claim",
            "team=team",
        ],
    )
    .ok();
    let base = c.node(1).mcp_url.clone();
    let url = format!("{base}/mcp/heldout");
    let meta = http("GET", &format!("{base}/.well-known/oauth-protected-resource"), &[], b"").json();
    assert_eq!(meta["authorization_servers"], json!(["https://idp.corp.test"]), "{meta}");

    let claims = |email: &str| {
        json!({"iss": "https://idp.corp.test", "aud": "joch", "sub": "u1", "email": email, "team": "support",
            "iat": now(), "exp": now() + 600})
    };
    let init = |jwt: &str| {
        let bearer = format!("Bearer {jwt}");
        http("POST", &url, &[ACCEPT, JSON_CT, ("authorization", &bearer)], INIT.as_bytes())
    };
    let alice = idp.sign(&claims("alice@corp.test"));
    let r = init(&alice);
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.header("mcp-session-id").unwrap();
    // The session is the mapped agent's: another JWT naming alice continues it, one naming
    // carol does not.
    let list = |jwt: &str| {
        let bearer = format!("Bearer {jwt}");
        let h = [
            ACCEPT,
            JSON_CT,
            ("authorization", &bearer),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        http("POST", &url, &h, LIST.as_bytes())
    };
    let mut again = claims("alice@corp.test");
    again["sub"] = json!("u1-other-login");
    assert_eq!(list(&idp.sign(&again)).status, 200);
    assert_eq!(list(&idp.sign(&claims("carol@corp.test"))).status, 404);

    // Refused, each with its reason.
    let refused = |jwt: &str, why: &str| {
        let r = init(jwt);
        assert_eq!(r.status, 401, "{why}: {r:?}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.to_lowercase().contains(why), "{why}: {msg}");
    };
    let mut expired = claims("alice@corp.test");
    expired["exp"] = json!(now() - 3600);
    refused(&idp.sign(&expired), "expired");
    let mut early = claims("alice@corp.test");
    early["nbf"] = json!(now() + 3600);
    refused(&idp.sign(&early), "immature");
    let mut aud = claims("alice@corp.test");
    aud["aud"] = json!("someone-else");
    refused(&idp.sign(&aud), "audience");
    let mut iss = claims("alice@corp.test");
    iss["iss"] = json!("https://evil.test");
    refused(&idp.sign(&iss), "no identity provider has issuer");
    // Another key claiming the same issuer and kid.
    refused(&Idp::new().sign(&claims("alice@corp.test")), "signature");
    // alg none: no signature at all.
    let body = URL_SAFE_NO_PAD.encode(claims("alice@corp.test").to_string());
    let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#));
    refused(&none, "algorithm");
    // HS256 keyed with the provider's public key (the classic confusion attack).
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice@corp.test"),
        &jsonwebtoken::EncodingKey::from_secret(idp.key.public_key_pem().as_bytes()),
    )
    .unwrap();
    refused(&hs, "algorithm hs256 is not accepted");

    // The provider removed: its tokens stop working, its agents' sessions too.
    c.cli(1, &["idp", "rm", "corp"]).ok();
    assert_eq!(list(&alice).status, 401);
}

#[test]
fn a_rotated_session_key_seals_new_sessions_and_open_ones_continue() {
    let c = TestCluster::up(3, &[]);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    let init = |node: u64| {
        let r = http(
            "POST",
            &format!("{}/mcp/heldout", c.node(node).mcp_url),
            &[ACCEPT, JSON_CT, c.auth()],
            INIT.as_bytes(),
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.header("mcp-session-id").unwrap()
    };
    let list = |node: u64, sid: &str| {
        let h = [ACCEPT, JSON_CT, c.auth(), ("mcp-session-id", sid), ("mcp-protocol-version", "2025-11-25")];
        http("POST", &format!("{}/mcp/heldout", c.node(node).mcp_url), &h, LIST.as_bytes()).status
    };
    let old = init(1);
    assert!(old.starts_with("j2.0."), "{old}");
    let w = c.cli(2, &["cluster", "rotate-session-key", "-o", "json"]).ok().json();
    assert_eq!(w["fleet"]["complete"], true, "{w}");
    for n in 1..=3 {
        let new = init(n);
        assert!(new.starts_with("j2.1."), "node {n} seals with the new key: {new}");
        assert_eq!(list(n, &new), 200);
        assert_eq!(list(n, &old), 200, "node {n}: an open session continues");
    }
}

#[test]
fn login_saves_a_context_the_cli_then_uses() {
    let c = TestCluster::up(1, &[]);
    let cfg = c.dir.path().join("cli-config.yaml");
    let cfg_s = cfg.to_str().unwrap();
    let server = c.node(1).admin_url.as_str();
    let out = joch_env(
        ["--server", server, "--ca", &c.ca, "login", "--context", "dev"],
        &[("JOCH_TOKEN", c.admin_token.as_str()), ("JOCH_CLI_CONFIG", cfg_s)],
    )
    .ok();
    assert!(out.stderr.contains("bootstrap") || out.stdout.contains("bootstrap"), "{out:?}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(server), "{text}");
    // No flag, no environment: the saved context.
    let who = joch_env(["whoami", "-o", "json"], &[("JOCH_CLI_CONFIG", cfg_s)]).ok().json();
    assert_eq!((who["name"].as_str(), who["role"].as_str()), (Some("bootstrap"), Some("admin")), "{who}");
    // A wrong token is refused at login and saves nothing.
    let e = joch_env(
        ["--server", server, "--ca", &c.ca, "login", "--context", "bad"],
        &[("JOCH_TOKEN", "joch_adm_wrong"), ("JOCH_CLI_CONFIG", cfg_s)],
    );
    assert_eq!(e.code, 4, "{e:?}");
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("bad"));
}

#[test]
fn anonymous_agents_exist_only_where_a_node_allows_them() {
    let c = TestCluster::up(1, &["--allow-anonymous"]);
    let up = FastMcp::start();
    c.cli(1, &["mcp", "add", "heldout", "--endpoint", &up.url]).ok();
    let url = format!("{}/mcp/heldout", c.node(1).mcp_url);
    let r = http("POST", &url, &[ACCEPT, JSON_CT], INIT.as_bytes());
    assert_eq!(r.status, 200, "anonymous is allowed here: {r:?}");
    let sid = r.header("mcp-session-id").unwrap();
    // The session is anonymous's: dev-agent cannot use it.
    let h = [ACCEPT, JSON_CT, c.auth(), ("mcp-session-id", sid.as_str()), ("mcp-protocol-version", "2025-11-25")];
    assert_eq!(http("POST", &url, &h, LIST.as_bytes()).status, 404);
    // A credential that does not hold is still refused (never downgraded to anonymous).
    let r = http("POST", &url, &[ACCEPT, JSON_CT, ("authorization", "Bearer joch_agt_nope")], INIT.as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn a_node_without_a_way_to_authenticate_operators_refuses_to_start() {
    let c = TestCluster::up(1, &[]);
    let base = c.serve_args(1, 1, &c.dir.path().join("lonely"));
    let e = crate::harness::joch(base).fails(1);
    assert!(e.contains("admin.token_file: required") && e.contains("--insecure-dev"), "{e}");
}
