//! The content guard's scanner (`docs/content-guard.md`): what a server sends back is read here
//! before it enters an agent's context.
//!
//! - [`Scanner::scan`] finds prompt injection by family (instruction override in several
//!   languages, role or system-prompt hijack, hidden instructions: invisible characters, HTML and
//!   markdown comments, homoglyphs, base64 payloads that decode to instructions; tool-call
//!   coercion, data-exfiltration lures, references to other servers' tools), reaching for
//!   secrets and asking for secrecy, and secrets and PII (private keys, cloud keys, GitHub and
//!   Slack tokens, provider API keys, JWTs, passwords in URLs, emails, phone numbers, card numbers
//!   with a Luhn check). Every hit names its rule and its span.
//! - [`strip`] removes injected spans, [`redact`] replaces secrets by `[REDACTED:rule]`.
//! - [`Carry`] scans a stream chunk by chunk, so a pattern split across two chunks is found.
//!
//! How it stays fast: every rule names the literals that must occur near a match (its anchors);
//! a few SIMD passes find them all (Teddy searchers over keys that stand for the anchors, on the
//! text lower-cased block by block; the few one- and two-byte anchors with `memchr`). A rule whose
//! matches begin at an anchor is tried once there, anchored; the others run their regex (the
//! `regex` crate: linear time, no backtracking) in a window around the anchor, and only if one
//! of their `near` words is in it. Runs of digits and of base64 are found 64 bytes at a time from
//! the bytes' classes as bit masks (AVX2; elsewhere by probing every 9th or 28th byte). Text with
//! no anchors costs the passes and the masks.

mod anchors;
mod homoglyph;
mod rules;
mod runs;
pub mod samples;

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine;
use regex::Regex;
use serde::{Deserialize, Serialize};

pub use aho_corasick::AhoCorasick as Automaton;
use homoglyph::fold_confusables;
pub use rules::{invisible, RULESET_VERSION};
use runs::{runs, Run};

/// What a rule finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// "Ignore previous instructions", in several languages.
    Override,
    /// Role or system-prompt hijack: "you are now", chat-template tokens, "developer mode".
    Role,
    /// Instructions hidden from a reviewer: invisible characters, comments, homoglyphs, encoded.
    Hidden,
    /// Telling the agent to call a tool or run a command.
    Coercion,
    /// Luring the agent into sending data out (markdown images with data in the URL, ...).
    Exfiltration,
    /// Naming another server's tool (`server.tool`).
    CrossServer,
    /// Reaching for secrets (`~/.ssh/id_rsa`, `.env`, credentials).
    SecretAccess,
    /// Asking for secrecy ("do not tell the user").
    Concealment,
    /// A secret (key, token, password).
    Secret,
    /// Personal data (email, phone, card number).
    Pii,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 10] = [
        Family::Override,
        Family::Role,
        Family::Hidden,
        Family::Coercion,
        Family::Exfiltration,
        Family::CrossServer,
        Family::SecretAccess,
        Family::Concealment,
        Family::Secret,
        Family::Pii,
    ];

    /// Its name (`override`, `cross-server`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Override => "override",
            Family::Role => "role",
            Family::Hidden => "hidden",
            Family::Coercion => "coercion",
            Family::Exfiltration => "exfiltration",
            Family::CrossServer => "cross-server",
            Family::SecretAccess => "secret-access",
            Family::Concealment => "concealment",
            Family::Secret => "secret",
            Family::Pii => "pii",
        }
    }

    /// Whether a hit of this family is prompt injection (what `strip` removes).
    pub fn is_injection(self) -> bool {
        !matches!(self, Family::Secret | Family::Pii)
    }
}

/// One finding: the rule, its family, and where (byte offsets in the text scanned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The rule's id.
    pub rule: &'static str,
    /// What it found.
    pub family: Family,
    /// Start (byte offset).
    pub start: usize,
    /// End (byte offset, exclusive).
    pub end: usize,
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prompt-injection families (all but secrets and PII).
    pub injection: bool,
    /// Secret and PII rules to run, by id (empty: none).
    pub secrets: BTreeSet<&'static str>,
}

impl Options {
    /// Injection only.
    pub fn injection() -> Options {
        Options { injection: true, secrets: BTreeSet::new() }
    }

    /// Everything.
    pub fn all() -> Options {
        Options { injection: true, secrets: secret_rules().collect() }
    }
}

/// The ids of every secret and PII rule.
pub fn secret_rules() -> impl Iterator<Item = &'static str> {
    rules::RULES.iter().filter(|r| !r.family.is_injection()).map(|r| r.id)
}

/// The rules a redaction class (`scanning.redactFieldsInResults`) names, or `None` for a class
/// that does not exist.
pub fn class_rules(class: &str) -> Option<&'static [&'static str]> {
    Some(match class {
        "sshKeys" | "privateKeys" => &["secret.private-key"],
        "cloudKeys" => &["secret.aws-access-key", "secret.aws-secret-key", "secret.gcp-api-key", "secret.azure-key"],
        "githubTokens" => &["secret.github-token"],
        "slackTokens" => &["secret.slack-token"],
        "jwts" => &["secret.jwt"],
        "apiTokens" => &[
            "secret.github-token",
            "secret.slack-token",
            "secret.api-key",
            "secret.jwt",
            "secret.gcp-api-key",
            "secret.aws-access-key",
            "secret.aws-secret-key",
            "secret.azure-key",
        ],
        "passwordsInUrls" => &["secret.url-password"],
        "emails" => &["pii.email"],
        "phoneNumbers" => &["pii.phone"],
        "cardNumbers" => &["pii.card"],
        "secrets" => &[
            "secret.private-key",
            "secret.aws-access-key",
            "secret.aws-secret-key",
            "secret.gcp-api-key",
            "secret.azure-key",
            "secret.github-token",
            "secret.slack-token",
            "secret.api-key",
            "secret.jwt",
            "secret.url-password",
        ],
        "pii" => &["pii.email", "pii.phone", "pii.card"],
        _ => return None,
    })
}

/// The redaction classes, for error messages.
pub const CLASSES: &[&str] = &[
    "sshKeys",
    "privateKeys",
    "cloudKeys",
    "githubTokens",
    "slackTokens",
    "jwts",
    "apiTokens",
    "passwordsInUrls",
    "emails",
    "phoneNumbers",
    "cardNumbers",
    "secrets",
    "pii",
];

struct Compiled {
    id: &'static str,
    family: Family,
    regex: Matcher,
    reach: (usize, usize),
    /// Its `near` words (one must occur within reach of an anchor), if it has any.
    near: Option<AhoCorasick>,
}

/// How a rule's pattern is run.
enum Matcher {
    /// Over the window around an anchor (or a run of digits).
    Window(Regex),
    /// Once at each anchor, anchored there (`RuleDef::at_anchor`).
    AtAnchor(regex_automata::meta::Regex),
}

/// The compiled rule set (build once, share: scanning takes `&self`).
pub struct Scanner {
    rules: Vec<Compiled>,
    /// Where the anchors are.
    anchors: anchors::Anchors,
    /// Anchor -> the rules it wakes.
    woken: Vec<Vec<usize>>,
    /// Rules without anchors (runs of digits: phone and card numbers), by index.
    digit_rules: Vec<usize>,
    /// Which rules are secrets or PII.
    secret: Vec<bool>,
}

/// Longest span a stripped injection is extended to (to the end of its sentence or line).
const SENTENCE: usize = 240;
/// Most base64 runs decoded per scan.
const MAX_DECODED: usize = 32;
/// Shortest base64 run worth decoding.
const MIN_ENCODED: usize = 28;

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    /// The built-in rule set, compiled.
    pub fn new() -> Scanner {
        let mut rules = Vec::new();
        let mut words: Vec<&'static str> = Vec::new();
        let mut digit_rules = Vec::new();
        for (i, r) in rules::RULES.iter().enumerate() {
            let pattern =
                if r.pattern.starts_with("(?-i)") { r.pattern.to_string() } else { format!("(?i){}", r.pattern) };
            let broken = |e: &dyn std::fmt::Display| -> ! { panic!("built-in rule {} does not compile: {e}", r.id) };
            let regex = if r.at_anchor {
                Matcher::AtAnchor(regex_automata::meta::Regex::new(&pattern).unwrap_or_else(|e| broken(&e)))
            } else {
                Matcher::Window(Regex::new(&pattern).unwrap_or_else(|e| broken(&e)))
            };
            let near = (!r.near.is_empty()).then(|| {
                AhoCorasickBuilder::new().ascii_case_insensitive(true).build(r.near).expect("near words build")
            });
            rules.push(Compiled { id: r.id, family: r.family, regex, reach: r.reach, near });
            if r.anchors.is_empty() {
                digit_rules.push(i);
            }
            for a in r.anchors {
                if !words.contains(a) {
                    words.push(a);
                }
            }
        }
        let woken = words
            .iter()
            .map(|w| rules::RULES.iter().enumerate().filter(|(_, r)| r.anchors.contains(w)).map(|(i, _)| i).collect())
            .collect();
        let anchors = anchors::Anchors::new(&words);
        let secret = rules.iter().map(|r| !r.family.is_injection()).collect();
        Scanner { rules, anchors, woken, digit_rules, secret }
    }

    /// Every hit in `text`, ordered by start.
    pub fn scan(&self, text: &str, opts: &Options) -> Vec<Hit> {
        let mut hits = Vec::new();
        self.scan_into(text, opts, &mut hits, true);
        hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        hits.dedup_by(|a, b| a.rule == b.rule && a.start == b.start);
        // A secret inside another (the user of a URL's password looks like an email): the
        // outer one stands.
        let mut outer_end = 0;
        hits.retain(|h| {
            if h.family.is_injection() {
                return true;
            }
            let inside = h.end <= outer_end;
            outer_end = outer_end.max(h.end);
            !inside
        });
        hits
    }

    /// Like [`Scanner::scan`], and hits of other servers' tools too: `others` finds `server.tool`
    /// names (built by [`cross_server`]).
    pub fn scan_with(&self, text: &str, opts: &Options, others: Option<&AhoCorasick>) -> Vec<Hit> {
        let mut hits = self.scan(text, opts);
        if let (true, Some(o)) = (opts.injection, others) {
            for m in o.find_iter(text) {
                hits.push(Hit {
                    rule: "injection.cross-server",
                    family: Family::CrossServer,
                    start: m.start(),
                    end: m.end(),
                });
            }
            hits.sort_by_key(|h| (h.start, h.end));
        }
        hits
    }

    fn enabled(&self, i: usize, opts: &Options) -> bool {
        if self.secret[i] {
            opts.secrets.contains(self.rules[i].id)
        } else {
            opts.injection
        }
    }

    fn scan_into(&self, text: &str, opts: &Options, hits: &mut Vec<Hit>, deep: bool) {
        // One pass: where each rule's anchors are.
        let mut anchored: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.rules.len()];
        self.anchors.each(text, |s, e, id| {
            for &ri in &self.woken[id] {
                if self.enabled(ri, opts) {
                    anchored[ri].push((s, e));
                }
            }
        });
        for (ri, spots) in anchored.iter_mut().enumerate() {
            if spots.is_empty() {
                continue;
            }
            spots.sort_unstable();
            let r = &self.rules[ri];
            let regex = match &r.regex {
                Matcher::AtAnchor(re) => {
                    for &(s, e) in spots.iter() {
                        let to = ceil(text, (e + r.reach.1).min(text.len()));
                        let input =
                            regex_automata::Input::new(text).range(s..to).anchored(regex_automata::Anchored::Yes);
                        if let Some(x) = re.search(&input) {
                            if !(r.family.is_injection() && quoted(text, x.start(), x.end())) {
                                hits.push(Hit { rule: r.id, family: r.family, start: x.start(), end: x.end() });
                            }
                        }
                    }
                    continue;
                }
                Matcher::Window(re) => re,
            };
            let mut done = 0usize;
            for &(s, e) in spots.iter() {
                let (lo, hi) = (s.saturating_sub(r.reach.0), e + r.reach.1);
                let from = floor(text, lo.max(done.saturating_sub(r.reach.0)));
                let to = ceil(text, hi.min(text.len()));
                if to <= done {
                    continue;
                }
                if r.near.as_ref().is_some_and(|n| !n.is_match(&text[from..to])) {
                    continue;
                }
                for x in regex.find_iter(&text[from..to]) {
                    let (start, end) = (from + x.start(), from + x.end());
                    if r.family.is_injection() && quoted(text, start, end) {
                        continue;
                    }
                    hits.push(Hit { rule: r.id, family: r.family, start, end });
                }
                done = to;
            }
        }
        if opts.injection {
            invisible_runs(text, hits);
        }
        // Runs of digits (phone and card numbers) and of base64: one byte loop finds them.
        let digits = self.digit_rules.iter().any(|&ri| self.enabled(ri, opts));
        let encoded = deep && opts.injection;
        if !digits && !encoded {
            return;
        }
        let mut decoded = 0;
        for run in runs(text.as_bytes(), digits, encoded) {
            match run {
                Run::Digits(s, e) => {
                    let (from, to) = (floor(text, s.saturating_sub(8)), ceil(text, (e + 8).min(text.len())));
                    for &ri in self.digit_rules.iter().filter(|&&ri| self.enabled(ri, opts)) {
                        let r = &self.rules[ri];
                        let Matcher::Window(regex) = &r.regex else { continue };
                        for x in regex.find_iter(&text[from..to]) {
                            if r.id == "pii.card" && !luhn(x.as_str()) {
                                continue;
                            }
                            hits.push(Hit {
                                rule: r.id,
                                family: r.family,
                                start: from + x.start(),
                                end: from + x.end(),
                            });
                        }
                    }
                }
                Run::Base64(s, e) if decoded < MAX_DECODED => {
                    decoded += 1;
                    let Some(plain) = decode_text(&text[s..e]) else { continue };
                    let mut inner = Vec::new();
                    self.scan_into(&plain, &Options::injection(), &mut inner, false);
                    if inner.iter().any(|h| h.family.is_injection()) {
                        hits.push(Hit { rule: "injection.hidden.encoded", family: Family::Hidden, start: s, end: e });
                    }
                }
                Run::Base64(..) => {}
            }
        }
        if !deep || !opts.injection || text.is_ascii() {
            return;
        }
        // Homoglyphs: look-alike letters of other scripts folded to Latin, scanned again.
        if let Some((folded, back)) = fold_confusables(text) {
            let mut inner = Vec::new();
            self.scan_into(&folded, &Options::injection(), &mut inner, false);
            for h in inner.into_iter().filter(|h| h.family.is_injection()) {
                let (s, e) = (back[h.start], back[h.end.min(back.len() - 1)]);
                if !text[s..e].is_ascii() && !hits.iter().any(|x| x.start <= s && x.end >= e) {
                    hits.push(Hit { rule: "injection.hidden.homoglyph", family: Family::Hidden, start: s, end: e });
                }
            }
        }
    }
}

/// Runs of invisible characters (one hit per run); only text with the lead bytes of their
/// UTF-8 forms (E2 for U+2000-U+2FFF, F3 for the tag characters) is looked at.
fn invisible_runs(text: &str, hits: &mut Vec<Hit>) {
    let mut run: Option<(usize, usize)> = None;
    for i in memchr::memchr2_iter(0xE2, 0xF3, text.as_bytes()) {
        let Some(c) = text[i..].chars().next() else { continue };
        if !invisible(c) {
            continue;
        }
        let end = i + c.len_utf8();
        run = match run {
            Some((s, e)) if i <= e + 4 => Some((s, end)),
            Some((s, e)) => {
                hits.push(Hit { rule: "injection.hidden.invisible", family: Family::Hidden, start: s, end: e });
                Some((i, end))
            }
            None => Some((i, end)),
        };
    }
    if let Some((s, e)) = run {
        hits.push(Hit { rule: "injection.hidden.invisible", family: Family::Hidden, start: s, end: e });
    }
}

/// One pattern of an operator-loaded feed (`joch guard feed apply -f`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedPattern {
    /// Its rule id (`feed.NAME.ID` in hits).
    pub id: String,
    /// What it finds.
    pub family: Family,
    /// The regex (the `regex` crate's syntax: linear time; `(?i)` for case-insensitive).
    pub regex: String,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// Feed patterns, compiled: one regex set says which patterns match at all, then only those
/// are searched for their spans.
pub struct Extra {
    rules: Vec<(&'static str, Family, Regex)>,
    set: regex::RegexSet,
}

/// Longest feed regex, compiled (bytes of the automaton).
const FEED_SIZE_LIMIT: usize = 1 << 20;

impl Extra {
    /// Compiles groups of patterns (`prefix` starts each rule id: `feed.NAME`, `policy.NAME`);
    /// every pattern that does not compile is reported (its index and why).
    pub fn compile<'a>(groups: impl IntoIterator<Item = (String, &'a [FeedPattern])>) -> Result<Extra, Vec<String>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        for (prefix, patterns) in groups {
            for (i, p) in patterns.iter().enumerate() {
                match regex::RegexBuilder::new(&p.regex).size_limit(FEED_SIZE_LIMIT).build() {
                    Ok(r) => {
                        rules.push((intern(&format!("{prefix}.{}", p.id)), p.family, r));
                        sources.push(p.regex.clone());
                    }
                    Err(e) => errors.push(format!("patterns[{i}].regex ({}): {e}", p.id)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let set = regex::RegexSetBuilder::new(&sources)
            .size_limit(FEED_SIZE_LIMIT * 8)
            .build()
            .map_err(|e| vec![format!("the patterns together: {e}")])?;
        Ok(Extra { rules, set })
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The hits of the patterns enabled by `opts` (injection families with `opts.injection`,
    /// secrets and PII when any secret rule is asked for).
    pub fn scan(&self, text: &str, opts: &Options) -> Vec<Hit> {
        let mut hits = Vec::new();
        if self.rules.is_empty() {
            return hits;
        }
        for i in self.set.matches(text).iter() {
            let (rule, family, r) = &self.rules[i];
            let on = if family.is_injection() { opts.injection } else { !opts.secrets.is_empty() };
            if !on {
                continue;
            }
            for x in r.find_iter(text) {
                hits.push(Hit { rule, family: *family, start: x.start(), end: x.end() });
            }
        }
        hits
    }
}

/// A feed rule's id as a `&'static str` (each distinct id is kept once for the process's life:
/// bounded by the ids ever loaded).
fn intern(s: &str) -> &'static str {
    static IDS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(Default::default);
    let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(id) = ids.get(s) {
        return id;
    }
    let id: &'static str = Box::leak(s.to_string().into_boxed_str());
    ids.insert(id);
    id
}

/// An automaton finding other servers' tools as agents see them (`server.tool`), for
/// [`Scanner::scan_with`]; `None` when there are none.
pub fn cross_server(names: &[String]) -> Option<AhoCorasick> {
    let names: Vec<&String> = names.iter().filter(|n| n.len() >= 3 && n.contains('.')).collect();
    if names.is_empty() {
        return None;
    }
    AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(names).ok()
}

/// Whether a match is quoted (`"ignore previous instructions"` in a text about prompt
/// injection mentions the phrase; it does not use it).
fn quoted(text: &str, start: usize, end: usize) -> bool {
    const QUOTES: [char; 6] = ['"', '\'', '“', '”', '«', '»'];
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    matches!((before, after), (Some(b), Some(a)) if QUOTES.contains(&b) && QUOTES.contains(&a))
}

fn floor(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The Luhn check of the digits in `s` (13 to 19 of them, not all the same).
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Base64 (standard or URL-safe, padded or not) that decodes to mostly printable text.
fn decode_text(s: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok())?;
    let text = String::from_utf8(bytes).ok()?;
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    (printable * 10 >= text.chars().count() * 9 && text.contains(' ')).then_some(text)
}

/// `text` with every injection hit removed: from its start to the end of its sentence or line
/// (at most [`SENTENCE`] bytes further), replaced by `[removed by joch: RULE]`. Secrets and PII
/// are left to [`redact`].
pub fn strip(text: &str, hits: &[Hit]) -> String {
    rewrite(text, hits, true, false)
}

/// `text` with every secret and PII hit replaced by `[REDACTED:RULE]`.
pub fn redact(text: &str, hits: &[Hit]) -> String {
    rewrite(text, hits, false, true)
}

/// `text` with injection hits stripped (`strip`, as [`strip`] does) and secret and PII hits
/// redacted (`redact`, as [`redact`] does), in one pass over the original's spans.
pub fn rewrite(text: &str, hits: &[Hit], strip: bool, redact: bool) -> String {
    let spans: Vec<(usize, usize, String)> = hits
        .iter()
        .filter_map(|h| match h.family.is_injection() {
            true if strip => {
                let end = if h.rule == "injection.hidden.invisible" { h.end } else { sentence_end(text, h.end) };
                Some((h.start, end, format!("[removed by joch: {}]", h.rule)))
            }
            false if redact => Some((h.start, h.end, format!("[REDACTED:{}]", h.rule))),
            _ => None,
        })
        .collect();
    replace(text, spans)
}

/// The end of the sentence (or line) `from` is in: after a `.`, `!` or `?` followed by white
/// space or the end, or a newline; at most [`SENTENCE`] bytes on.
fn sentence_end(text: &str, from: usize) -> usize {
    let limit = ceil(text, (from + SENTENCE).min(text.len()));
    let bytes = text.as_bytes();
    for i in from..limit {
        match bytes[i] {
            b'\n' => return i + 1,
            b'.' | b'!' | b'?' if bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()) => return i + 1,
            _ => {}
        }
    }
    limit
}

/// Replaces spans (merged where they overlap) by the replacement of the first of each.
fn replace(text: &str, mut spans: Vec<(usize, usize, String)>) -> String {
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_by_key(|s| (s.0, s.1));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut i = 0;
    while i < spans.len() {
        let (start, mut end) = (spans[i].0, spans[i].1);
        let first = i;
        while i + 1 < spans.len() && spans[i + 1].0 <= end {
            end = end.max(spans[i + 1].1);
            i += 1;
        }
        let (start, end) = (floor(text, start.max(at)), ceil(text, end));
        out.push_str(&text[at..start]);
        out.push_str(&spans[first].2);
        at = end;
        i += 1;
    }
    out.push_str(&text[at..]);
    out
}

/// How many bytes of the text before a chunk are kept to find patterns that straddle chunks.
pub const CARRY: usize = 512;

/// A stream scanned chunk by chunk (the text of successive SSE events): each chunk is scanned
/// with the end of the text before it, so a pattern split across two chunks is found when its
/// second part arrives. The carry is bounded ([`CARRY`] bytes): the stream is never held whole.
#[derive(Default, Debug, Clone)]
pub struct Carry {
    tail: String,
}

impl Carry {
    /// The hits in `chunk` (offsets in `chunk`; a hit that began in an earlier chunk starts at 0)
    /// that were not reported before.
    pub fn feed(&mut self, scanner: &Scanner, chunk: &str, opts: &Options) -> Vec<Hit> {
        let joined = format!("{}{chunk}", self.tail);
        let offset = self.tail.len();
        let hits = scanner.scan(&joined, opts);
        let keep = floor(&joined, joined.len().saturating_sub(CARRY));
        self.tail = joined[keep..].to_string();
        hits.into_iter()
            .filter(|h| h.end > offset)
            .map(|h| Hit { start: h.start.saturating_sub(offset), end: h.end - offset, ..h })
            .collect()
    }
}

#[cfg(test)]
mod tests;
