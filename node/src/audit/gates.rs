//! Seed 003's rollout gates, computed fleet-wide from every member's per-minute gate counts
//! (kept with the audit trail): each gate's value against its target and its block condition.
//!
//! | gate | target | blocks when |
//! | --- | --- | --- |
//! | policy decision p95 latency | <= 50 ms | > 150 ms in every one of the last 15 minutes |
//! | unapproved high-risk writes | 0 | > 0 since `--since`: a write ran that an audit-mode policy would have denied or held |
//! | approval queue median wait | <= 10 min | > 20 min over the last 30 minutes |
//! | unknown server connections | 0 | > 0 since `--since` (requests for servers not registered) |
//! | output QUARANTINE ratio | < 1 % | > 3 % over the last 15 minutes: unmeasured until the content guard exists |

use std::collections::BTreeMap;

use joch_audit::{quantile, GateCounts};
use serde::Serialize;

const MINUTE_US: u64 = 60_000_000;

/// Where a gate stands.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Within its target.
    Ok,
    /// Beyond its target, not (yet) blocking.
    OverTarget,
    /// Its block condition holds: stop the rollout.
    Blocking,
    /// Nothing to measure it by (no traffic of its kind in the window, or no stage measures it yet).
    Unmeasured,
}

/// One gate.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    /// Its name, as seed 003 writes it.
    pub gate: &'static str,
    /// Its value (`None`: unmeasured).
    pub value: Option<f64>,
    /// Unit of the value.
    pub unit: &'static str,
    /// The target.
    pub target: &'static str,
    /// The block condition.
    pub block_if: &'static str,
    /// Who owns it.
    pub owner: &'static str,
    /// Where it stands.
    pub status: Status,
    /// How it was measured.
    pub detail: String,
}

fn sum(minutes: &BTreeMap<u64, GateCounts>, from_minute: u64) -> GateCounts {
    let mut g = GateCounts::default();
    for (_, c) in minutes.range(from_minute..) {
        g.merge(c);
    }
    g
}

fn status(value: Option<f64>, over_target: impl Fn(f64) -> bool, blocking: bool) -> Status {
    match value {
        None => Status::Unmeasured,
        Some(_) if blocking => Status::Blocking,
        Some(v) if over_target(v) => Status::OverTarget,
        Some(_) => Status::Ok,
    }
}

/// The gates at `now_us`, from the fleet's gate counts per minute; counts of events (the
/// "immediate stop" gates) are taken since `since_us`.
pub fn evaluate(minutes: &BTreeMap<u64, GateCounts>, now_us: u64, since_us: u64) -> Vec<Gate> {
    let now_min = now_us / MINUTE_US;
    let last = |n: u64| now_min.saturating_sub(n - 1);

    // Decision p95, over the last 15 minutes; blocking if every one of them was over 150 ms.
    let w15 = sum(minutes, last(15));
    let p95_ms = quantile(&w15.decide_us, 0.95).map(|us| us as f64 / 1000.0);
    let every_minute_slow = (last(15)..=now_min)
        .all(|m| minutes.get(&m).and_then(|c| quantile(&c.decide_us, 0.95)).is_some_and(|us| us > 150_000));
    let decision = Gate {
        gate: "Policy decision p95 latency",
        value: p95_ms,
        unit: "ms",
        target: "<= 50ms",
        block_if: "> 150ms for 15m",
        owner: "Platform",
        status: status(p95_ms, |v| v > 50.0, every_minute_slow),
        detail: format!("{} decisions in the last 15 minutes (bucket upper bound, within 1.42x)", w15.decisions),
    };

    let since = sum(minutes, since_us / MINUTE_US);
    let writes = Gate {
        gate: "Unapproved high-risk writes",
        value: Some(since.unapproved_writes as f64),
        unit: "calls",
        target: "0",
        block_if: "> 0 immediate stop",
        owner: "Governance",
        status: status(Some(since.unapproved_writes as f64), |v| v > 0.0, since.unapproved_writes > 0),
        detail: "writes that ran without an approval although a policy in audit mode would have denied or held them"
            .into(),
    };

    let w30 = sum(minutes, last(30));
    let wait_min = quantile(&w30.approval_wait_s, 0.5).map(|s| s as f64 / 60.0);
    let approvals = Gate {
        gate: "Approval queue median wait",
        value: wait_min,
        unit: "min",
        target: "<= 10m",
        block_if: "> 20m for 30m",
        owner: "Ops Lead",
        status: status(wait_min, |v| v > 10.0, wait_min.is_some_and(|v| v > 20.0)),
        detail: format!("{} approvals decided in the last 30 minutes (median over them)", w30.approvals),
    };

    let unknown = Gate {
        gate: "Unknown server connections",
        value: Some(since.unknown_servers as f64),
        unit: "requests",
        target: "0",
        block_if: "> 0 immediate stop",
        owner: "Security",
        status: status(Some(since.unknown_servers as f64), |v| v > 0.0, since.unknown_servers > 0),
        detail: "requests for servers that are not registered (refused with -32001)".into(),
    };

    let output = Gate {
        gate: "Output QUARANTINE ratio",
        value: None,
        unit: "%",
        target: "< 1%",
        block_if: "> 3% for 15m",
        owner: "Safety Team",
        status: Status::Unmeasured,
        detail: format!(
            "{} tool results in the last 15 minutes; no output safety stage quarantines results yet (the content guard)",
            w15.results
        ),
    };
    vec![decision, writes, approvals, unknown, output]
}

#[cfg(test)]
mod tests {
    use super::*;
    use joch_audit::{Kind, Outcome, Record, Verdict};

    fn minute(m: u64, records: &[Record]) -> (u64, GateCounts) {
        let mut g = GateCounts::default();
        for r in records {
            g.add(r);
        }
        (m, g)
    }

    fn decided(us: u64) -> Record {
        Record { decide_us: us, method: "tools/call".into(), outcome: Outcome::Result, ..Record::default() }
    }

    #[test]
    fn quiet_fleet_passes_and_says_what_it_cannot_measure() {
        let now = 1000 * MINUTE_US;
        let m: BTreeMap<u64, GateCounts> = (986..=1000).map(|i| minute(i, &[decided(40), decided(900)])).collect();
        let g = evaluate(&m, now, 0);
        assert_eq!(g[0].status, Status::Ok, "{g:?}");
        assert!(g[0].value.unwrap() < 2.0);
        assert_eq!((g[1].status, g[3].status), (Status::Ok, Status::Ok));
        assert_eq!(g[2].status, Status::Unmeasured, "no approvals");
        assert_eq!(g[4].status, Status::Unmeasured, "no output stage");
    }

    #[test]
    fn slow_decisions_block_only_when_every_minute_of_15_was_slow() {
        let now = 1000 * MINUTE_US;
        let mut m: BTreeMap<u64, GateCounts> = (986..=1000).map(|i| minute(i, &[decided(200_000)])).collect();
        assert_eq!(evaluate(&m, now, 0)[0].status, Status::Blocking);
        m.insert(990, minute(990, &[decided(1_000)]).1);
        assert_eq!(evaluate(&m, now, 0)[0].status, Status::OverTarget, "one fast minute: not for 15m");
    }

    #[test]
    fn unknown_servers_and_unapproved_writes_block_at_once() {
        let now = 1000 * MINUTE_US;
        let unknown = Record { code: -32001, outcome: Outcome::Denied, ..Record::default() };
        let write = Record {
            action: "write".into(),
            outcome: Outcome::Result,
            verdicts: vec![Verdict { by: "policy:p".into(), verdict: "require_approval".into(), ..Verdict::default() }],
            ..Record::default()
        };
        let approved = Record { approval: "apr-1".into(), ..write.clone() };
        let wait = Record { kind: Kind::ApprovalDecided, latency_us: 25 * 60 * 1_000_000, ..Record::default() };
        let m: BTreeMap<u64, GateCounts> = [minute(999, &[unknown, write, approved, wait])].into_iter().collect();
        let g = evaluate(&m, now, 0);
        assert_eq!((g[1].status, g[1].value), (Status::Blocking, Some(1.0)), "{g:?}");
        assert_eq!((g[3].status, g[3].value), (Status::Blocking, Some(1.0)));
        assert_eq!(g[2].status, Status::Blocking, "{g:?}");
        // Outside the window asked for: not counted.
        let g = evaluate(&m, now, 1000 * MINUTE_US);
        assert_eq!(g[3].status, Status::Ok);
    }
}
