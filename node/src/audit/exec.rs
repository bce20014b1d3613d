//! One execution: the ids an agent sees and an upstream receives (W3C trace context), and what
//! the request path learns about the request on its way, written as one audit record when the
//! request is done. "Done" is when the last holder of the call lets go of it: for a JSON answer
//! right after the answer is built, for a stream when the stream ends (so its bytes and a cut are
//! in the record).

use std::sync::Arc;
use std::time::Instant;

use joch_audit::{Audit, Outcome, Record};
use parking_lot::Mutex;

use crate::auth::agent::{Caller, Source};

/// One execution (shared by every clone of a call).
pub struct Exec {
    /// `exec-YYYYMMDD-` and the 16 hex digits of joch's span id (the date, UTC, so that an id
    /// says when at a glance).
    pub id: Box<str>,
    /// The W3C trace id (32 hex digits): the agent's, or one joch started.
    pub trace: Box<str>,
    /// The agent's span (16 hex digits; empty: none), the parent of joch's.
    pub parent: Box<str>,
    /// Trace flags (sampled, ...), passed on.
    flags: u8,
    started: Instant,
    sink: Option<Arc<Audit>>,
    notes: Mutex<Notes>,
    /// The content guard's carry between the events of this request's stream (a pattern split
    /// across two events is found when the second arrives).
    pub guard_carry: Mutex<joch_guard::Carry>,
    /// The policy decision made before admission, for admission to take (`policy::Judged`).
    pub judged: Mutex<Option<crate::policy::Judged>>,
}

/// What the request path learned.
#[derive(Default)]
pub struct Notes {
    /// Set once the request finished (`on_finish`): only a finished request is recorded.
    pub record: Option<Record>,
    /// Time to the upstream's answer (headers), microseconds.
    pub upstream_us: u64,
    /// Bytes sent back.
    pub bytes_out: u64,
    /// How it ended, when the answer said more than the HTTP exchange (error, cut).
    pub outcome: Option<Outcome>,
    /// Why it was cut.
    pub cut: Option<String>,
    /// The server admitted (a member, on `/mcp`).
    pub server: Option<String>,
    /// The policy and rule that allowed it, and the decision.
    pub decided: Option<(String, String, &'static str)>,
    /// How long the decision took, microseconds.
    pub decide_us: u64,
    /// Read or write.
    pub action: Option<joch_policy::Action>,
    /// What audit-only policies would have decided.
    pub audited: Vec<joch_policy::Match>,
    /// Keep the arguments themselves (the server's `spec.audit.recordArguments`).
    pub keep_args: bool,
    /// A denial sent inside an answer that was already under way (a held call's event stream).
    pub denial: Option<Box<crate::proxy::deny::Denial>>,
    /// What guardian hooks decided, in order (at most [`MAX_VERDICTS`]).
    pub verdicts: Vec<joch_audit::Verdict>,
    /// Verdicts beyond [`MAX_VERDICTS`] (a long stream's events), counted.
    pub verdicts_over: u64,
}

/// Verdicts one record keeps; beyond, a last verdict says how many more there were.
pub const MAX_VERDICTS: usize = 64;

impl Notes {
    /// Notes a verdict (or counts it, past [`MAX_VERDICTS`]).
    pub fn verdict(&mut self, v: joch_audit::Verdict) {
        if self.verdicts.len() < MAX_VERDICTS {
            self.verdicts.push(v);
        } else {
            self.verdicts_over += 1;
        }
    }
}

/// Length of an execution id: `exec-` + 8 digits + `-` + 16 hex digits.
const ID_LEN: usize = 30;

/// The UTC date of a Unix time as the number YYYYMMDD (civil calendar, days-from-civil inverted).
fn yyyymmdd(unix_secs: u64) -> u64 {
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y * 10_000 + m * 100 + d) as u64
}

/// A W3C `traceparent` value: version 00, trace id, parent span id, flags.
pub fn parse_traceparent(v: &str) -> Option<(String, String, u8)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, parent, flags] = parts[..] else { return None };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if version == "ff" || !hex(version, 2) || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace.to_string(), parent.to_string(), u8::from_str_radix(flags, 16).ok()?))
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").field("id", &self.id).field("trace", &self.trace).finish()
    }
}

impl Exec {
    /// A new execution: in the agent's trace if it sent a valid `traceparent`, else a new one;
    /// `id` kept when a peer relayed the request (the relaying node recorded it under that id).
    pub fn start(traceparent: Option<&str>, id: Option<&str>, sink: Option<Arc<Audit>>) -> Arc<Exec> {
        let (trace, parent, flags) = traceparent
            .and_then(parse_traceparent)
            .unwrap_or_else(|| (format!("{:032x}", rand::random::<u128>()), String::new(), 1));
        let id: Box<str> = match id.filter(|i| i.len() == ID_LEN && i.starts_with("exec-") && i.is_ascii()) {
            Some(i) => i.into(),
            None => {
                format!("exec-{}-{:016x}", yyyymmdd(joch_audit::now_us() / 1_000_000), rand::random::<u64>() | 1).into()
            }
        };
        // A peer relaying a request without an agent's span names its own (the same) span.
        let parent = if parent == id[id.len() - 16..] { String::new() } else { parent };
        Arc::new(Exec {
            id,
            trace: trace.into(),
            parent: parent.into(),
            flags,
            started: Instant::now(),
            sink,
            notes: Mutex::default(),
            guard_carry: Mutex::default(),
            judged: Mutex::default(),
        })
    }

    /// An execution that records nothing (unit tests, calls made for checks).
    pub fn detached() -> Arc<Exec> {
        Exec::start(None, None, None)
    }

    /// The `traceparent` for the upstream: the agent's trace, joch's span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace, self.span(), self.flags)
    }

    /// The `traceparent` for a peer this request is relayed to: the agent's own (so the owner
    /// records the same parent), or joch's span when the agent sent none.
    pub fn relay_traceparent(&self) -> String {
        let parent = if self.parent.is_empty() { self.span() } else { &self.parent };
        format!("00-{}-{}-{:02x}", self.trace, parent, self.flags)
    }

    /// joch's span id (16 hex digits: the end of the execution id).
    pub fn span(&self) -> &str {
        &self.id[self.id.len() - 16..]
    }

    /// Notes something learnt.
    pub fn note(&self, f: impl FnOnce(&mut Notes)) {
        if self.sink.is_some() {
            f(&mut self.notes.lock());
        }
    }

    /// Whether anything is recorded.
    pub fn recording(&self) -> bool {
        self.sink.is_some()
    }

    /// How long since the request arrived.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }
}

/// How an agent proved who it is, for the record.
pub fn subject(c: &Caller) -> String {
    match &c.source {
        Source::Token(h) => format!("token:{}", joch_audit::hex(&h[..4])),
        Source::Idp(issuer) => format!("idp:{issuer}:{}", c.name),
        Source::Anonymous => "anonymous".into(),
        Source::Unauthenticated => String::new(),
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else { return };
        let n = std::mem::take(self.notes.get_mut());
        let Some(mut r) = n.record else { return };
        r.latency_us = self.started.elapsed().as_micros() as u64;
        r.upstream_us = n.upstream_us;
        r.bytes_out = n.bytes_out;
        r.decide_us = n.decide_us;
        r.keep_args = n.keep_args;
        r.action = n.action.map(|a| a.as_str().to_string()).unwrap_or_default();
        r.verdicts.extend(n.verdicts);
        if n.verdicts_over > 0 {
            r.verdicts.push(joch_audit::Verdict {
                by: "hook".into(),
                verdict: "more".into(),
                rule: format!("{} more hook verdicts were not kept", n.verdicts_over),
                micros: 0,
            });
        }
        r.verdicts.extend(n.audited.into_iter().map(|m| joch_audit::Verdict {
            by: format!("policy:{}", m.policy),
            verdict: m.decision.as_str().to_ascii_lowercase(),
            rule: m.rule,
            micros: 0,
        }));
        if let Some(s) = n.server {
            r.server = s;
        }
        if let Some(d) = n.denial {
            r.outcome = Outcome::Denied;
            super::denied(&mut r, &d);
        }
        if let Some((policy, rule, decision)) = n.decided {
            // The rule that allowed it (a call denied after it was allowed, by a rate limit say,
            // keeps its denial).
            if r.outcome != Outcome::Denied && r.policy.is_empty() {
                (r.policy, r.rule, r.decision) = (policy, rule, decision.to_ascii_lowercase());
            }
        }
        if let Some(o) = n.outcome {
            if r.outcome == Outcome::Result {
                r.outcome = o;
            }
        }
        if let Some(why) = n.cut {
            r.outcome = Outcome::Cut;
            r.reason = why;
        }
        r.time_us = joch_audit::now_us();
        sink.record(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_the_w3c_spec_says() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into(), 1))
        );
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let e = Exec::start(Some(ok), None, None);
        assert_eq!(&*e.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&*e.parent, "00f067aa0ba902b7");
        // Relayed: the owner keeps the agent's parent; without one, no self-parent.
        let owner = Exec::start(Some(&e.relay_traceparent()), Some(&e.id), None);
        assert_eq!((&*owner.id, &*owner.parent), (&*e.id, "00f067aa0ba902b7"));
        let bare = Exec::start(None, None, None);
        let owner = Exec::start(Some(&bare.relay_traceparent()), Some(&bare.id), None);
        assert_eq!((&*owner.trace, &*owner.parent), (&*bare.trace, ""));
        let tp = e.traceparent();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
        assert_eq!(parse_traceparent(&tp).unwrap().0, *e.trace);
        assert_eq!(e.id.len(), ID_LEN);
        assert!(tp.contains(e.span()));
        // A peer's id is kept; junk is not.
        let peer = "exec-20261203-00000000000000ab";
        assert_eq!(&*Exec::start(None, Some(peer), None).id, peer);
        assert_ne!(&*Exec::start(None, Some("exec-x"), None).id, "exec-x");
    }

    #[test]
    fn execution_ids_carry_the_utc_date() {
        assert_eq!(yyyymmdd(0), 19700101);
        assert_eq!(yyyymmdd(951_782_400), 20000229);
        assert_eq!(yyyymmdd(1_796_256_000 - 1), 20261202);
        assert_eq!(yyyymmdd(1_796_256_000 + 86_399), 20261203);
    }
}
