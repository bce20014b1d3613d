//! `joch cluster ...`: init, add, join, remove, status, and the CA.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use joch_proto::admin as pb;
use serde_json::json;

use super::client::{self, req, settle, status_err};
use super::output::{self, table};
use super::{Format, Global};
use crate::mesh::pki::{self, PkiDir};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Initialise a new cluster on the node `--server` names, alone or with the given members.
    Init {
        /// A member: ID=MESH_ADDR[,ADMIN_URL[,MCP_URL]] (repeatable). Default: the node alone.
        #[arg(long = "member")]
        members: Vec<String>,
        /// A node already initialised is not an error (exit 0, "already initialised"): for a
        /// start-up job that runs on every start (docker/docker-compose.yml).
        #[arg(long)]
        if_new: bool,
    },
    /// Write what a cluster of N nodes on hosts PREFIX1..PREFIXN needs into DIR, once: the CA
    /// and every node's certificate (for its host name), the bootstrap admin token, the
    /// key-encryption key, and nodeI.yaml (listening on every address: MCP 8080, admin 8443,
    /// mesh 7400/udp, metrics 9090; advertising PREFIXI; data in /data). On a DIR that has them,
    /// only nodes added since (a larger --nodes) get their certificate and config. What
    /// docker/docker-compose.yml runs at every start.
    Scaffold {
        dir: PathBuf,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names are PREFIX1, PREFIX2, ...
        #[arg(long, default_value = "node")]
        host_prefix: String,
    },
    /// Add a node (learner first, caught up by log or snapshot, then voter).
    Add {
        #[arg(long)]
        id: u64,
        /// Its QUIC mesh address, HOST:PORT.
        #[arg(long)]
        mesh: String,
        /// Its admin URL.
        #[arg(long, default_value = "")]
        admin: String,
        /// Its MCP URL.
        #[arg(long, default_value = "")]
        mcp: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Join the node `--server` names to the cluster that the node at `--via` belongs to.
    Join {
        /// Admin URL of any member of the cluster.
        #[arg(long)]
        via: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Every member's role, term, applied index, lag and reachability.
    Status,
    /// Add a session-sealing key: new session ids are sealed with it, older ids still open until
    /// they expire.
    RotateSessionKey,
    /// The cluster CA and node certificates.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// A node's certificate.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Replace node ID's certificate in DIR (the CA's directory) with a new one: same names, a
    /// new key, valid DAYS from now. The node reloads it within seconds, without a restart.
    Renew {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Lifetime in days.
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create a cluster CA in DIR (refuses to overwrite one).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue node ID's certificate from the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Extra DNS name or IP for the certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Lifetime in days (default 180).
        #[arg(long)]
        days: Option<u32>,
    },
}

fn parse_member(s: &str) -> anyhow::Result<pb::Member> {
    let bad = || anyhow::anyhow!("--member {s:?}: expected ID=MESH_ADDR[,ADMIN_URL[,MCP_URL]]");
    let (id, rest) = s.split_once('=').ok_or_else(bad)?;
    let id: u64 = id.parse().map_err(|_| bad())?;
    let mut parts = rest.split(',');
    let mesh = parts.next().filter(|m| !m.is_empty()).ok_or_else(bad)?.to_string();
    Ok(pb::Member { id, mesh, admin: parts.next().unwrap_or("").into(), mcp: parts.next().unwrap_or("").into() })
}

/// `joch cluster scaffold`: everything once; on a directory that has it, only what nodes added
/// since need (their certificates and configs).
fn scaffold(dir: &std::path::Path, nodes: u64, prefix: &str) -> anyhow::Result<ExitCode> {
    if !(1..=9).contains(&nodes) {
        anyhow::bail!("--nodes must be between 1 and 9");
    }
    let token = dir.join("admin-token");
    let fresh = !token.exists();
    let pki = PkiDir(dir.join("pki"));
    if fresh {
        std::fs::create_dir_all(dir)?;
        pki::init_ca(&pki)?;
        super::dev::write_private(&dir.join("kek"), &crate::secrets::Keyring::generate())?;
    }
    let mut added = Vec::new();
    for id in 1..=nodes {
        let host = format!("{prefix}{id}");
        let config = dir.join(format!("{host}.yaml"));
        if config.exists() {
            continue;
        }
        pki::issue_node(&pki, id, std::slice::from_ref(&host), None)?;
        let cfg = format!(
            "# node {id} of a {nodes}-node cluster: written by `joch cluster scaffold`\n\
             id: {id}\n\
             data_dir: /data\n\
             listen:\n  mcp: 0.0.0.0:8080\n  admin: 0.0.0.0:8443\n  mesh: 0.0.0.0:7400\n  metrics: 0.0.0.0:9090\n\
             advertise:\n  mcp: {host}:8080\n  admin: {host}:8443\n  mesh: {host}:7400\n\
             tls:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n\
             admin:\n  token_file: {token}\n\
             secrets:\n  kek_file: {kek}\n\
             # Agents reach the nodes through a balancer on the cluster's private network;\n\
             # terminate TLS there, or give the nodes certificates (mcp_tls.cert, .key).\n\
             mcp_tls:\n  allow_plain_http: true\n",
            ca = pki.ca_cert().display(),
            cert = pki.node_cert(id).display(),
            key = pki.node_key(id).display(),
            token = token.display(),
            kek = dir.join("kek").display(),
        );
        std::fs::write(&config, cfg)?;
        added.push(host);
    }
    if fresh {
        // Last: its presence says the directory is complete.
        super::dev::write_private(&token, &crate::auth::token::generate(crate::auth::token::ADMIN_PREFIX))?;
    }
    match (fresh, added.is_empty()) {
        (true, _) => {
            say!("scaffolded {nodes} node(s) in {}: pki/, admin-token, kek, {}", dir.display(), added.join(", "))
        }
        (false, true) => say!("{} is already scaffolded for {nodes} node(s): left as it is", dir.display()),
        (false, false) => say!("added {} to {} (certificates and configs)", added.join(", "), dir.display()),
    }
    Ok(ExitCode::SUCCESS)
}

fn membership(format: Format, r: &pb::MembershipReply) {
    if format != Format::Table {
        output::data(format, &json!({"voters": r.voters, "learners": r.learners, "logIndex": r.log_index}));
    } else {
        say!("membership: voters {:?}, learners {:?} [log index {}]", r.voters, r.learners, r.log_index);
    }
}

pub async fn run(g: &Global, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    if let ClusterCmd::Ca { cmd } = cmd {
        match cmd {
            CaCmd::Init { dir } => {
                pki::init_ca(&PkiDir(dir.clone()))?;
                say!("created cluster CA in {}", dir.display());
            }
            CaCmd::Issue { dir, id, hosts, days } => {
                pki::issue_node(&PkiDir(dir.clone()), id, &hosts, days)?;
                let days = days.unwrap_or(pki::NODE_CERT_DAYS);
                say!("issued node{id}.pem and node{id}-key.pem in {} (valid {days} days)", dir.display());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ClusterCmd::Scaffold { dir, nodes, host_prefix } = &cmd {
        return scaffold(dir, *nodes, host_prefix);
    }
    if let ClusterCmd::Cert { cmd: CertCmd::Renew { dir, id, days } } = cmd {
        pki::renew_node(&PkiDir(dir.clone()), id, days)?;
        let days = days.unwrap_or(pki::NODE_CERT_DAYS);
        say!(
            "renewed node{id}.pem in {} (valid {days} days); node {id} reloads it within seconds, without a restart",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut n = client::node(g).await?;
    let url = n.url.clone();
    let e = |s| status_err(&url, s);
    match cmd {
        ClusterCmd::Ca { .. } | ClusterCmd::Cert { .. } | ClusterCmd::Scaffold { .. } => unreachable!("handled above"),
        ClusterCmd::RotateSessionKey => return super::access::rotate_session_key(g).await,
        ClusterCmd::Init { members, if_new } => {
            let members = members.iter().map(|m| parse_member(m)).collect::<anyhow::Result<Vec<_>>>()?;
            let r = match n.cluster.init(req(pb::InitRequest { members })).await {
                Err(s) if if_new && s.code() == tonic::Code::AlreadyExists => {
                    say!("already initialised");
                    return Ok(ExitCode::SUCCESS);
                }
                r => r.map_err(e)?.into_inner(),
            };
            if g.output != Format::Table {
                output::data(
                    g.output,
                    &json!({"members": r.members.iter().map(|m| json!({"id": m.id, "mesh": m.mesh, "admin": m.admin, "mcp": m.mcp})).collect::<Vec<_>>()}),
                );
            } else {
                say!("cluster initialised with {} member(s)", r.members.len());
            }
        }
        ClusterCmd::Add { id, mesh, admin, mcp, learner } => {
            let r = pb::AddMemberRequest { member: Some(pb::Member { id, mesh, admin, mcp }), learner_only: learner };
            membership(g.output, &n.cluster.add_member(req(r)).await.map_err(e)?.into_inner());
        }
        ClusterCmd::Join { via, learner } => {
            let me = n.cluster.node_info(req(pb::Empty {})).await.map_err(e)?.into_inner();
            let mut existing = client::connect(&via).await?;
            let r = pb::AddMemberRequest { member: Some(me), learner_only: learner };
            let out = existing.cluster.add_member(req(r)).await.map_err(|s| status_err(&via, s))?.into_inner();
            membership(g.output, &out);
        }
        ClusterCmd::Remove { id } => {
            membership(
                g.output,
                &n.cluster.remove_member(req(pb::RemoveMemberRequest { id })).await.map_err(e)?.into_inner(),
            );
        }
        ClusterCmd::Status => {
            let c = n.cluster.clone();
            let s = settle(&url, || {
                let mut c = c.clone();
                async move { c.status(req(pb::Empty {})).await }
            })
            .await?;
            print_status(g.output, &s);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `cluster status`.
pub fn print_status(format: Format, s: &pb::ClusterStatus) {
    if format != Format::Table {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "role": m.role, "voter": m.voter, "reachable": m.reachable, "term": m.term,
                "last_log_index": m.last_log_index, "applied_index": m.applied_index, "lag": m.lag,
                "leader_contact_ms": if m.vouched { json!(m.leader_contact_ms) } else { serde_json::Value::Null },
                "serving": m.reachable && m.stale.is_empty(), "stale": if m.stale.is_empty() { serde_json::Value::Null } else { json!(m.stale) },
                "snapshot_index": m.snapshot_index, "purged_index": m.purged_index, "mesh": m.mesh, "admin": m.admin, "mcp": m.mcp,
                "stdio_refused": m.stdio_refused,
                "error": if m.error.is_empty() { serde_json::Value::Null } else { json!(m.error) }})
            })
            .collect();
        let leader = if s.has_leader { json!(s.leader) } else { serde_json::Value::Null };
        output::data(
            format,
            &output::strip_nulls(json!({"node": s.node_id, "leader": leader, "term": s.term, "members": members})),
        );
        return;
    }
    let leader = if s.has_leader { format!("node {}", s.leader) } else { "none".into() };
    say!("seen from node {}: leader {leader}, term {}", s.node_id, s.term);
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.role.clone(),
                if m.voter { "voter".into() } else { "learner".into() },
                if m.reachable { m.term.to_string() } else { "-".into() },
                if m.reachable { m.applied_index.to_string() } else { "-".into() },
                if m.reachable { m.lag.to_string() } else { "-".into() },
                if m.reachable { "yes".into() } else { "NO".into() },
                match (m.reachable, m.stale.is_empty()) {
                    (false, _) => "-".into(),
                    (true, true) => "yes".into(),
                    (true, false) => format!("NO: {}", m.stale),
                },
                m.mesh.clone(),
                m.admin.clone(),
                m.error.clone(),
            ]
        })
        .collect();
    table(&["ID", "ROLE", "KIND", "TERM", "APPLIED", "LAG", "REACHABLE", "SERVING", "MESH", "ADMIN", "ERROR"], &rows);
    for m in &s.members {
        for r in &m.stdio_refused {
            say!("node {} answers stdio-not-allowed for {r}", m.id);
        }
    }
}
