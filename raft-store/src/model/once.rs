//! Exactly-once writes. A node that forwarded a write to the leader tries again when no answer
//! comes back (the mesh timed out, the stream broke, leadership moved), and the first attempt may
//! have been applied all the same. Each write therefore carries an id ([`Command::Once`]) that
//! every attempt shares; the state machine remembers the outcomes of the newest
//! [`REMEMBERED`] ids and answers a repeat with the first outcome, changing nothing. Without it a
//! retried quarantine could be applied again after an operator had lifted it (the chaos suite's
//! linearizability checker found a pin applied twice: the caller was told "already pinned").
//!
//! [`Command::Once`]: super::command::Command::Once

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::Applied;
use super::registry::ApplyError;

/// Outcomes remembered: a node retries a write for at most its write timeout (seconds), far
/// fewer writes than this.
pub const REMEMBERED: usize = 10_000;

/// The outcomes of the newest writes, by id.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Requests {
    outcomes: BTreeMap<u128, Result<Applied, ApplyError>>,
    order: VecDeque<u128>,
}

impl Requests {
    /// The first outcome of write `id`, if it was applied (and is still remembered).
    pub fn get(&self, id: u128) -> Option<&Result<Applied, ApplyError>> {
        self.outcomes.get(&id)
    }

    /// Remembers the outcome of write `id`, forgetting the oldest beyond [`REMEMBERED`].
    pub fn remember(&mut self, id: u128, outcome: Result<Applied, ApplyError>) {
        if self.outcomes.insert(id, outcome).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
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
        assert!(first.changed && touched.requests);
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
    fn only_the_newest_outcomes_are_kept() {
        let mut r = Requests::default();
        for id in 0..(REMEMBERED as u128 + 5) {
            r.remember(id, Err(ApplyError::UnknownServer { name: "x".into() }));
        }
        assert_eq!(r.len(), REMEMBERED);
        assert!(r.get(4).is_none() && r.get(5).is_some());
    }
}
