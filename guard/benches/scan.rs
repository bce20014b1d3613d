//! Criterion benchmarks of the scanner with the whole default rule set (injection families and
//! every secret and PII rule): benign developer text and hostile text, 1 KB, 64 KB and 1 MB.
//! `cargo bench -p joch-guard`; throughput is reported per input size.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use joch_guard::samples::{benign, hostile};
use joch_guard::{Options, Scanner};

fn scan(c: &mut Criterion) {
    let scanner = Scanner::new();
    let opts = Options::all();
    let mut g = c.benchmark_group("scan");
    for (label, n) in [("1KB", 1 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)] {
        for (kind, text) in [("benign", benign(n)), ("hostile", hostile(n))] {
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_with_input(BenchmarkId::new(kind, label), &text, |b, t| {
                b.iter(|| scanner.scan(black_box(t), &opts))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
