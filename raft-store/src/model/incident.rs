//! Incidents: what the content guard saw that operators must see, replicated so any node shows
//! every node's (`joch guard incidents`), with the evidence. Prompt injection in what a server
//! sent back, and tool poisoning in a `tools/list` answer that discovery did not see (a server
//! may show other tools to some sessions); the latter lowers the server's trust score until an
//! operator acknowledges the incident (`joch guard ack ID`) or pins the server again.
//!
//! Bounded: the newest [`MAX_INCIDENTS`] are kept; a repeat of an open incident (same server,
//! agent, kind and rules within [`REPEAT_WINDOW_MS`]) counts on it instead of adding one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::Applied;
use super::discovery::Finding;
use super::registry::{changed, invalid, server_target, unchanged, ApplyError, Registry, Stamp, Touched};
use super::validate::FieldError;

/// Incidents kept.
pub const MAX_INCIDENTS: usize = 1000;
/// A repeat within this long counts on the open incident.
pub const REPEAT_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Longest evidence kept (bytes).
pub const MAX_EVIDENCE: usize = 400;

/// What was seen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IncidentKind {
    /// Prompt injection in a result, a notification or a server-to-client request.
    PromptInjection,
    /// A poisoned tool in a `tools/list` answer.
    ToolPoisoning,
}

impl IncidentKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::PromptInjection => "prompt-injection",
            IncidentKind::ToolPoisoning => "tool-poisoning",
        }
    }
}

/// What a node reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IncidentReport {
    /// What was seen.
    pub kind: IncidentKind,
    /// The node that saw it.
    pub node: u64,
    /// The server that sent it.
    pub server: String,
    /// The agent it was on its way to.
    pub agent: String,
    /// The rules that found it.
    pub rules: Vec<String>,
    /// What the guard did (`stripped`, `denied`, `annotated`, `flagged`).
    pub verdict: String,
    /// What matched, quoted (cut to [`MAX_EVIDENCE`]).
    pub evidence: String,
    /// The execution id (its audit records).
    pub exec: String,
    /// When the node saw it (Unix ms).
    pub at_ms: u64,
    /// Tool poisoning: the findings, per tool.
    pub findings: Vec<Finding>,
}

/// One incident.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Incident {
    /// Its id (from 1, never reused).
    pub id: u64,
    /// The first report.
    pub report: IncidentReport,
    /// Reports counted on it (1 and up).
    pub count: u64,
    /// The last report's time (Unix ms).
    pub last_ms: u64,
    /// Who acknowledged it, when.
    pub acknowledged: Option<Stamp>,
}

/// The incidents, and the tool-poisoning findings they hold against servers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Incidents {
    /// The next id.
    pub next: u64,
    /// Oldest first.
    pub list: VecDeque<Incident>,
    /// Tool-poisoning findings of open incidents, by server (the trust score counts them).
    pub poisoned: BTreeMap<String, Vec<Finding>>,
}

impl Incidents {
    /// The findings open incidents hold against `server`.
    pub fn findings(&self, server: &str) -> &[Finding] {
        self.poisoned.get(server).map(Vec::as_slice).unwrap_or_default()
    }

    /// The findings of the open tool-poisoning incidents of `server`, gathered again.
    fn gather(&mut self, server: &str) {
        let mut found: Vec<Finding> = Vec::new();
        for i in self.list.iter().filter(|i| i.acknowledged.is_none() && i.report.server == server) {
            for f in &i.report.findings {
                if !found.iter().any(|x| x.tool == f.tool && x.rule == f.rule) {
                    found.push(f.clone());
                }
            }
        }
        if found.is_empty() {
            self.poisoned.remove(server);
        } else {
            self.poisoned.insert(server.to_string(), found);
        }
    }
}

impl Registry {
    /// `RaiseIncident` and `AckIncident`.
    pub(super) fn apply_incident(
        &mut self,
        command: &super::command::Command,
        stamp: &Stamp,
        touched: &mut Touched,
    ) -> Result<(String, Applied), ApplyError> {
        use super::command::Command;
        let (target, detail, server) = match command {
            Command::RaiseIncident(r) => {
                let mut r = r.clone();
                if r.server.is_empty() {
                    return Err(invalid(FieldError { field: "server".into(), message: "required".into() }));
                }
                if r.evidence.len() > MAX_EVIDENCE {
                    let mut cut = MAX_EVIDENCE;
                    while !r.evidence.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    r.evidence.truncate(cut);
                }
                let inc = Arc::make_mut(&mut self.incidents);
                let repeat = inc.list.iter_mut().rev().find(|i| {
                    i.acknowledged.is_none()
                        && i.report.kind == r.kind
                        && i.report.server == r.server
                        && i.report.agent == r.agent
                        && i.report.rules == r.rules
                        && r.at_ms.saturating_sub(i.last_ms) <= REPEAT_WINDOW_MS
                });
                if let Some(i) = repeat {
                    i.count += 1;
                    i.last_ms = i.last_ms.max(r.at_ms);
                    let id = i.id;
                    touched.incidents = true;
                    return Ok((format!("incident/{id}"), unchanged("counted on the open incident")));
                }
                inc.next = inc.next.max(1);
                let id = inc.next;
                inc.next += 1;
                let detail = format!(
                    "incident {id}: {} from MCP server {} seen by node {} ({}; {})",
                    r.kind.as_str(),
                    r.server,
                    r.node,
                    r.rules.join(", "),
                    r.verdict
                );
                let server = (r.kind == IncidentKind::ToolPoisoning).then(|| r.server.clone());
                let last_ms = r.at_ms;
                inc.list.push_back(Incident { id, report: r, count: 1, last_ms, acknowledged: None });
                let mut dropped = Vec::new();
                while inc.list.len() > MAX_INCIDENTS {
                    if let Some(old) = inc.list.pop_front() {
                        dropped.push(old.report.server);
                    }
                }
                for s in dropped.iter().chain(server.iter()) {
                    inc.gather(s);
                }
                (format!("incident/{id}"), detail, server)
            }
            Command::AckIncident { id } => {
                let inc = Arc::make_mut(&mut self.incidents);
                let Some(i) = inc.list.iter_mut().find(|i| i.id == *id) else {
                    return Err(ApplyError::Access { kind: "incident".into(), name: id.to_string(), exists: false });
                };
                if i.acknowledged.is_some() {
                    return Ok((format!("incident/{id}"), unchanged("already acknowledged")));
                }
                i.acknowledged = Some(stamp.clone());
                let server = i.report.server.clone();
                let poisoning = i.report.kind == IncidentKind::ToolPoisoning;
                inc.gather(&server);
                (format!("incident/{id}"), format!("incident {id} acknowledged"), poisoning.then_some(server))
            }
            _ => unreachable!("apply_incident is given incident commands only"),
        };
        touched.incidents = true;
        // Tool poisoning counts against the server's trust score while an incident is open.
        if let Some(server) = server {
            let (rescored, moved) = self.retrust(&server);
            if rescored {
                touched.servers.push(server.clone());
            }
            if let Some(m) = moved {
                self.note(&server_target(&server), "Incident", &format!("{detail}; {m}"), stamp, touched);
            }
        }
        Ok((target, changed(detail)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::command::{Command, Request};
    use crate::model::resource::{Endpoint, McpServerSpec};

    fn apply(reg: &mut Registry, index: u64, at_ms: u64, c: Command) -> Result<Applied, ApplyError> {
        reg.apply(index, &Request { actor: "alice".into(), at_ms, command: c }, &mut Touched::default())
    }

    fn report(kind: IncidentKind, rules: &[&str], at_ms: u64) -> IncidentReport {
        IncidentReport {
            kind,
            node: 2,
            server: "gh".into(),
            agent: "bot".into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            verdict: "reported".into(),
            evidence: "x".repeat(MAX_EVIDENCE + 10),
            exec: "exec-1".into(),
            at_ms,
            findings: match kind {
                IncidentKind::ToolPoisoning => {
                    vec![Finding { tool: "add".into(), rule: rules[0].into(), evidence: "read ~/.ssh/id_rsa".into() }]
                }
                IncidentKind::PromptInjection => Vec::new(),
            },
        }
    }

    #[test]
    fn repeats_count_on_the_open_incident_and_poisoning_counts_against_trust_until_acknowledged() {
        let mut reg = Registry::default();
        let spec =
            McpServerSpec { endpoint: Some(Endpoint { url: "http://127.0.0.1:1/mcp".into() }), ..Default::default() };
        apply(&mut reg, 1, 1_000, Command::CreateServer { name: "gh".into(), labels: Default::default(), spec })
            .unwrap();
        let score = |reg: &Registry| reg.servers["gh"].status.trust.as_ref().map(|t| t.score).unwrap_or_default();
        let before = score(&reg);

        let first = report(IncidentKind::PromptInjection, &["injection.override"], 2_000);
        apply(&mut reg, 2, 2_000, Command::RaiseIncident(first.clone())).unwrap();
        apply(
            &mut reg,
            3,
            3_000,
            Command::RaiseIncident(report(IncidentKind::PromptInjection, &["injection.override"], 3_000)),
        )
        .unwrap();
        assert_eq!(reg.incidents.list.len(), 1, "a repeat counts on the open one");
        let i = &reg.incidents.list[0];
        assert_eq!((i.id, i.count, i.last_ms, i.report.evidence.len()), (1, 2, 3_000, MAX_EVIDENCE));
        // Past the window, or with other rules: a new one.
        apply(
            &mut reg,
            4,
            3_000 + REPEAT_WINDOW_MS + 1,
            Command::RaiseIncident(report(
                IncidentKind::PromptInjection,
                &["injection.override"],
                3_000 + REPEAT_WINDOW_MS + 1,
            )),
        )
        .unwrap();
        assert_eq!(reg.incidents.list.len(), 2);
        assert_eq!(score(&reg), before, "prompt injection does not move the score");

        apply(
            &mut reg,
            5,
            9_000,
            Command::RaiseIncident(report(IncidentKind::ToolPoisoning, &["poison.instruction"], 9_000)),
        )
        .unwrap();
        assert_eq!(reg.incidents.findings("gh").len(), 1);
        assert!(score(&reg) < before, "{} -> {}", before, score(&reg));
        let line = reg.server_history("gh").last().unwrap();
        assert!(line.detail.contains("incident 3: tool-poisoning") && line.detail.contains("trust"), "{}", line.detail);

        let acked = apply(&mut reg, 6, 10_000, Command::AckIncident { id: 3 }).unwrap();
        assert!(acked.changed);
        assert!(reg.incidents.findings("gh").is_empty());
        assert_eq!(score(&reg), before, "acknowledged: the finding stops counting");
        assert!(!apply(&mut reg, 7, 11_000, Command::AckIncident { id: 3 }).unwrap().changed);
        assert!(apply(&mut reg, 8, 11_000, Command::AckIncident { id: 99 }).is_err());
    }

    #[test]
    fn the_newest_are_kept() {
        let mut reg = Registry::default();
        for n in 0..(MAX_INCIDENTS as u64 + 5) {
            let rule = format!("r{n}");
            apply(
                &mut reg,
                n + 1,
                n,
                Command::RaiseIncident(report(IncidentKind::PromptInjection, &[rule.as_str()], n)),
            )
            .unwrap();
        }
        assert_eq!(reg.incidents.list.len(), MAX_INCIDENTS);
        assert_eq!(reg.incidents.list.front().map(|i| i.id), Some(6));
    }
}
