//! Which stdio commands this node runs: its own config's `stdio.allow` (executables, or
//! directories whose executables are all allowed), not the replicated store alone, so an admin
//! credential is not code execution on every node. Matching is lexical on the absolute path the
//! node would run (a bare command resolved on the node's PATH first, `.` and `..` folded), and
//! the child is started from exactly that path.

use std::path::{Component, Path, PathBuf};

/// A node's stdio allow-list.
#[derive(Debug, Clone, Default)]
pub struct StdioAllow {
    node: u64,
    entries: Vec<PathBuf>,
}

impl StdioAllow {
    /// The list of node `node` (absolute paths; empty: no stdio command runs here).
    pub fn new(node: u64, entries: Vec<PathBuf>) -> StdioAllow {
        StdioAllow { node, entries: entries.iter().map(|e| normalize(e)).collect() }
    }

    /// The entries, for status and messages.
    pub fn entries(&self) -> &[PathBuf] {
        &self.entries
    }

    /// The absolute path to run for `command`, or why this node does not run it.
    pub fn check(&self, command: &str) -> Result<PathBuf, String> {
        let path = resolve(command).map_err(|why| format!("node {} does not run {command:?}: {why}", self.node))?;
        let allowed = self.entries.iter().any(|e| path == *e || (e.is_dir() && path.starts_with(e)));
        if allowed {
            return Ok(path);
        }
        let list = if self.entries.is_empty() {
            "it is empty".to_string()
        } else {
            self.entries.iter().map(|e| e.display().to_string()).collect::<Vec<_>>().join(", ")
        };
        Err(format!(
            "node {} does not run {}: not in its local stdio.allow list ({list}); add the executable or its \
             directory to that node's config",
            self.node,
            path.display()
        ))
    }
}

/// The absolute path a command names: as given when absolute, looked up on this process's PATH
/// when bare. Relative paths are refused (relative to what?).
fn resolve(command: &str) -> Result<PathBuf, String> {
    let p = Path::new(command);
    if p.is_absolute() {
        return Ok(normalize(p));
    }
    if command.contains('/') {
        return Err("a relative path; give an absolute path or a bare command name".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
        let candidate = dir.join(command);
        if is_executable(&candidate) {
            return Ok(normalize(&candidate));
        }
    }
    Err("not found on the node's PATH".into())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `.` and `..` folded away, lexically (`/a/allowed/../../bin/sh` is `/bin/sh`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_files_directories_and_escapes() {
        let d = tempfile::TempDir::new().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let allow = StdioAllow::new(2, vec![bin.clone(), PathBuf::from("/usr/bin/true")]);
        let inside = bin.join("server").display().to_string();
        assert_eq!(allow.check(&inside).unwrap(), bin.join("server"));
        assert!(allow.check("/usr/bin/true").is_ok());
        assert!(allow.check("/usr/bin/false").unwrap_err().contains("not in its local stdio.allow list"));
        // Out of the directory with `..`: refused.
        let escape = format!("{}/../../../bin/sh", bin.display());
        assert!(allow.check(&escape).unwrap_err().contains("/bin/sh"));
        // A sibling whose name starts like the directory's is not inside it.
        let sibling = format!("{}-evil/x", bin.display());
        assert!(allow.check(&sibling).is_err());
        assert!(allow.check("relative/x").unwrap_err().contains("relative path"));
        let none = StdioAllow::new(3, vec![]);
        assert!(none.check("/usr/bin/true").unwrap_err().contains("it is empty"));
        assert!(none.check("/usr/bin/true").unwrap_err().starts_with("node 3 does not run"));
    }
}
