//! Exactly-once writes. A node that forwarded a write to the leader tries again when no answer
//! comes back (the mesh timed out, the stream broke, leadership moved), and the first attempt may
//! have been applied all the same. Each write therefore carries an id ([`Command::Once`]) that
//! every attempt shares; the state machine remembers the outcomes of the newest
//! [`REMEMBERED`] ids and answers a repeat with the first outcome, changing nothing. Without it a
//! retried quarantine could be applied again after an operator had lifted it (the chaos suite's
//! linearizability checker found a pin applied twice: the caller was told "already pinned").
//!
//! [`Command::Once`]: super::command::Command::Once

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use super::command::Applied;
use super::registry::ApplyError;

/// Outcomes remembered: a node retries a write for at most its write timeout (10 s by default);
/// at the cluster's measured peak of about 800 writes a second that is fewer writes than this.
pub const REMEMBERED: usize = 10_000;

/// A write's first outcome, and the log index where it was applied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Remembered {
    pub index: u64,
    pub outcome: Result<Applied, ApplyError>,
}

/// The outcomes of the newest writes, by id. Persistent maps: publishing the registry after a
/// write shares them instead of copying; each outcome is stored under its own key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Requests {
    outcomes: OrdMap<u128, Remembered>,
    order: Vector<u128>,
}

impl Requests {
    /// What write `id` did first, if it was applied (and is still remembered).
    pub fn get(&self, id: u128) -> Option<&Remembered> {
        self.outcomes.get(&id)
    }

    /// Remembers the outcome of write `id` applied at `index`, forgetting the oldest beyond
    /// [`REMEMBERED`]; returns the ids whose stored entry changed (written or to delete).
    pub fn remember(&mut self, id: u128, index: u64, outcome: Result<Applied, ApplyError>) -> Vec<u128> {
        let mut changed = vec![id];
        if self.outcomes.insert(id, Remembered { index, outcome }).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
                changed.push(old);
            }
        }
        changed
    }

    /// Rebuilds the table from stored entries (any order).
    pub fn from_entries(mut entries: Vec<(u128, Remembered)>) -> Requests {
        entries.sort_by_key(|(_, r)| r.index);
        let order = entries.iter().map(|(id, _)| *id).collect();
        Requests { outcomes: entries.into_iter().collect(), order }
    }

    /// Every entry, for a full write of the state.
    pub fn iter(&self) -> impl Iterator<Item = (&u128, &Remembered)> {
        self.outcomes.iter()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{Command, Request};
    use super::super::registry::{Registry, Touched};
    use super::super::resource::{Endpoint, McpServerSpec};
    use super::*;

    fn once(id: u128, command: Command) -> Request {
        Request { actor: "op".into(), at_ms: 1, command: Command::Once { id, command: Box::new(command) } }
    }

    #[test]
    fn a_repeated_write_is_answered_with_its_first_outcome_and_changes_nothing() {
        let mut reg = Registry::default();
        let spec =
            McpServerSpec { endpoint: Some(Endpoint { url: "http://127.0.0.1:1/mcp".into() }), ..Default::default() };
        let create = Command::CreateServer { name: "gh".into(), labels: Default::default(), spec };
        reg.apply(1, &once(7, create.clone()), &mut Touched::default()).unwrap();
        let pin = Command::Pin { name: "gh".into(), version: "1.0.0".into() };
        let mut touched = Touched::default();
        let first = reg.apply(2, &once(8, pin.clone()), &mut touched).unwrap();
        assert!(first.changed);
        assert_eq!(touched.requests, [8], "its outcome is stored");
        // The same write again (a retried forward): the first answer, no second history line.
        let again = reg.apply(3, &once(8, pin.clone()), &mut Touched::default()).unwrap();
        assert_eq!(again, first);
        assert_eq!(reg.server_history("gh").filter(|c| c.action == "pin").count(), 1);
        // A rejection is remembered too: a repeat of a create that failed fails the same way.
        let dup = reg.apply(4, &once(9, create.clone()), &mut Touched::default()).unwrap_err();
        reg.apply(5, &once(10, Command::DeleteServer { name: "gh".into() }), &mut Touched::default()).unwrap();
        assert_eq!(reg.apply(6, &once(9, create), &mut Touched::default()).unwrap_err(), dup);
        assert!(reg.servers.get("gh").is_none(), "the repeat did not create it");
        // Another id is another write.
        assert!(reg.apply(7, &once(11, pin), &mut Touched::default()).is_err(), "gh is gone");
    }

    #[test]
    fn only_the_newest_outcomes_are_kept_and_reload_in_order() {
        let mut r = Requests::default();
        let gone = || Err(ApplyError::UnknownServer { name: "x".into() });
        for id in 0..(REMEMBERED as u128 + 5) {
            let changed = r.remember(id, id as u64 + 1, gone());
            assert_eq!(
                changed.len(),
                if id < REMEMBERED as u128 { 1 } else { 2 },
                "the newest written, the oldest dropped"
            );
        }
        assert_eq!(r.len(), REMEMBERED);
        assert!(r.get(4).is_none() && r.get(5).is_some());
        let mut entries: Vec<(u128, Remembered)> = r.iter().map(|(id, v)| (*id, v.clone())).collect();
        entries.reverse();
        let mut again = Requests::from_entries(entries);
        assert_eq!(again, r);
        again.remember(u128::MAX, u64::MAX, gone());
        assert!(again.get(5).is_none(), "the oldest goes first after a reload too");
    }
}
