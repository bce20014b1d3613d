//! The cluster under test: real `joch serve` processes on loopback, one slot per node with fixed
//! ports (a restarted node comes back where it was), each node's mesh reached through a UDP relay
//! (its advertised mesh address), and gRPC clients of every node's admin API.
//!
//! Processes on loopback, not containers: on 2 cores a node starts in well under a second and a
//! kill, pause or restart is one signal, so a ten-minute run holds many more faults than it would
//! with containers; iptables rules on `lo` by port cut exactly the links a partition names.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use joch_proto::admin::{self as pb, cluster_client::ClusterClient, registry_client::RegistryClient};
use parking_lot::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where libfaketime lives on Debian (package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A node's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub mcp: u16,
    pub admin: u16,
    pub mesh: u16,
    pub metrics: u16,
    /// The UDP relay in front of `mesh`: the address the other nodes dial.
    pub relay: u16,
}

/// One node's place: id, ports, directory.
#[derive(Debug)]
pub struct Slot {
    pub id: u64,
    pub ports: Ports,
    pub dir: PathBuf,
    channel: Channel,
}

#[derive(Default)]
struct Proc {
    child: Option<Child>,
}

/// The cluster's nodes and how to reach them.
pub struct Cluster {
    joch: PathBuf,
    pub slots: Vec<Slot>,
    procs: Mutex<Vec<Proc>>,
    token: String,
    /// The node whose wall clock the clock nemesis steps (started under libfaketime), if any.
    pub clock_node: Option<u64>,
    /// The node whose data directory is a small tmpfs (the disk nemesis fills it), if any.
    pub disk_node: Option<u64>,
}

/// A free port on loopback (TCP and UDP are separate spaces; a UDP port is checked too).
fn free_port() -> anyhow::Result<u16> {
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
}

impl Cluster {
    /// Scaffolds `slots` nodes in `dir` (CA, certificates, admin token, key-encryption key with
    /// `joch cluster scaffold`; configs of our own with fixed loopback ports).
    pub fn create(joch: &Path, dir: &Path, slots: u64) -> anyhow::Result<Cluster> {
        let conf = dir.join("conf");
        let out = Command::new(joch)
            .args(["cluster", "scaffold"])
            .arg(&conf)
            .args(["--nodes", &slots.to_string(), "--host-prefix", "node"])
            .output()
            .context("running joch cluster scaffold")?;
        anyhow::ensure!(out.status.success(), "joch cluster scaffold: {}", String::from_utf8_lossy(&out.stderr));
        let token = std::fs::read_to_string(conf.join("admin-token"))?.trim().to_string();
        let ca = std::fs::read(conf.join("pki/ca.pem"))?;
        let clock_node = Path::new(LIBFAKETIME).exists().then_some(2);
        let mut all = Vec::new();
        for id in 1..=slots {
            let ports = Ports {
                mcp: free_port()?,
                admin: free_port()?,
                mesh: free_port()?,
                metrics: free_port()?,
                relay: free_port()?,
            };
            let nd = dir.join(format!("node{id}"));
            std::fs::create_dir_all(nd.join("data"))?;
            let cfg = format!(
                "# chaos node {id}\nid: {id}\ndata_dir: {data}\n\
                 listen:\n  mcp: 127.0.0.1:{mcp}\n  admin: 127.0.0.1:{admin}\n  mesh: 127.0.0.1:{mesh}\n  metrics: 127.0.0.1:{metrics}\n\
                 advertise:\n  mcp: 127.0.0.1:{mcp}\n  admin: 127.0.0.1:{admin}\n  mesh: 127.0.0.1:{relay}\n\
                 tls:\n  ca: {c}/pki/ca.pem\n  cert: {c}/pki/node{id}.pem\n  key: {c}/pki/node{id}-key.pem\n\
                 admin:\n  token_file: {c}/admin-token\nsecrets:\n  kek_file: {c}/kek\n",
                data = nd.join("data").display(),
                c = conf.display(),
                mcp = ports.mcp,
                admin = ports.admin,
                mesh = ports.mesh,
                metrics = ports.metrics,
                relay = ports.relay,
            );
            std::fs::write(nd.join("joch.yaml"), cfg)?;
            if Some(id) == clock_node {
                std::fs::write(nd.join("faketime"), "+0\n")?;
            }
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", ports.admin))?
                .tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name(format!("node{id}")),
                )?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            all.push(Slot { id, ports, dir: nd, channel });
        }
        // The disk nemesis's node keeps its data on a small tmpfs (root only; without it, no disk faults).
        let disk_node = (slots >= 3).then_some(3).filter(|id| {
            let data = all[*id as usize - 1].dir.join("data");
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256m", "chaos-disk"])
                .arg(&data)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let procs = Mutex::new((0..slots).map(|_| Proc::default()).collect());
        Ok(Cluster { joch: joch.to_path_buf(), slots: all, procs, token, clock_node, disk_node })
    }

    pub fn slot(&self, id: u64) -> &Slot {
        &self.slots[id as usize - 1]
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().map(|s| s.id)
    }

    /// `http://127.0.0.1:PORT` of node `id`'s MCP listener.
    pub fn mcp_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.slot(id).ports.mcp)
    }

    /// Starts node `id` (no-op when it runs).
    pub fn start(&self, id: u64) -> anyhow::Result<()> {
        let mut procs = self.procs.lock();
        let p = &mut procs[id as usize - 1];
        if p.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none()) {
            return Ok(());
        }
        let slot = self.slot(id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(slot.dir.join("node.log"))?;
        let mut cmd = Command::new(&self.joch);
        cmd.arg("serve").arg("--config").arg(slot.dir.join("joch.yaml"));
        for (k, _) in std::env::vars() {
            if k.starts_with("JOCH_") {
                cmd.env_remove(k);
            }
        }
        if Some(id) == self.clock_node {
            // Its wall clock is stepped through this file; its monotonic clock stays true.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", slot.dir.join("faketime"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        p.child = Some(child);
        Ok(())
    }

    /// `kill -9` of node `id`; waits for it to be gone.
    pub fn kill(&self, id: u64) {
        let mut procs = self.procs.lock();
        if let Some(mut c) = procs[id as usize - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&self, id: u64, stop: bool) {
        let procs = self.procs.lock();
        if let Some(c) = &procs[id as usize - 1].child {
            let sig = if stop { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").arg(sig).arg(c.id().to_string()).status();
        }
    }

    /// Whether node `id`'s process runs (paused counts as running).
    pub fn running(&self, id: u64) -> bool {
        let mut procs = self.procs.lock();
        procs[id as usize - 1].child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Removes node `id`'s data (it must be stopped): it can join again as a new member.
    pub fn wipe(&self, id: u64) -> anyhow::Result<()> {
        let data = self.slot(id).dir.join("data");
        for e in std::fs::read_dir(&data)? {
            let p = e?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }

    /// Steps node `id`'s wall clock to `offset_s` seconds from the true time.
    pub fn set_clock(&self, id: u64, offset_s: i64) -> anyhow::Result<()> {
        std::fs::write(self.slot(id).dir.join("faketime"), format!("{offset_s:+}\n"))?;
        Ok(())
    }

    /// A request with the admin token and a deadline.
    pub fn req<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r.set_timeout(timeout);
        r
    }

    pub fn registry(&self, id: u64) -> RegistryClient<Channel> {
        RegistryClient::new(self.slot(id).channel.clone())
    }

    pub fn cluster_api(&self, id: u64) -> ClusterClient<Channel> {
        ClusterClient::new(self.slot(id).channel.clone())
    }

    pub fn access(&self, id: u64) -> pb::access_client::AccessClient<Channel> {
        pb::access_client::AccessClient::new(self.slot(id).channel.clone())
    }

    /// This node's view of the cluster, if it answers within 2 s.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let mut api = self.cluster_api(id);
        let r = api.status(self.req(pb::Empty {}, Duration::from_secs(2)));
        tokio::time::timeout(Duration::from_secs(3), r).await.ok()?.ok().map(|r| r.into_inner())
    }

    /// The cluster as the first running node that knows a leader reports it.
    pub async fn view(&self) -> Option<pb::ClusterStatus> {
        for id in self.ids() {
            if !self.running(id) {
                continue;
            }
            if let Some(s) = self.status(id).await.filter(|s| s.has_leader) {
                return Some(s);
            }
        }
        None
    }

    /// The leader, in that view.
    pub async fn leader(&self) -> Option<u64> {
        self.view().await.map(|s| s.leader)
    }

    /// The voters, in that view.
    pub async fn voters(&self) -> Vec<u64> {
        self.view().await.map(|s| voters(&s)).unwrap_or_default()
    }

    /// The member record of node `id` as `cluster init` and `add-member` take it.
    pub fn member(&self, id: u64) -> pb::Member {
        let p = self.slot(id).ports;
        pb::Member {
            id,
            mesh: format!("127.0.0.1:{}", p.relay),
            admin: format!("https://127.0.0.1:{}", p.admin),
            mcp: format!("127.0.0.1:{}", p.mcp),
        }
    }

    /// Forms the cluster of nodes `ids` through the first.
    pub async fn init(&self, ids: &[u64]) -> anyhow::Result<()> {
        let members: Vec<pb::Member> = ids.iter().map(|id| self.member(*id)).collect();
        let mut last = String::new();
        for _ in 0..100 {
            let req = self.req(pb::InitRequest { members: members.clone() }, Duration::from_secs(20));
            let r = self.cluster_api(ids[0]).init(req).await;
            match r {
                Ok(_) => return Ok(()),
                Err(s) => last = s.message().to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("cluster init: {last}")
    }

    /// Unmounts the disk node's tmpfs (when the run is over and its node is stopped).
    pub fn unmount(&self) {
        if let Some(id) = self.disk_node {
            let _ = Command::new("umount").arg(self.slot(id).dir.join("data")).stderr(Stdio::null()).status();
        }
    }
}

/// The voters of a status.
pub fn voters(s: &pb::ClusterStatus) -> Vec<u64> {
    s.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.slots.len() as u64 {
            self.pause(id, false);
            self.kill(id);
        }
        self.unmount();
    }
}
