//! A data directory's identity: which node it belongs to and which cluster that node joined,
//! recorded in `<data_dir>/identity.json`. A node started on a data directory of another node
//! (or of another cluster) refuses to start instead of serving someone else's state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";

/// What a data directory records about itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node id the directory belongs to.
    pub node_id: u64,
    /// The cluster it joined (derived from the cluster key), once known.
    pub cluster_id: Option<String>,
}

/// Why a data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory belongs to another node.
    #[error(
        "the data directory {dir} belongs to node {recorded}{}, but this node is configured as node {configured}; \
         use that node's id, or another data directory",
        .cluster.as_ref().map(|c| format!(" of cluster {c}")).unwrap_or_default()
    )]
    OtherNode {
        /// The directory.
        dir: PathBuf,
        /// The node id it records.
        recorded: u64,
        /// The id configured.
        configured: u64,
        /// The cluster it records.
        cluster: Option<String>,
    },
    /// The directory joined another cluster than the one its store now holds.
    #[error("the data directory {dir} belongs to cluster {recorded}, but its store is of cluster {found}")]
    OtherCluster {
        /// The directory.
        dir: PathBuf,
        /// The cluster it records.
        recorded: String,
        /// The cluster of the store found there.
        found: String,
    },
    /// The identity file cannot be read or written.
    #[error("{action} {path}: {message}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The cluster id of a cluster key: the first 8 bytes of SHA-256 over a label and the key, hex
/// (public, names the cluster, reveals nothing of the key).
pub fn cluster_id(key: &[u8; 32]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"joch-cluster-id-v1");
    ctx.update(key);
    ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn read(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| IdentityError::Io {
            action: "parsing",
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityError::Io { action: "reading", path, message: e.to_string() }),
    }
}

fn write(dir: &Path, id: &Identity) -> Result<(), IdentityError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let io = |action, e: std::io::Error| IdentityError::Io { action, path: path.clone(), message: e.to_string() };
    let text = serde_json::to_vec_pretty(id).map_err(|e| io("encoding", std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("writing", e))
}

/// Checks that `dir` belongs to node `node_id` (and, with `cluster`, to that cluster), recording
/// what it did not record yet.
pub fn check(dir: &Path, node_id: u64, cluster: Option<&str>) -> Result<Identity, IdentityError> {
    let found = read(dir)?;
    if let Some(f) = &found {
        if f.node_id != node_id {
            return Err(IdentityError::OtherNode {
                dir: dir.to_path_buf(),
                recorded: f.node_id,
                configured: node_id,
                cluster: f.cluster_id.clone(),
            });
        }
        if let (Some(recorded), Some(found)) = (&f.cluster_id, cluster) {
            if recorded != found {
                return Err(IdentityError::OtherCluster {
                    dir: dir.to_path_buf(),
                    recorded: recorded.clone(),
                    found: found.to_string(),
                });
            }
        }
    }
    let id = Identity {
        node_id,
        cluster_id: found.as_ref().and_then(|f| f.cluster_id.clone()).or(cluster.map(str::to_string)),
    };
    if found.as_ref() != Some(&id) {
        write(dir, &id)?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_serves_one_node_of_one_cluster() {
        let d = tempfile::TempDir::new().unwrap();
        assert_eq!(check(d.path(), 2, None).unwrap().node_id, 2);
        let e = check(d.path(), 3, None).unwrap_err();
        assert!(e.to_string().contains("belongs to node 2, but this node is configured as node 3"), "{e}");
        let id = cluster_id(&[7; 32]);
        assert_eq!(id.len(), 16);
        assert_eq!(check(d.path(), 2, Some(&id)).unwrap().cluster_id.as_deref(), Some(id.as_str()));
        assert!(matches!(check(d.path(), 2, Some("0011223344556677")), Err(IdentityError::OtherCluster { .. })));
        let e = check(d.path(), 5, None).unwrap_err();
        assert!(e.to_string().contains(&format!("of cluster {id}")), "{e}");
    }
}
