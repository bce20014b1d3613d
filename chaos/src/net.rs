//! Partitions with iptables on loopback. Every mesh datagram from node A to node B crosses
//! loopback twice: from A's QUIC port to B's relay port, then from A's relay port to B's QUIC port
//! (see `relay`). Dropping both legs cuts A -> B and nothing else, so one-way cuts, bridges and
//! any grouping are made of these two rules per direction.

use std::process::Command;

use crate::cluster::Cluster;

/// The comment that marks our rules (removed at start and at the end, whatever happened).
const TAG: &str = "joch-chaos";

/// A set of iptables rules in force, removed by `heal`.
#[derive(Debug, Default)]
pub struct Cut {
    rules: Vec<Vec<String>>,
}

fn rule(sport: u16, dport: u16) -> Vec<String> {
    ["INPUT", "-i", "lo", "-p", "udp", "--sport", &sport.to_string(), "--dport", &dport.to_string()]
        .into_iter()
        .map(String::from)
        .chain(["-m", "comment", "--comment", TAG, "-j", "DROP"].map(String::from))
        .collect()
}

impl Cut {
    /// Drops everything node `from` sends to node `to`.
    pub fn one_way(&mut self, c: &Cluster, from: u64, to: u64) -> anyhow::Result<()> {
        let (a, b) = (c.slot(from).ports, c.slot(to).ports);
        for r in [rule(a.mesh, b.relay), rule(a.relay, b.mesh)] {
            let st = Command::new("iptables").arg("-I").args(&r).status()?;
            anyhow::ensure!(st.success(), "iptables -I {} failed (root needed)", r.join(" "));
            self.rules.push(r);
        }
        Ok(())
    }

    /// Cuts `a` from `b` both ways.
    pub fn both(&mut self, c: &Cluster, a: u64, b: u64) -> anyhow::Result<()> {
        self.one_way(c, a, b)?;
        self.one_way(c, b, a)
    }

    /// Cuts every node of `x` from every node of `y`.
    pub fn groups(&mut self, c: &Cluster, x: &[u64], y: &[u64]) -> anyhow::Result<()> {
        for a in x {
            for b in y {
                self.both(c, *a, *b)?;
            }
        }
        Ok(())
    }

    /// Removes these rules (one instance each: overlapping cuts keep theirs).
    pub fn heal(&mut self) {
        for r in self.rules.drain(..) {
            let _ = Command::new("iptables").arg("-D").args(&r).status();
        }
    }
}

/// Removes every rule a run left (an interrupted run, or the start of a new one).
pub fn clear_all() {
    let Ok(out) = Command::new("iptables").args(["-S", "INPUT"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(spec) = line.strip_prefix("-A ").filter(|l| l.contains(TAG)) {
            let args: Vec<&str> = spec.split_whitespace().collect();
            let _ = Command::new("iptables").arg("-D").args(&args).status();
        }
    }
}

/// Whether iptables can be used here.
pub fn available() -> bool {
    Command::new("iptables").args(["-S", "INPUT"]).output().is_ok_and(|o| o.status.success())
}
