//! Audit queries across the fleet: the node asked fans the question out to every member over the
//! mesh (itself included), waits a bounded time, and merges the answers by time. A member that
//! did not answer in time is named, never silently left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use joch_audit::{Audit, GateCounts, Group, Page, Query, Record, SummaryQuery, VerifyReport};
use serde::{Deserialize, Serialize};

/// A question for one node's audit trail (sent over the mesh as it is).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum AuditAsk {
    /// Records.
    Query(Query),
    /// Counts from the rollups.
    Summary(SummaryQuery),
    /// Check the chain.
    Verify,
    /// Gate counts per minute since a time (µs).
    Gates {
        /// From.
        since_us: u64,
    },
}

/// One node's answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum AuditAnswer {
    /// Records.
    Page(Page),
    /// Counts.
    Groups(Vec<Group>),
    /// The chain's check, with the writer's counters.
    Verify {
        /// The check.
        report: VerifyReport,
        /// Records dropped since the node started.
        dropped: u64,
    },
    /// Gate counts per minute.
    Gates(Vec<(u64, GateCounts)>),
}

/// Answers a question from this node's own trail (blocking reads: call on a blocking thread).
pub fn answer(audit: &Audit, ask: &AuditAsk) -> Result<AuditAnswer, String> {
    let store = audit.store();
    match ask {
        AuditAsk::Query(q) => store.query(q).map(AuditAnswer::Page),
        AuditAsk::Summary(q) => store.summarize(q).map(AuditAnswer::Groups),
        AuditAsk::Verify => store.verify().map(|report| AuditAnswer::Verify { report, dropped: audit.stats().dropped }),
        AuditAsk::Gates { since_us } => store.gates(*since_us).map(AuditAnswer::Gates),
    }
    .map_err(|e| e.to_string())
}

/// Answers on a blocking thread.
pub async fn answer_async(audit: Option<Arc<Audit>>, ask: AuditAsk) -> Result<AuditAnswer, String> {
    let Some(audit) = audit else { return Err("this node keeps no audit trail".into()) };
    tokio::task::spawn_blocking(move || answer(&audit, &ask)).await.map_err(|e| format!("audit query failed: {e}"))?
}

/// A member that did not answer.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    /// Node id.
    pub node: u64,
    /// Why.
    pub error: String,
}

/// Records from the fleet, merged by time.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Records {
    /// The records (newest first, or oldest first as asked).
    pub records: Vec<Record>,
    /// More records matched than the limit.
    pub more: bool,
    /// Members that answered.
    pub answered: Vec<u64>,
    /// Members that did not: the answer is partial.
    pub unanswered: Vec<Unanswered>,
}

/// The members' answers of the kind asked for (`pick` takes it out of an answer, or gives the
/// answer back when it is of another kind), and the members that gave none, with why.
pub fn sort_out<T>(
    answers: Vec<(u64, Result<AuditAnswer, String>)>,
    pick: impl Fn(AuditAnswer) -> Result<T, AuditAnswer>,
) -> (Vec<(u64, T)>, Vec<Unanswered>) {
    let (mut got, mut unanswered) = (Vec::new(), Vec::new());
    for (node, a) in answers {
        match a.map(&pick) {
            Ok(Ok(t)) => got.push((node, t)),
            Ok(Err(other)) => unanswered.push(Unanswered { node, error: format!("unexpected answer {other:?}") }),
            Err(error) => unanswered.push(Unanswered { node, error }),
        }
    }
    (got, unanswered)
}

/// Merges the members' pages: by time (then node and seq, so the order is total), cut at the limit.
pub fn merge_pages(q: &Query, answers: Vec<(u64, Result<AuditAnswer, String>)>) -> Records {
    let (pages, unanswered) = sort_out(answers, |a| match a {
        AuditAnswer::Page(p) => Ok(p),
        other => Err(other),
    });
    let mut out = Records { unanswered, ..Records::default() };
    for (node, p) in pages {
        out.answered.push(node);
        out.more |= p.more;
        out.records.extend(p.records);
    }
    out.records.sort_by_key(|r| (r.time_us, r.node, r.seq));
    if !q.oldest_first {
        out.records.reverse();
    }
    if out.records.len() > q.limit {
        out.records.truncate(q.limit);
        out.more = true;
    }
    out
}

/// Counts from the fleet, added up by key.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Groups {
    /// Groups, most calls first.
    pub groups: Vec<Group>,
    /// Members that answered.
    pub answered: Vec<u64>,
    /// Members that did not.
    pub unanswered: Vec<Unanswered>,
}

/// Adds the members' counts up.
pub fn merge_groups(answers: Vec<(u64, Result<AuditAnswer, String>)>) -> Groups {
    let (per_node, unanswered) = sort_out(answers, |a| match a {
        AuditAnswer::Groups(g) => Ok(g),
        other => Err(other),
    });
    let mut out = Groups { unanswered, ..Groups::default() };
    let mut sum: BTreeMap<String, Group> = BTreeMap::new();
    for (node, gs) in per_node {
        out.answered.push(node);
        for g in gs {
            sum.entry(g.key.clone()).or_insert_with(|| Group { key: g.key.clone(), ..Group::default() }).merge(&g);
        }
    }
    out.groups = sum.into_values().collect();
    out.groups.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.key.cmp(&b.key)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: u64, seq: u64, time_us: u64) -> Record {
        Record { node, seq, time_us, ..Record::default() }
    }

    #[test]
    fn pages_merge_by_time_and_name_who_did_not_answer() {
        let q = Query { limit: 3, ..Query::default() };
        let m = merge_pages(
            &q,
            vec![
                (
                    1,
                    Ok(AuditAnswer::Page(Page {
                        records: vec![rec(1, 2, 30), rec(1, 1, 10)],
                        more: false,
                        scanned: 2,
                    })),
                ),
                (
                    2,
                    Ok(AuditAnswer::Page(Page { records: vec![rec(2, 1, 20), rec(2, 2, 5)], more: false, scanned: 2 })),
                ),
                (3, Err("timed out after 2s".into())),
            ],
        );
        assert_eq!(m.records.iter().map(|r| (r.node, r.time_us)).collect::<Vec<_>>(), vec![(1, 30), (2, 20), (1, 10)]);
        assert!(m.more);
        assert_eq!(m.answered, vec![1, 2]);
        assert_eq!(m.unanswered, vec![Unanswered { node: 3, error: "timed out after 2s".into() }]);
    }

    #[test]
    fn groups_add_up_across_nodes() {
        let g = |k: &str, c, first_us, last_us| Group {
            key: k.into(),
            calls: c,
            denied: 1,
            errors: 0,
            first_us,
            last_us,
            ..Group::default()
        };
        let m = merge_groups(vec![
            (1, Ok(AuditAnswer::Groups(vec![g("alice", 2, 10, 20), g("bob", 1, 50, 50)]))),
            (2, Ok(AuditAnswer::Groups(vec![g("bob", 5, 30, 40)]))),
        ]);
        let bob = Group { denied: 2, ..g("bob", 6, 30, 50) };
        assert_eq!(m.groups, vec![bob, g("alice", 2, 10, 20)]);
    }
}
