use std::time::Duration;

use super::*;

fn rec(time_us: u64, server: &str, agent: &str, tool: &str, outcome: Outcome) -> Record {
    Record {
        time_us,
        node: 1,
        exec: format!("exec-{time_us:016x}"),
        trace: format!("{time_us:032x}"),
        agent: agent.into(),
        server: server.into(),
        method: "tools/call".into(),
        target: tool.into(),
        outcome,
        ..Record::default()
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

#[test]
fn append_assigns_seq_keeps_time_monotone_and_chains() {
    let (_d, s) = store();
    let mut b = vec![rec(100, "git", "a", "t", Outcome::Result), rec(90, "git", "a", "t", Outcome::Result)];
    s.append(&mut b, false).unwrap();
    assert_eq!((b[0].seq, b[1].seq), (1, 2));
    assert_eq!(b[1].time_us, 100, "a record finishing 'earlier' than the last one is kept in chain order");
    let rep = s.verify().unwrap();
    assert_eq!((rep.records, rep.first_seq, rep.last_seq), (2, 1, 2));
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(s.head().seq, 2);
}

#[test]
fn the_chain_continues_after_reopening() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Store::open(d.path()).unwrap();
        s.append(&mut [rec(1, "git", "a", "t", Outcome::Result)], true).unwrap();
    }
    let s = Store::open(d.path()).unwrap();
    s.append(&mut [rec(2, "git", "a", "t", Outcome::Result)], true).unwrap();
    let rep = s.verify().unwrap();
    assert_eq!(rep.records, 2);
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
}

#[test]
fn tampering_with_one_record_is_named() {
    let (_d, s) = store();
    let mut b: Vec<Record> = (1..=5).map(|t| rec(t, "git", "alice", "t", Outcome::Result)).collect();
    s.append(&mut b, false).unwrap();
    assert!(tamper(s.raw(), 3, |r| r.agent = "mallory".into()).unwrap());
    let rep = s.verify().unwrap();
    assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
    assert_eq!(rep.problems[0].seq, 3);
    assert!(rep.problems[0].problem.contains("hash mismatch"));
}

#[test]
fn a_deleted_record_and_a_cut_tail_are_named() {
    let (_d, s) = store();
    let mut b: Vec<Record> = (1..=5).map(|t| rec(t, "git", "alice", "t", Outcome::Result)).collect();
    s.append(&mut b, false).unwrap();
    let (k3, _) = store::record_value(&s, 3).unwrap();
    s.raw().delete(k3).unwrap();
    let (k5, _) = store::record_value(&s, 5).unwrap();
    s.raw().delete(k5).unwrap();
    let rep = s.verify().unwrap();
    let text: Vec<String> = rep.problems.iter().map(|p| format!("{}: {}", p.seq, p.problem)).collect();
    assert!(text.iter().any(|p| p.starts_with("4: records 3..3 are missing")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("5: the head names seq 5")), "{text:?}");
}

#[test]
fn queries_use_indexes_and_filters_newest_first() {
    let (_d, s) = store();
    let mut b = vec![
        rec(10, "git", "alice", "log", Outcome::Result),
        rec(20, "time", "bob", "now", Outcome::Denied),
        rec(30, "git", "bob", "diff", Outcome::Denied),
        rec(40, "git", "alice", "log", Outcome::Error),
    ];
    b[2].policy = "p".into();
    s.append(&mut b, false).unwrap();
    let q = |q: Query| s.query(&q).unwrap().records.iter().map(|r| r.time_us).collect::<Vec<_>>();
    assert_eq!(q(Query { server: Some("git".into()), ..Query::default() }), vec![40, 30, 10]);
    assert_eq!(q(Query { server: Some("git".into()), since_us: 20, until_us: 40, ..Query::default() }), vec![30]);
    assert_eq!(q(Query { outcome: Some(Outcome::Denied), ..Query::default() }), vec![30, 20]);
    assert_eq!(q(Query { agent: Some("alice".into()), oldest_first: true, ..Query::default() }), vec![10, 40]);
    assert_eq!(q(Query { policy: Some("p".into()), ..Query::default() }), vec![30]);
    assert_eq!(q(Query { exec: Some(format!("exec-{:016x}", 20)), ..Query::default() }), vec![20]);
    assert_eq!(q(Query { trace: Some(format!("{:032x}", 40)), ..Query::default() }), vec![40]);
    let page = s.query(&Query { limit: 2, ..Query::default() }).unwrap();
    assert_eq!(page.records.len(), 2);
    assert!(page.more);
}

#[test]
fn summaries_add_whole_minutes_and_the_partial_one() {
    let (_d, s) = store();
    let m = 60_000_000u64;
    let mut b = vec![
        rec(10 * m + 5, "git", "alice", "log", Outcome::Result), // before `since`
        rec(10 * m + 30_000_000, "git", "alice", "log", Outcome::Result), // partial minute
        rec(11 * m, "git", "bob", "log", Outcome::Denied),
        rec(12 * m + 1, "git", "alice", "diff", Outcome::Error),
        rec(12 * m + 2, "time", "carol", "now", Outcome::Result),
    ];
    s.append(&mut b, false).unwrap();
    let since = 10 * m + 20_000_000;
    let by_agent = s
        .summarize(&SummaryQuery { since_us: since, server: Some("git".into()), agent: None, by: GroupBy::Agent })
        .unwrap();
    assert_eq!(
        by_agent,
        vec![
            // Alice: the partial minute's record (its own time), then minute 12 (the minute's start).
            Group {
                key: "alice".into(),
                calls: 2,
                denied: 0,
                errors: 1,
                first_us: 10 * m + 30_000_000,
                last_us: 12 * m,
                ..Group::default()
            },
            Group {
                key: "bob".into(),
                calls: 1,
                denied: 1,
                errors: 0,
                first_us: 11 * m,
                last_us: 11 * m,
                ..Group::default()
            },
        ]
    );
    // One agent's calls, by server (the AgBOM's question).
    let carol = s
        .summarize(&SummaryQuery { since_us: 0, server: None, agent: Some("carol".into()), by: GroupBy::Server })
        .unwrap();
    assert_eq!(carol.iter().map(|g| (g.key.as_str(), g.calls)).collect::<Vec<_>>(), vec![("time", 1)]);
    let by_server = s.summarize(&SummaryQuery { since_us: 0, server: None, agent: None, by: GroupBy::Server }).unwrap();
    assert_eq!(by_server.iter().map(|g| (g.key.as_str(), g.calls)).collect::<Vec<_>>(), vec![("git", 4), ("time", 1)]);
}

#[test]
fn retention_removes_the_oldest_and_the_chain_still_verifies() {
    let (_d, s) = store();
    let m = 60_000_000u64;
    let mut b: Vec<Record> = (1..=10).map(|i| rec(i * m, "git", "a", "t", Outcome::Result)).collect();
    s.append(&mut b, false).unwrap();
    // Keep at most 6 records, and nothing older than minute 3.
    let removed = s.prune(Retention { max_age_us: 8 * m, max_records: 6, max_bytes: u64::MAX }, 11 * m).unwrap();
    assert_eq!(removed, 4);
    let rep = s.verify().unwrap();
    assert_eq!((rep.records, rep.first_seq, rep.last_seq), (6, 5, 10));
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert!(s.query(&Query { exec: Some(format!("exec-{:016x}", m)), ..Query::default() }).unwrap().records.is_empty());
    let g = s.summarize(&SummaryQuery { since_us: 0, server: None, agent: None, by: GroupBy::Server }).unwrap();
    assert_eq!(g[0].calls, 8, "rollups of minutes 3..=10 kept (age), records count separately");
}

#[test]
fn the_writer_commits_in_groups_and_records_drops() {
    let d = tempfile::tempdir().unwrap();
    let mut o = Options::new(d.path().join("audit"));
    o.queue = 4;
    o.max_batch = 1;
    o.window = Duration::from_millis(50);
    o.jsonl = Some(d.path().join("audit.jsonl"));
    let a = Audit::open(o).unwrap();
    {
        // The writer cannot write while the head is held: the queue fills, the rest is dropped.
        let _held = a.store().head.lock().unwrap();
        for i in 0..100 {
            a.record(rec(i + 1, "git", "a", "t", Outcome::Result));
        }
    }
    a.close();
    let st = a.stats();
    assert!(st.dropped > 0, "{st:?}");
    // A gap record precedes the batch after drops (more than one when drops came on both sides
    // of a write).
    let gaps = a.store().query(&Query { kind: Some(Kind::Dropped), ..Query::default() }).unwrap().records;
    assert!(!gaps.is_empty());
    assert_eq!(st.written + st.dropped, 100 + gaps.len() as u64, "every record is written or counted: {st:?}");
    let counted: u64 = gaps.iter().map(|g| g.reason.split(' ').next().unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(counted, st.dropped, "the gap records say how many: {gaps:?}");
    let lines = std::fs::read_to_string(d.path().join("audit.jsonl")).unwrap();
    assert_eq!(lines.lines().count() as u64, st.written);
    assert!(a.store().verify().unwrap().problems.is_empty());
}

#[test]
fn retention_keeps_the_database_under_its_size_limit() {
    let (_d, s) = store();
    let mut b: Vec<Record> = (1..=3000).map(|i| rec(i * 1000, "git", "agent", "tool", Outcome::Result)).collect();
    s.append(&mut b, false).unwrap();
    s.raw().flush().unwrap();
    let before = s.size_bytes();
    assert!(before > 0);
    let limit = before / 2;
    let never = Retention { max_age_us: u64::MAX, max_records: u64::MAX, max_bytes: limit };
    let removed = s.prune(never, 4_000_000).unwrap();
    let after = s.size_bytes();
    assert!(removed > 0 && removed < 3000, "removed {removed}");
    assert!(after <= limit, "{after} bytes left, limit {limit} (was {before})");
    let rep = s.verify().unwrap();
    assert_eq!((rep.records, rep.last_seq), (3000 - removed, 3000));
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    // Under the limit now: the next pass removes nothing.
    assert_eq!(s.prune(never, 4_000_000).unwrap(), 0);
}

#[test]
fn retention_removes_old_rollups_of_every_server() {
    let (_d, s) = store();
    let m = 60_000_000u64;
    let mut b = vec![
        rec(m, "alpha", "a", "t", Outcome::Result),
        rec(2 * m, "git", "a", "t", Outcome::Result),
        rec(9 * m, "alpha", "a", "t", Outcome::Result),
        rec(9 * m + 1, "zulu", "a", "t", Outcome::Result),
        rec(10 * m, "git", "a", "t", Outcome::Result),
    ];
    s.append(&mut b, false).unwrap();
    // Keep 5 minutes: minutes 1 and 2 go, for every server.
    s.prune(Retention { max_age_us: 5 * m, max_records: 100, max_bytes: u64::MAX }, 10 * m).unwrap();
    let g = s.summarize(&SummaryQuery { since_us: 0, server: None, agent: None, by: GroupBy::Server }).unwrap();
    let calls: Vec<(&str, u64)> = g.iter().map(|g| (g.key.as_str(), g.calls)).collect();
    assert_eq!(calls, vec![("alpha", 1), ("git", 1), ("zulu", 1)]);
}

#[test]
fn counts_written_before_they_had_latency_still_count() {
    let old = postcard::to_stdvec(&(7u64, 2u64, 1u64)).unwrap();
    let c = Counts::decode(&old);
    assert_eq!((c.calls, c.denied, c.errors, c.upstream_us, c.timed), (7, 2, 1, 0, 0));
    let mut new = Counts::default();
    new.add(Outcome::Result, 1500);
    new.add(Outcome::Denied, 0);
    let back = Counts::decode(&postcard::to_stdvec(&new).unwrap());
    assert_eq!((back.calls, back.denied, back.upstream_us, back.timed), (2, 1, 1500, 1));
}
