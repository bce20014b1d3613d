//! Process lifecycle: the root shutdown signal, and whether a process is still there.

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: shutting down"),
    }
}

/// Whether `pid` is a live (not zombie) process.
///
/// A zombie whose other threads still hold its files counts as alive: a killed multi-threaded
/// process closes its sockets only when its last thread exits, and a node restarted on the same
/// ports before that would fail to bind.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let zombie = stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')).unwrap_or(true);
            let holds_files =
                std::fs::read_dir(format!("/proc/{pid}/fd")).map(|mut d| d.next().is_some()).unwrap_or(false);
            !zombie || holds_files
        }
        Err(_) => false,
    }
}
