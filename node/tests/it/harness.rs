//! Test harness: real `joch` processes on loopback, driven through the CLI binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The `joch` binary under test.
pub fn joch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_joch"))
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "joch failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts failure with this exit code and returns stderr.
    #[track_caller]
    pub fn fails(self, code: i32) -> String {
        assert_eq!(self.code, code, "expected exit {code}:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self.stderr
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs the CLI with these arguments (no JOCH_SERVER, token or CA from the environment).
pub fn joch<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    joch_env(args, &[])
}

/// Runs the CLI with these arguments and environment variables.
pub fn joch_env<I, S>(args: I, env: &[(&str, &str)]) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(joch_bin())
        .args(args)
        .env_remove("JOCH_SERVER")
        .env_remove("JOCH_TOKEN")
        .env_remove("JOCH_CA")
        .env("JOCH_CLI_CONFIG", "/nonexistent/joch-test-config.yaml")
        .envs(env.iter().copied())
        .output()
        .expect("run joch");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
#[track_caller]
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node of a dev cluster (from cluster.json).
#[derive(Debug, Clone)]
pub struct Node {
    pub id: u64,
    pub admin_url: String,
    pub mcp_url: String,
    pub mesh_addr: String,
    pub metrics_url: String,
    pub pid: u32,
}

/// A cluster started with `joch dev up`; stopped (SIGKILL, data discarded) on drop.
pub struct TestCluster {
    pub dir: TempDir,
    pub nodes: Vec<Node>,
    /// An admin token (the nodes' bootstrap token).
    pub admin_token: String,
    /// The cluster CA's certificate.
    pub ca: String,
    /// The agent `dev-agent`'s token.
    pub agent_token: String,
    /// Its `Authorization` header value.
    pub agent_bearer: String,
    /// The demo MCP server `dev up` runs: (pid, endpoint).
    pub demo: Option<(u32, String)>,
}

impl TestCluster {
    /// `joch dev up --nodes n --no-demo` in a temp dir, with extra flags (the demo server would
    /// be one more registered server in every test).
    pub fn up(n: usize, extra: &[&str]) -> TestCluster {
        let mut all = vec!["--no-demo"];
        all.extend_from_slice(extra);
        TestCluster::up_as_is(n, &all)
    }

    /// `joch dev up --nodes n` in a temp dir, with these flags only (the demo server included).
    pub fn up_as_is(n: usize, extra: &[&str]) -> TestCluster {
        let dir = TempDir::new().expect("temp dir");
        let mut args = vec!["dev".to_string(), "up".into(), "--nodes".into(), n.to_string(), "--dir".into()];
        args.push(dir.path().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        joch(&args).ok();
        let mut c = TestCluster {
            dir,
            nodes: Vec::new(),
            admin_token: String::new(),
            ca: String::new(),
            agent_token: String::new(),
            agent_bearer: String::new(),
            demo: None,
        };
        c.reload();
        c
    }

    /// Likewise, every node allowed to run the test venv's executables as stdio servers (by
    /// default a node runs none).
    pub fn up_stdio(n: usize) -> TestCluster {
        TestCluster::up(n, &["--stdio-allow", &venv_bin().display().to_string()])
    }

    /// The environment that authenticates the CLI as an admin of this cluster.
    pub fn admin_env(&self) -> [(&str, &str); 2] {
        [("JOCH_TOKEN", self.admin_token.as_str()), ("JOCH_CA", self.ca.as_str())]
    }

    /// Runs the CLI as an admin of this cluster (without `--server`).
    pub fn run(&self, args: &[&str]) -> Out {
        joch_env(args, &self.admin_env())
    }

    /// Runs the CLI against the admin API at `url`, as an admin of this cluster.
    pub fn run_at(&self, url: &str, args: &[&str]) -> Out {
        let mut all = vec!["--server", url];
        all.extend_from_slice(args);
        joch_env(all, &self.admin_env())
    }

    /// The `Authorization` header of the agent `dev-agent`.
    pub fn auth(&self) -> (&'static str, &str) {
        ("authorization", self.agent_bearer.as_str())
    }

    /// The SDK client script (auto mode) as `dev-agent`.
    #[track_caller]
    pub fn sdk(&self, args: &[&str]) -> Value {
        self.sdk_env("auto", args, &[])
    }

    /// Likewise, in the SDK's connect mode (`auto` negotiates the era, `legacy` forces sessions).
    #[track_caller]
    pub fn sdk_mode(&self, mode: &str, args: &[&str]) -> Value {
        self.sdk_env(mode, args, &[])
    }

    /// Likewise, with more environment (the client's `joch` runs as an admin of this cluster).
    #[track_caller]
    pub fn sdk_env(&self, mode: &str, args: &[&str], env: &[(&str, &Path)]) -> Value {
        let mut all: Vec<(&str, &std::ffi::OsStr)> = vec![
            ("JOCH_AGENT_TOKEN", self.agent_token.as_ref()),
            ("JOCH_TOKEN", self.admin_token.as_ref()),
            ("JOCH_CA", self.ca.as_ref()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.as_os_str())));
        sdk_client_with(mode, args, &all)
    }

    /// Re-reads cluster.json.
    pub fn reload(&mut self) {
        let text = std::fs::read_to_string(self.dir.path().join("cluster.json")).expect("cluster.json");
        let v: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
        self.admin_token = v["admin_token"].as_str().unwrap_or_default().to_string();
        self.ca = v["ca"].as_str().unwrap_or_default().to_string();
        self.agent_token = v["agent_token"].as_str().unwrap_or_default().to_string();
        self.agent_bearer = format!("Bearer {}", self.agent_token);
        self.demo = v["demo"]["pid"].as_u64().map(|p| (p as u32, v["demo"]["url"].as_str().unwrap_or_default().into()));
        self.nodes = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| Node {
                id: n["id"].as_u64().unwrap(),
                admin_url: n["admin_url"].as_str().unwrap().into(),
                mcp_url: n["mcp_url"].as_str().unwrap().into(),
                mesh_addr: n["mesh_addr"].as_str().unwrap().into(),
                metrics_url: n["metrics_url"].as_str().unwrap().into(),
                pid: n["pid"].as_u64().unwrap() as u32,
            })
            .collect();
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Registers the e2e Python script `script` (with `args`) as the stdio server `name`, allowed
    /// stdio, plus `extra` flags (`--env`, `--env-secret` ...).
    pub fn add_python_stdio(&self, name: &str, script: &str, args: &[&str], extra: &[&str]) {
        let (py, script) = (python().display().to_string(), e2e(script).display().to_string());
        let mut all = vec!["mcp", "add", name, "--transport", "stdio", "--command", &py, "--arg", &script];
        for a in args {
            all.extend(["--arg", a]);
        }
        all.push("--allow-stdio");
        all.extend_from_slice(extra);
        self.cli(1, &all).ok();
    }

    /// `joch serve` arguments for a node with node `cert_id`'s certificate of this cluster's CA,
    /// every listener on a free loopback port.
    pub fn serve_args(&self, id: u64, cert_id: u64, data: &Path) -> Vec<String> {
        let pki = self.pki_dir();
        let p = |f: String| pki.join(f).display().to_string();
        let mut v: Vec<String> = vec!["serve".into(), "--id".into(), id.to_string(), "--data-dir".into()];
        v.push(data.display().to_string());
        for (flag, value) in [
            ("--ca", p("ca.pem".into())),
            ("--cert", p(format!("node{cert_id}.pem"))),
            ("--key", p(format!("node{cert_id}-key.pem"))),
        ] {
            v.extend([flag.to_string(), value]);
        }
        for flag in ["--mcp-listen", "--admin-listen", "--mesh-listen", "--metrics-listen"] {
            v.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
        }
        v
    }

    /// Runs the CLI against node `id`, as an admin of this cluster.
    pub fn cli(&self, id: u64, args: &[&str]) -> Out {
        let mut all = vec!["--server", self.node(id).admin_url.as_str()];
        all.extend_from_slice(args);
        joch_env(all, &self.admin_env())
    }

    /// Likewise, with more environment.
    pub fn cli_env(&self, id: u64, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut all = vec!["--server", self.node(id).admin_url.as_str()];
        all.extend_from_slice(args);
        let mut e: Vec<(&str, &str)> = self.admin_env().to_vec();
        e.extend_from_slice(env);
        joch_env(all, &e)
    }

    /// The leader, as seen by any node that answers, waiting for one.
    pub fn leader(&self) -> u64 {
        eventually("a leader", Duration::from_secs(30), || {
            self.nodes.iter().find_map(|n| {
                let out = self.cli(n.id, &["cluster", "status", "-o", "json"]);
                (out.code == 0).then(|| out.json()["leader"].as_u64()).flatten()
            })
        })
    }

    /// `kill -9` of node `id`.
    pub fn kill9(&self, id: u64) {
        let pid = self.node(id).pid;
        Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("kill");
        eventually("the killed node to be gone", Duration::from_secs(10), || (!alive(pid)).then_some(()));
    }

    /// `joch dev up` again: restarts stopped nodes on their data.
    pub fn restart(&mut self) {
        joch(["dev", "up", "--dir", &self.dir.path().display().to_string()]).ok();
        self.reload();
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for pid in self.nodes.iter().map(|n| n.pid).chain(self.demo.as_ref().map(|d| d.0)) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        if std::thread::panicking() {
            // Keep the node logs and data of a failed test.
            let dir = std::mem::replace(&mut self.dir, TempDir::new().expect("temp dir"));
            eprintln!("test cluster kept for inspection: {}", dir.keep().display());
        }
    }
}

/// Whether a process is alive (as `joch dev` decides it).
pub use joch_node::lifecycle::alive;

/// Names of the servers in a `mcp ls -o json` answer, with their phase.
pub fn servers(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (s["metadata"]["name"].as_str().unwrap().to_string(), s["status"]["phase"].as_str().unwrap().to_string())
        })
        .collect()
}

/// A plain HTTP GET on loopback (no client library needed for metrics).
pub fn http_get(url: &str) -> String {
    let r = http("GET", url, &[], b"");
    format!("HTTP/1.1 {}\r\n{}\r\n\r\n{}", r.status, r.head, r.body)
}

/// The value of an (unlabelled) counter or gauge on a node's `/metrics`, 0 if absent.
pub fn metric(metrics_url: &str, name: &str) -> u64 {
    http_get(metrics_url)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// An HTTP answer read off the wire.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header lines, lowercased names.
    pub head: String,
    pub body: String,
}

impl HttpReply {
    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A raw HTTP/1.1 request on loopback (so tests control every byte and header).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body: that is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status_line, head) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    HttpReply { status, head: head.to_string(), body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The Python with the MCP SDK, fastmcp and mcp-server-time (created by scripts/setup).
pub fn python() -> PathBuf {
    let p = std::env::var_os("JOCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/joch-venv/bin/python")
    });
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/setup (it creates the venv with the MCP SDK, fastmcp, mcp-server-time)",
        p.display()
    );
    p
}

/// The e2e scripts' folder.
/// The test venv's `bin` directory (python, mcp-server-time, ...).
pub fn venv_bin() -> PathBuf {
    python().parent().expect("the venv's bin directory").to_path_buf()
}

pub fn e2e(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e").join(script)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real fastmcp server (PyPI) over streamable HTTP, killed on drop.
pub struct FastMcp {
    child: std::process::Child,
    pub url: String,
}

impl FastMcp {
    pub fn start() -> FastMcp {
        Self::start_with(&[])
    }

    /// With extra arguments (`1.4.2 resumable`: an event store and the `resumable` tool).
    pub fn start_with(args: &[&str]) -> FastMcp {
        Self::start_recording(args, None)
    }

    /// Recording every tool call it starts in `record` (one JSON line each, see
    /// `Record`), so a test can wait for what the upstream really received.
    pub fn start_recording(args: &[&str], record: Option<&Path>) -> FastMcp {
        match record {
            Some(r) => Self::start_env(args, &[("JOCH_RECORD", r)]),
            None => Self::start_env(args, &[]),
        }
    }

    /// With this environment (`JOCH_RECORD_HEADERS`: every request's headers, see
    /// `recorded_headers`).
    pub fn start_env(args: &[&str], env: &[(&str, &Path)]) -> FastMcp {
        Self::start_on(free_port(), args, env)
    }

    /// On this port (a server that comes back where it was).
    pub fn start_on(port: u16, args: &[&str], env: &[(&str, &Path)]) -> FastMcp {
        let mut cmd = Command::new(python());
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_os_str())));
        let child = cmd
            .arg(e2e("fastmcp_server.py"))
            .arg(port.to_string())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the fastmcp server");
        let url = format!("http://127.0.0.1:{port}/mcp");
        eventually("the fastmcp server to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        FastMcp { child, url }
    }
}

impl Drop for FastMcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool calls a recording fastmcp server received: (tool, unix seconds when it started).
pub fn recorded(path: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["tool"].as_str().unwrap_or_default().to_string(), v["t"].as_f64().unwrap_or(0.0)))
        .collect()
}

/// The requests a fastmcp server started with `JOCH_RECORD_HEADERS` received: (method, path,
/// headers).
pub fn recorded_headers(path: &Path) -> Vec<(String, String, Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (text("method"), text("path"), v["headers"].clone())
        })
        .collect()
}

/// Runs the SDK client script in this connect mode with these arguments and environment;
/// returns its JSON.
#[track_caller]
pub fn sdk_client_with(mode: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Value {
    let out = Command::new(python())
        .arg(e2e("client.py"))
        .args(args)
        .env("MCP_MODE", mode)
        .envs(env.iter().copied())
        .output()
        .expect("run the SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client.py {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {stdout}"))
}

/// A child process killed when dropped (a failing test leaves no node behind).
pub struct Killed(pub std::process::Child);

impl std::ops::Deref for Killed {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a node config with port-0 listeners and starts `joch serve` on it; returns the child
/// (killed when dropped) and its bound addresses (from addrs.json).
pub fn start_extra_node(dir: &Path, pki: &Path, id: u64, raft: &str) -> (Killed, Value) {
    let nd = dir.join(format!("extra{id}"));
    std::fs::create_dir_all(&nd).unwrap();
    let cfg = format!(
        "id: {id}\ndata_dir: {data}\nlisten: {{ mcp: 127.0.0.1:0, admin: 127.0.0.1:0, mesh: 127.0.0.1:0, metrics: 127.0.0.1:0 }}\n\
         tls: {{ ca: {p}/ca.pem, cert: {p}/node{id}.pem, key: {p}/node{id}-key.pem }}\n\
         admin: {{ token_file: {token} }}\nsecrets: {{ kek_file: {kek} }}\n{raft}",
        data = nd.join("data").display(),
        p = pki.display(),
        token = dir.join("admin-token").display(),
        kek = dir.join("kek").display(),
    );
    std::fs::write(nd.join("joch.yaml"), cfg).unwrap();
    let log = std::fs::File::create(nd.join("node.log")).unwrap();
    let child = Command::new(joch_bin())
        .args(["serve", "--config"])
        .arg(nd.join("joch.yaml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Killed)
        .expect("start joch serve");
    let addrs = nd.join("data").join("addrs.json");
    let v = eventually("the extra node to bind", Duration::from_secs(30), || {
        std::fs::read_to_string(&addrs).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok())
    });
    (child, v)
}

/// A network partition of one node: every UDP packet to or from its mesh port is dropped
/// (iptables on loopback; its QUIC endpoint uses that one socket both ways). Healed on drop.
pub struct Partition {
    port: u16,
    healed: bool,
}

impl Partition {
    fn rules(port: u16) -> [Vec<String>; 2] {
        let p = port.to_string();
        [
            ["INPUT", "-i", "lo", "-p", "udp", "--dport", &p, "-j", "DROP"].map(String::from).to_vec(),
            ["INPUT", "-i", "lo", "-p", "udp", "--sport", &p, "-j", "DROP"].map(String::from).to_vec(),
        ]
    }

    /// Cuts the node whose mesh listens on `mesh_addr` off from the others.
    pub fn cut(mesh_addr: &str) -> Partition {
        let port: u16 = mesh_addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("mesh port");
        for rule in Self::rules(port) {
            let st = Command::new("iptables").arg("-I").args(&rule).status().expect("run iptables (root needed)");
            assert!(st.success(), "iptables -I {rule:?} failed");
        }
        Partition { port, healed: false }
    }

    /// Lets packets through again.
    pub fn heal(&mut self) {
        if !self.healed {
            for rule in Self::rules(self.port) {
                let _ = Command::new("iptables").arg("-D").args(&rule).status();
            }
            self.healed = true;
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A partition between two groups of nodes: every UDP packet between a mesh port of one group and
/// one of the other is dropped (iptables on loopback); each group still talks within itself.
/// Healed on drop.
pub struct Split {
    rules: Vec<Vec<String>>,
    healed: bool,
}

impl Split {
    /// Cuts the nodes whose mesh listens on `a` off from those on `b`.
    pub fn cut(a: &[&str], b: &[&str]) -> Split {
        let port = |m: &str| m.rsplit_once(':').map(|(_, p)| p.to_string()).expect("mesh port");
        let mut rules = Vec::new();
        for x in a {
            for y in b {
                for (s, d) in [(port(x), port(y)), (port(y), port(x))] {
                    rules.push(
                        ["INPUT", "-i", "lo", "-p", "udp", "--sport", &s, "--dport", &d, "-j", "DROP"]
                            .map(String::from)
                            .to_vec(),
                    );
                }
            }
        }
        for rule in &rules {
            let st = Command::new("iptables").arg("-I").args(rule).status().expect("run iptables (root needed)");
            assert!(st.success(), "iptables -I {rule:?} failed");
        }
        Split { rules, healed: false }
    }

    /// Lets packets through again.
    pub fn heal(&mut self) {
        if !self.healed {
            for rule in &self.rules {
                let _ = Command::new("iptables").arg("-D").args(rule).status();
            }
            self.healed = true;
        }
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        self.heal();
    }
}

/// One of the small single-era test servers in tests/e2e, killed on drop.
pub struct ScriptServer {
    child: std::process::Child,
    pub url: String,
}

impl ScriptServer {
    fn start(script: &str) -> ScriptServer {
        let port = free_port();
        let child = Command::new(python()).arg(e2e(script)).arg(port.to_string()).spawn().expect("start");
        eventually(&format!("{script} to listen"), Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        ScriptServer { child, url: format!("http://127.0.0.1:{port}/mcp") }
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A legacy-era-only server (tests/e2e/legacy_server.py).
pub struct LegacyServer;

impl LegacyServer {
    pub fn start() -> ScriptServer {
        ScriptServer::start("legacy_server.py")
    }
}

/// A modern-era-only server (tests/e2e/modern_only_server.py).
pub struct ModernOnlyServer;

impl ModernOnlyServer {
    pub fn start() -> ScriptServer {
        ScriptServer::start("modern_only_server.py")
    }
}

/// Live processes whose command line contains `needle` and whose parent is one of the cluster's
/// nodes: (pid, node id).
pub fn node_children(c: &TestCluster, needle: &str) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (state, ppid) = (fields.first().copied().unwrap_or("Z"), fields.get(1).and_then(|p| p.parse::<u32>().ok()));
        if state == "Z" || !cmd.contains(needle) {
            continue;
        }
        if let Some(node) = c.nodes.iter().find(|n| Some(n.pid) == ppid) {
            out.push((pid, node.id));
        }
    }
    out
}
