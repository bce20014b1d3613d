//! Finding the rules' anchors: every occurrence of every anchor (ASCII case-insensitive,
//! overlapping ones too), in one pass that reads few bytes twice.
//!
//! Teddy (the SIMD multi-literal search of the `aho-corasick` crate) compares the first bytes
//! of its literals against the text, a handful of literals per bucket, and checks every
//! candidate it cannot rule out. Anchors such as "the user must not" or "this command" begin
//! with bytes that ordinary text is full of, so each anchor is searched by a *key* instead: a
//! piece of it, three or four bytes, and the whole anchor is checked where a key is found. One
//! searcher holds sixteen keys, and each searcher is a pass over the text, so keys are chosen
//! to stand for as many anchors as they can ([`keys`]: `inst` for the nine "instruction"
//! anchors, `xox` for the six Slack token prefixes) and otherwise to be rare in text
//! (punctuation and rare letters before `e`, `t`, space). Keys are searched in text lower-cased
//! a block at a time, and found overlapping (each search restarts one byte after a key), so no
//! anchor can hide another. Anchors shorter than three bytes (`@`, `](`) are found with
//! `memchr`. Without SIMD, one Aho-Corasick automaton finds the anchors themselves.

use aho_corasick::packed::{Config, MatchKind, Searcher};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder};

/// Text is lower-cased in blocks of this many bytes (a buffer per thread).
const BLOCK: usize = 32 << 10;
/// Keys per Teddy searcher (few per bucket keeps the candidates it must check rare).
const GROUP: usize = 16;
/// A key's length (an anchor shorter than this is its own key).
const KEY: usize = 4;

/// What a key stands for: (anchor, where the key begins in it).
type Of = Vec<(usize, usize)>;

/// Every anchor, found.
pub(crate) struct Anchors {
    /// The anchors, lower-case (their index is their id).
    words: Vec<Vec<u8>>,
    /// How the anchors of three bytes or more are found.
    finder: Finder,
    /// Anchors shorter than three bytes (found with `memchr`), by id.
    short: Vec<usize>,
    /// Their first bytes (what `memchr` looks for).
    short_first: Vec<u8>,
}

/// How the anchors of three bytes or more are found.
enum Finder {
    /// Teddy searchers over the keys, each with what its keys stand for: (anchor, where the key
    /// begins in it).
    Teddy(Vec<(Searcher, Vec<Of>)>),
    /// No SIMD here: one automaton over the anchors themselves, and the id of each of its
    /// patterns.
    Automaton(AhoCorasick, Vec<usize>),
}

/// How common a byte is in text (higher: more common): letters by their frequency in English,
/// digits, white space and the commonest punctuation; other bytes (punctuation, non-ASCII) rare.
fn common(b: u8) -> u32 {
    const ORDER: &[u8] = b" etaoinsrhldcumfpgwybvk,.\n0123456789_-=\"':/()xjqz";
    ORDER.iter().position(|&c| c == b).map_or(0, |i| (ORDER.len() - i) as u32)
}

/// The anchor's key: its `KEY` bytes least common in text (the whole anchor if shorter), and
/// where it begins.
fn key(word: &[u8]) -> (usize, &[u8]) {
    if word.len() <= KEY {
        return (0, word);
    }
    let best = (0..=word.len() - KEY).min_by_key(|&i| word[i..i + KEY].iter().map(|&b| common(b)).sum::<u32>());
    let i = best.unwrap_or(0);
    (i, &word[i..i + KEY])
}

/// How common a key's bytes are on average, at most, for it to stand for several anchors.
const SHARED_COMMONNESS: u32 = 45;

/// The keys of the anchors of three bytes or more, and what each stands for. Each key costs a
/// sixteenth of a Teddy pass over the text, so keys that stand for several anchors come first:
/// of the anchors' three- and four-byte pieces not too common on average, the one in the most
/// anchors not yet covered (the rarer on a tie), until none is in two; then every anchor left
/// gets its own rarest four bytes. Three-byte pieces are candidates only with punctuation, a
/// byte outside ASCII or one of `x j q z` in them (three letters of ordinary words would be
/// found everywhere).
fn keys(words: &[Vec<u8>]) -> Vec<(Vec<u8>, Of)> {
    let rare = |k: &[u8]| k.iter().any(|&b| !(b.is_ascii_alphanumeric() || b == b' ') || b"xjqz".contains(&b));
    let commonness = |k: &[u8]| k.iter().map(|&b| common(b)).sum::<u32>() / k.len() as u32;
    let mut left: Vec<usize> = (0..words.len()).filter(|&i| words[i].len() >= 3).collect();
    let mut pieces: Vec<&[u8]> = Vec::new();
    for &i in &left {
        let w = &words[i];
        pieces.extend(w.windows(KEY));
        pieces.extend(w.windows(3).filter(|p| w.len() == 3 || rare(p)));
    }
    pieces.sort_unstable();
    pieces.dedup();
    pieces.retain(|p| commonness(p) <= SHARED_COMMONNESS);
    let of = |k: &[u8], ids: &[usize]| -> Of {
        ids.iter().filter_map(|&i| Some((i, words[i].windows(k.len()).position(|x| x == k)?))).collect()
    };
    let mut keys: Vec<(Vec<u8>, Of)> = Vec::new();
    loop {
        let best = pieces
            .iter()
            .map(|p| (of(p, &left), p))
            .filter(|(covers, _)| covers.len() >= 2)
            .max_by_key(|(covers, p)| (covers.len(), std::cmp::Reverse(commonness(p)), std::cmp::Reverse(**p)));
        let Some((covers, p)) = best else { break };
        left.retain(|i| !covers.iter().any(|(c, _)| c == i));
        keys.push((p.to_vec(), covers));
    }
    for i in left {
        let (at, k) = key(&words[i]);
        keys.push((k.to_vec(), vec![(i, at)]));
    }
    keys
}

impl Anchors {
    /// The anchors' finder (each anchor once; their order gives their ids).
    pub(crate) fn new(words: &[&str]) -> Anchors {
        Anchors::build(words, true)
    }

    /// With Teddy if `simd` and the CPU has it, else with the automaton.
    fn build(words: &[&str], simd: bool) -> Anchors {
        let words: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_ascii_lowercase()).collect();
        let short: Vec<usize> = (0..words.len()).filter(|&i| words[i].len() < 3).collect();
        let short_first = short.iter().map(|&i| words[i][0]).collect();
        assert!(short.len() <= 3, "at most three anchors shorter than three bytes (they are found with memchr3)");
        let mut keys = keys(&words);
        keys.sort_by_key(|(k, _)| k.len());
        let mut teddy = simd.then(Vec::new);
        for len in [3, KEY] {
            let same: Vec<&(Vec<u8>, Of)> = keys.iter().filter(|(k, _)| k.len() == len).collect();
            for group in same.chunks(GROUP) {
                let searcher = Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .builder()
                    .extend(group.iter().map(|(k, _)| k))
                    .build();
                match (searcher, teddy.as_mut()) {
                    (Some(s), Some(t)) => t.push((s, group.iter().map(|(_, of)| of.clone()).collect())),
                    _ => teddy = None,
                }
            }
        }
        let finder = match teddy {
            Some(groups) => Finder::Teddy(groups),
            None => {
                let ids: Vec<usize> = (0..words.len()).filter(|&i| words[i].len() >= 3).collect();
                let automaton = AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                    .build(ids.iter().map(|&i| &words[i]))
                    .expect("the anchors build");
                Finder::Automaton(automaton, ids)
            }
        };
        Anchors { words, finder, short, short_first }
    }

    /// Calls `f(start, end, id)` for every occurrence of every anchor in `text` (not in order).
    pub(crate) fn each(&self, text: &str, mut f: impl FnMut(usize, usize, usize)) {
        let bytes = text.as_bytes();
        let is_at = |id: usize, start: usize| {
            let w = &self.words[id];
            bytes.get(start..start + w.len()).is_some_and(|t| t.eq_ignore_ascii_case(w))
        };
        match &self.finder {
            Finder::Teddy(groups) => {
                thread_local! {
                    static LOWER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                let mut pass = |buf: &mut Vec<u8>| {
                    let mut at = 0;
                    while at < bytes.len() {
                        let end = (at + BLOCK).min(bytes.len());
                        // Every key that starts in the block ends in what is lower-cased.
                        buf.clear();
                        buf.extend(bytes[at..(end + KEY - 1).min(bytes.len())].iter().map(u8::to_ascii_lowercase));
                        for (searcher, of) in groups {
                            let mut from = 0;
                            while let Some(m) = searcher.find_in(&buf[..], aho_corasick::Span::from(from..buf.len())) {
                                if at + m.start() >= end {
                                    break;
                                }
                                for &(id, off) in &of[m.pattern().as_usize()] {
                                    let start = (at + m.start()).wrapping_sub(off);
                                    if start <= at + m.start() && is_at(id, start) {
                                        f(start, start + self.words[id].len(), id);
                                    }
                                }
                                from = m.start() + 1;
                            }
                        }
                        at = end;
                    }
                };
                LOWER.with(|b| match b.try_borrow_mut() {
                    Ok(mut b) => pass(&mut b),
                    Err(_) => pass(&mut Vec::new()),
                });
            }
            Finder::Automaton(automaton, ids) => {
                for m in automaton.find_overlapping_iter(text) {
                    f(m.start(), m.end(), ids[m.pattern().as_usize()]);
                }
            }
        }
        let mut at = |i: usize| {
            for &id in &self.short {
                if is_at(id, i) {
                    f(i, i + self.words[id].len(), id);
                }
            }
        };
        match self.short_first.as_slice() {
            [] => {}
            [a] => memchr::memchr_iter(*a, bytes).for_each(&mut at),
            [a, b] => memchr::memchr2_iter(*a, *b, bytes).for_each(&mut at),
            [a, b, c] => memchr::memchr3_iter(*a, *b, *c, bytes).for_each(&mut at),
            _ => unreachable!("at most three short anchors: checked when built"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(a: &Anchors, text: &str) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        a.each(text, |s, e, id| v.push((s, e, id)));
        v.sort();
        v
    }

    #[test]
    fn every_occurrence_is_found_overlapping_case_insensitive_and_across_blocks() {
        let words = ["ignore", "the user must not", "://", "@", "](", "ignore previous", "gnore"];
        let a = Anchors::new(&words);
        let text = "x IGNORE previous; The User Must Not know. see https://a.b @ [x](y) ignoreignore";
        let got = found(&a, text);
        let names: Vec<&str> = got.iter().map(|(s, e, _)| &text[*s..*e]).collect();
        assert_eq!(
            names,
            [
                "IGNORE",
                "IGNORE previous",
                "GNORE",
                "The User Must Not",
                "://",
                "@",
                "](",
                "ignore",
                "gnore",
                "ignore",
                "gnore"
            ]
        );
        // The same anchors where blocks meet: every offset around a block boundary.
        for pad in BLOCK - 20..BLOCK + 4 {
            let text = format!("{}the user must not ignore", "a".repeat(pad));
            let got = found(&a, &text);
            assert_eq!(got.len(), 3, "pad {pad}: {got:?}");
        }
        // Without SIMD the automaton finds the same.
        let plain = Anchors::build(&words, false);
        assert_eq!(found(&plain, text), found(&a, text));
    }

    #[test]
    fn keys_stand_for_every_anchor_once_and_are_shared() {
        let words: Vec<Vec<u8>> = built_in().iter().map(|w| w.as_bytes().to_vec()).collect();
        let keys = keys(&words);
        let mut covered: Vec<usize> = keys.iter().flat_map(|(_, of)| of.iter().map(|(id, _)| *id)).collect();
        covered.sort_unstable();
        let long: Vec<usize> = (0..words.len()).filter(|&i| words[i].len() >= 3).collect();
        assert_eq!(covered, long, "each anchor of three bytes or more has one key");
        for (k, of) in &keys {
            for &(id, at) in of {
                assert_eq!(&words[id][at..at + k.len()], k.as_slice(), "the key is where it says");
            }
        }
        let slack = keys.iter().find(|(_, of)| of.iter().any(|&(id, _)| words[id] == b"xoxb-")).unwrap();
        assert_eq!(slack.1.len(), 6, "one key for the six Slack prefixes: {:?}", String::from_utf8_lossy(&slack.0));
        assert!(keys.len() < long.len() * 2 / 3, "{} keys for {} anchors", keys.len(), long.len());
    }

    /// The built-in rules' anchors, each once.
    fn built_in() -> Vec<&'static str> {
        let mut words: Vec<&str> = Vec::new();
        for r in crate::rules::RULES {
            for a in r.anchors {
                if !words.contains(a) {
                    words.push(a);
                }
            }
        }
        words
    }

    #[test]
    fn the_built_in_anchors_are_found_as_the_automaton_finds_them() {
        let words = built_in();
        let (teddy, plain) = (Anchors::new(&words), Anchors::build(&words, false));
        // Every anchor in capitals and as written, glued to text and to each other, among attacks.
        let mut text = crate::samples::hostile(8 << 10);
        for w in &words {
            text.push_str(&w.to_uppercase());
            text.push_str(w);
        }
        text.push_str(&crate::samples::benign(4 << 10));
        let got = found(&teddy, &text);
        assert!(got.len() > 2 * words.len(), "{} found", got.len());
        assert_eq!(got, found(&plain, &text));
    }

    #[test]
    fn keys_avoid_common_bytes() {
        assert_ne!(key(b"this command").1, b"this");
        assert_ne!(key(b"the user must not").1, b"the ");
        let (_, k) = key(b"hooks.slack.com/services/");
        assert!(k.contains(&b'.') || k.contains(&b'/') || k.contains(&b'k'), "{:?}", String::from_utf8_lossy(k));
        assert_eq!(key(b"<!--"), (0, b"<!--".as_slice()));
    }
}
