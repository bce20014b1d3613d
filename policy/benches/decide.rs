//! Criterion benchmark of the decision: 1,000 rules (and 100, 10,000) of the synthetic rule set
//! (`joch_policy::samples`), each of the three sample calls decided in turn. `cargo bench -p
//! joch-policy`; criterion reports the mean and its interval, `joch-bench policy-decision` the
//! per-decision percentiles (the bar is a p99). Each call is decided as a request is (from
//! its subject's plan) and in full (every candidate rule's every condition).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use joch_policy::samples::{synthetic, Env, CALLS};
use joch_policy::{Policy, PolicySet};

fn decide(c: &mut Criterion) {
    let env = Env::default();
    let mut g = c.benchmark_group("decide");
    for rules in [100, 1_000, 10_000] {
        let set = PolicySet::new(
            synthetic(rules).iter().map(|(n, s)| Arc::new(Policy::compile(n, s).expect("the sample rules compile"))),
        );
        for call in CALLS {
            let f = env.facts(call);
            let call = format!("{}.{}", call.0, call.1);
            // From the subject's plan, as a request is decided (the plan is made on the first).
            g.bench_with_input(BenchmarkId::new(format!("{rules}-rules"), &call), &f, |b, f| {
                b.iter(|| set.decide(black_box(f), &[], None))
            });
            // Every candidate rule's every condition, as `explain` and answers are decided.
            g.bench_with_input(BenchmarkId::new(format!("{rules}-rules-in-full"), &call), &f, |b, f| {
                b.iter(|| set.decide_in_full(black_box(f), &[], None))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
