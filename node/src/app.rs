//! Wiring of one node: bind every listener, open the store, start Raft, the mesh, the admin API
//! and the HTTP endpoints; then wait for shutdown and drain in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use joch_raft_store::{NodeAddr, Raft, StoreOptions};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminApi;
use crate::cluster::identity;
use crate::cluster::lease::Lease;
use crate::cluster::network::MeshNetwork;
use crate::cluster::{ClusterNode, Settings};
use crate::config::Config;
use crate::mesh::tls::NodeTls;
use crate::mesh::Mesh;

/// Addresses a node actually bound (port 0 resolved). Written to `<data_dir>/addrs.json`.
#[derive(Serialize, Debug, Clone)]
pub struct Bound {
    /// Node id.
    pub id: u64,
    /// Process id.
    pub pid: u32,
    /// MCP HTTP.
    pub mcp: SocketAddr,
    /// Admin gRPC.
    pub admin: SocketAddr,
    /// QUIC mesh.
    pub mesh: SocketAddr,
    /// Metrics.
    pub metrics: SocketAddr,
}

/// The proxy's way to commit approval requests: a write through this node's cluster handle, run
/// on the control plane's runtime.
struct ClusterProposer {
    cluster: Arc<ClusterNode>,
    control: tokio::runtime::Handle,
}

impl crate::policy::approvals::Proposer for ClusterProposer {
    fn propose(&self, command: joch_raft_store::Command) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let cluster = self.cluster.clone();
        let task = self.control.spawn(async move {
            let actor = format!("node {}", cluster.id);
            let out = cluster.write(&actor, command).await.map_err(|e| e.to_string())?;
            match out.response.result {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the state machine gave no answer".to_string()),
            }
        });
        Box::pin(async move { task.await.map_err(|e| e.to_string())? })
    }

    fn discover_elsewhere(
        &self,
        server: String,
    ) -> futures::future::BoxFuture<'static, Result<joch_raft_store::model::discovery::Discovery, String>> {
        let cluster = self.cluster.clone();
        let task = self.control.spawn(async move { cluster.discover_elsewhere(&server).await });
        Box::pin(async move { task.await.map_err(|e| e.to_string())? })
    }

    fn to_leader(&self, servers: Vec<String>) -> futures::future::BoxFuture<'static, Result<bool, String>> {
        let cluster = self.cluster.clone();
        let task = self.control.spawn(async move { cluster.rediscover_on_leader(servers).await });
        Box::pin(async move { task.await.map_err(|e| e.to_string())? })
    }
}

async fn bind_tcp(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Runs a node until `shutdown` completes. This runs on the control plane's runtime (Raft, the
/// mesh, the admin API, the lease); the MCP listener and the proxy run on `data`, a runtime of
/// their own, so agents' traffic queues behind agents' traffic and never in front of a quarantine;
/// agents' connections are served by `workers`, a thread per core (`crate::workers`).
pub async fn run(
    cfg: Config,
    data: tokio::runtime::Handle,
    workers: Arc<crate::workers::Workers>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let prom = crate::telemetry::init_metrics()?;
    // One TLS provider for the process (upstream HTTPS uses it); the mesh passes its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    identity::check(&cfg.data_dir, cfg.id, None)?;

    let mcp_l = bind_tcp("MCP", cfg.listen.mcp).await?;
    let admin_l = bind_tcp("admin", cfg.listen.admin).await?;
    let metrics_l = bind_tcp("metrics", cfg.listen.metrics).await?;
    let tls = NodeTls::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key).context("loading mesh TLS material")?;
    let mesh = Mesh::bind(cfg.listen.mesh, &tls)?;
    let bound = Bound {
        id: cfg.id,
        pid: std::process::id(),
        mcp: mcp_l.local_addr()?,
        admin: admin_l.local_addr()?,
        mesh: mesh.local_addr()?,
        metrics: metrics_l.local_addr()?,
    };
    let admin_scheme = if cfg.insecure_dev { "http" } else { "https" };
    let addr = NodeAddr {
        mesh: cfg.advertise.mesh.clone().unwrap_or_else(|| bound.mesh.to_string()),
        admin: format!("{admin_scheme}://{}", cfg.advertise.admin.clone().unwrap_or_else(|| bound.admin.to_string())),
        mcp: format!(
            "{}://{}",
            if cfg.mcp_tls.is_some() { "https" } else { "http" },
            cfg.advertise.mcp.clone().unwrap_or_else(|| bound.mcp.to_string())
        ),
    };

    let (log_store, state_machine, registry) =
        joch_raft_store::open(&cfg.data_dir.join("raft"), StoreOptions::default())
            .await
            .context("opening the store")?;
    if let Some(key) = registry.load().registry.cluster_key {
        identity::check(&cfg.data_dir, cfg.id, Some(&identity::cluster_id(&key)))?;
    }
    let lease = Arc::new(Lease::new(cfg.id, cfg.raft.lease));
    let raft_config = Arc::new(cfg.raft.openraft_config().context("raft settings")?);
    let network = MeshNetwork::new(mesh.clone(), lease.clone());
    let raft = Raft::new(cfg.id, raft_config, network, log_store, state_machine).await.context("starting raft")?;
    let settings = Settings {
        timing: cfg.raft.clone(),
        fleet_ack_timeout: cfg.fleet_ack_timeout,
        write_timeout: cfg.write_timeout,
        stdio_allow: crate::config::stdio_allow::StdioAllow::new(cfg.id, cfg.stdio_allow.clone()),
    };
    let cluster = ClusterNode::new(cfg.id, addr.clone(), raft.clone(), registry.clone(), mesh.clone(), lease, settings);
    // The audit trail: its own database beside the Raft store (audit/src/lib.rs says why).
    let audit = match &cfg.audit {
        Some(a) => {
            let mut opts = a.options(&cfg.data_dir);
            if let Some(o) = &cfg.otlp {
                opts.tap = Some(crate::audit::otlp::start(o.clone(), cfg.id)?);
            }
            let audit = joch_audit::Audit::open(opts).context("opening the audit trail")?;
            cluster.set_audit(audit.clone());
            Some(audit)
        }
        None => None,
    };

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(cluster.clone().run(stop.clone()));
    let data_dir = cfg.data_dir.clone();
    let id = cfg.id;
    tasks.spawn(async move {
        // Record the cluster this directory joined, once the cluster key is known.
        let mut changes = registry.subscribe();
        loop {
            if let Some(key) = registry.load().registry.cluster_key {
                if let Err(e) = identity::check(&data_dir, id, Some(&identity::cluster_id(&key))) {
                    tracing::error!(error = %e, "data directory identity");
                }
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    let keyring = Arc::new(crate::secrets::Keyring::load(&cfg.kek_files).context("loading the key-encryption keys")?);
    // Made on the data runtime: the proxy's own tasks (stdio reaper, streams) run there.
    let on_data = data.enter();
    let proposer: Arc<dyn crate::policy::approvals::Proposer> =
        Arc::new(ClusterProposer { cluster: cluster.clone(), control: tokio::runtime::Handle::current() });
    let proxy = crate::proxy::Proxy::new(
        cluster.view(),
        crate::proxy::Options {
            limits: cfg.proxy.clone(),
            allow_anonymous: cfg.allow_anonymous,
            tls: cfg.mcp_tls.is_some(),
            keyring: keyring.clone(),
            stdio_allow: crate::config::stdio_allow::StdioAllow::new(cfg.id, cfg.stdio_allow.clone()),
            proposer: proposer.clone(),
            audit: audit.clone(),
            guardian: cfg.guardian.clone(),
            catalog: cfg.catalog.clone(),
            workers: workers.len(),
        },
    )
    .context("starting the MCP proxy")?;
    cluster.set_rediscover(proxy.rediscover_queue());
    // The leader refreshes every discovered server's discovery every `refreshInterval`.
    data.spawn(crate::proxy::discover::refresh(
        Arc::downgrade(&proxy),
        {
            let c = cluster.clone();
            move || c.raft.metrics().borrow().current_leader == Some(c.id)
        },
        proposer.clone(),
    ));
    drop(on_data);
    // The leader counts every server's calls for the trust score.
    if let Some(a) = &cfg.audit {
        let (c, stop) = (cluster.clone(), stop.clone());
        let every = a.traffic_interval;
        tasks.spawn(async move {
            stop.run_until_cancelled(crate::audit::traffic::count(c, proposer, every)).await;
        });
    }
    // Discovery runs where the proxy's upstream clients live: the data plane's runtime. The
    // admin API (`joch mcp discover`) and the mesh (a leader that may not run a stdio server)
    // use it.
    let discoverer: crate::admin::Discoverer = {
        let (proxy, data) = (proxy.clone(), data.clone());
        Arc::new(move |name: String| {
            let (proxy, data) = (proxy.clone(), data.clone());
            Box::pin(async move {
                data.spawn(async move { proxy.discover(&name).await })
                    .await
                    .map_err(|e| format!("the discovery task failed: {e}"))?
            })
        })
    };
    cluster.set_discoverer(discoverer.clone());
    let relayed = Arc::new(crate::proxy::forward::Relayed { proxy: proxy.clone(), runtime: data.clone() });
    tasks.spawn(mesh.clone().serve(cluster.clone(), relayed, stop.clone()));
    let (registry_svc, cluster_svc, access_svc) =
        AdminApi::services(cluster.clone(), keyring.clone(), proxy.governance(), discoverer);
    let bootstrap = match &cfg.admin_token_file {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).with_context(|| format!("reading the admin token file {}", p.display()))?;
            let t = t.trim();
            if t.is_empty() {
                anyhow::bail!("the admin token file {} is empty", p.display());
            }
            Some(crate::auth::token::hash(t))
        }
        None => None,
    };
    let auth = crate::auth::admin::AuthLayer::new(crate::auth::admin::AdminAuth::new(
        cfg.id,
        cluster.registry.clone(),
        bootstrap,
        cfg.insecure_dev,
    ));
    // The admin API is served with the node's certificate from the cluster CA (reloaded when
    // `joch cluster cert renew` replaces it).
    tasks.spawn(tls.pair.clone().watch("node", stop.clone()));
    let admin = tonic::transport::Server::builder()
        .layer(auth)
        .add_service(registry_svc)
        .add_service(cluster_svc)
        .add_service(access_svc);
    let admin_stop = stop.clone();
    if cfg.insecure_dev {
        tasks.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(admin_l).with_nodelay(Some(true));
            if let Err(e) = admin.serve_with_incoming_shutdown(incoming, admin_stop.cancelled_owned()).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    } else {
        let acceptor = crate::http::tls_acceptor(tls.pair.clone(), &[b"h2"]).context("admin API TLS")?;
        let incoming = crate::http::tls_incoming(admin_l, acceptor, Duration::from_secs(10), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = admin.serve_with_incoming_shutdown(incoming, admin_stop.cancelled_owned()).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    let mcp_tls = match &cfg.mcp_tls {
        Some((cert, key)) => {
            let pair = crate::certs::CertStore::load(cert, key).context("loading the MCP listener's certificate")?;
            tasks.spawn(pair.clone().watch("mcp", stop.clone()));
            Some(crate::http::tls_acceptor(pair, &[b"h2", b"http/1.1"]).context("MCP listener TLS")?)
        }
        None => None,
    };
    let mcp_app = crate::http::mcp_router(cluster.view()).merge(proxy.clone().router());
    let serving = data.spawn(crate::http::serve_mcp(mcp_l, workers, mcp_app, cfg.proxy.clone(), mcp_tls, stop.clone()));
    tasks.spawn(async move {
        let _ = serving.await;
    });
    let metrics_stop = stop.clone();
    let metrics_app = crate::http::metrics_router(prom.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(metrics_l, metrics_app).with_graceful_shutdown(metrics_stop.cancelled_owned()).await
        {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tasks.spawn(crate::telemetry::watch_raft(cluster.clone(), prom, stop.clone()));

    let addrs_file = cfg.data_dir.join("addrs.json");
    std::fs::write(&addrs_file, serde_json::to_vec_pretty(&bound)?)
        .with_context(|| format!("writing {}", addrs_file.display()))?;
    tracing::info!(id = cfg.id, mcp = %bound.mcp, admin = %bound.admin, mesh = %bound.mesh, metrics = %bound.metrics,
        data_dir = %cfg.data_dir.display(), "node started");

    // Raft stops on a storage error: that is fatal to the node.
    let mut raft_metrics = raft.metrics();
    let fatal = async move {
        loop {
            if raft_metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
            if let Err(e) = &raft_metrics.borrow().running_state {
                return format!("raft stopped: {e}");
            }
        }
    };
    let failure = tokio::select! {
        _ = shutdown => None,
        why = fatal => Some(why),
    };

    // Drain: stop accepting (admin, HTTP, mesh), let in-flight work finish under a grace timeout,
    // then stop Raft, close the QUIC endpoint and flush the store (on drop).
    stop.cancel();
    let grace =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    if grace.is_err() {
        tracing::warn!("tasks still running after the 10 s grace period; aborting them");
        tasks.abort_all();
    }
    proxy.shutdown().await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    mesh.close().await;
    drop(cluster);
    if let Some(a) = audit {
        // What is queued is written before the process ends.
        a.close();
    }
    tracing::info!("node stopped");
    match failure {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}
