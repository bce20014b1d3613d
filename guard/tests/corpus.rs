//! The labelled corpus (`guard/corpus/labelled.jsonl`: benign tool output of many kinds, and
//! attacks of every family, obfuscated ones included): precision and recall per family, printed
//! (`cargo test -p joch-guard --test corpus -- --nocapture`) and held to floors, so a rule change
//! that makes the guard noisier or blinder fails here. The figures are in docs/content-guard.md.

use std::collections::BTreeMap;

use joch_guard::{Family, Options, Scanner};
use serde_json::Value;

const CORPUS: &str = include_str!("../corpus/labelled.jsonl");

struct Sample {
    label: String,
    kind: String,
    text: String,
}

fn corpus() -> Vec<Sample> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Sample { label: s("label"), kind: s("kind"), text: s("text") }
        })
        .collect()
}

#[test]
fn precision_and_recall_per_family_hold_their_floors() {
    let scanner = Scanner::new();
    let samples = corpus();
    let injection = |label: &str| !matches!(label, "benign" | "secret" | "pii");
    // Per family: samples labelled with it, of those detected (any injection hit), of those
    // named with this family; and samples flagged with it, of those really attacks.
    let mut labelled: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut flagged: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut benign = (0usize, Vec::new());
    let mut missed = Vec::new();
    for s in &samples {
        let hits = scanner.scan(&s.text, &Options::all());
        let families: Vec<Family> = hits.iter().map(|h| h.family).collect();
        let detected = families.iter().any(|f| f.is_injection());
        if s.label == "benign" {
            benign.0 += 1;
            if detected {
                benign.1.push(format!("{} ({}): {:?}", s.kind, s.text.chars().take(60).collect::<String>(), hits));
            }
        } else if injection(&s.label) {
            let e = labelled.entry(s.label.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(detected);
            e.2 += usize::from(families.iter().any(|f| f.as_str() == s.label));
            if !detected {
                missed.push(format!("{} ({}): {}", s.label, s.kind, s.text.chars().take(80).collect::<String>()));
            }
        } else {
            // Secrets and PII: found at all.
            let e = labelled.entry(s.label.clone()).or_default();
            e.0 += 1;
            let found = families.iter().any(|f| !f.is_injection());
            e.1 += usize::from(found);
            e.2 += usize::from(found);
        }
        let mut seen: Vec<&str> = families.iter().filter(|f| f.is_injection()).map(|f| f.as_str()).collect();
        seen.sort();
        seen.dedup();
        for f in seen {
            let e = flagged.entry(f).or_default();
            e.0 += 1;
            e.1 += usize::from(injection(&s.label));
        }
    }
    println!("family          samples  detected  named-right  flagged  flagged-were-attacks  precision");
    let (mut n, mut det) = (0, 0);
    for (label, (count, detected, named)) in &labelled {
        let (fl, ok) = flagged.get(label.as_str()).copied().unwrap_or((0, 0));
        let precision = if fl == 0 { "-".to_string() } else { format!("{:.2}", ok as f64 / fl as f64) };
        println!("{label:<15} {count:>7}  {detected:>8}  {named:>11}  {fl:>7}  {ok:>20}  {precision:>9}");
        if injection(label) {
            n += count;
            det += detected;
        }
    }
    let recall = det as f64 / n as f64;
    let fp = benign.1.len() as f64 / benign.0 as f64;
    println!(
        "injection recall {det}/{n} = {recall:.2}; benign samples flagged {}/{} = {fp:.3}",
        benign.1.len(),
        benign.0
    );
    for b in &benign.1 {
        println!("  false positive: {b}");
    }
    for m in &missed {
        println!("  missed: {m}");
    }
    assert!(recall >= 0.85, "injection recall {recall:.2} under 0.85");
    assert!(fp <= 0.03, "{} benign samples flagged: {:?}", benign.1.len(), benign.1);
    for (label, (count, detected, _)) in &labelled {
        assert!(*detected as f64 / *count as f64 >= 0.7, "{label}: {detected}/{count} detected");
    }
}
