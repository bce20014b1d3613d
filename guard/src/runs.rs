//! Runs of digits (phone and card numbers) and of base64 characters (encoded payloads). With
//! AVX2, 64 bytes at a time: the bytes' classes as bit masks, runs long enough found with a few
//! shifts and ands, and only then followed out byte by byte. Without it, by probing every 9th or
//! [`MIN_ENCODED`]th byte and following a run out from a probe that lands in one. Both give what
//! one loop over every byte would (a test checks them against it).

use crate::MIN_ENCODED;

pub(crate) enum Run {
    /// Ten or more digits with at most single separators between them.
    Digits(usize, usize),
    /// [`MIN_ENCODED`] or more base64 characters.
    Base64(usize, usize),
}

/// A byte's classes, for the run probes: [`B64`], [`SEP`].
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-' | b'=') {
            t[c] |= B64;
        }
        if matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+') {
            t[c] |= SEP;
        }
        c += 1;
    }
    t
};
/// A base64 character (standard or URL-safe, or padding).
const B64: u8 = 1;
/// A separator allowed between the digits of a phone or card number.
const SEP: u8 = 2;

/// The runs of digits and the runs of base64 characters (each kind in order).
pub(crate) fn runs(b: &[u8], digits: bool, encoded: bool) -> Vec<Run> {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        return simd::runs(b, digits, encoded);
    }
    probed(b, digits, encoded)
}

/// Where the run of digits through `q` (a digit, or a separator after one) begins and ends
/// (inclusive): digits with at most single separators between them.
fn digit_run(b: &[u8], q: usize) -> (usize, usize) {
    let d = |c: u8| c.wrapping_sub(b'0') < 10;
    let sep = |c: u8| CLASS[c as usize] & SEP != 0;
    let q = if d(b[q]) || q == 0 { q } else { q - 1 };
    let mut start = q;
    loop {
        if start >= 1 && d(b[start - 1]) {
            start -= 1;
        } else if start >= 2 && sep(b[start - 1]) && d(b[start - 2]) {
            start -= 2;
        } else {
            break;
        }
    }
    let mut last = q;
    loop {
        if last + 1 < b.len() && d(b[last + 1]) {
            last += 1;
        } else if last + 2 < b.len() && sep(b[last + 1]) && d(b[last + 2]) {
            last += 2;
        } else {
            break;
        }
    }
    (start, last)
}

/// The runs of digits, then the runs of base64 characters. Neither reads every byte: a run of
/// ten digits (single separators between them allowed) spans ten bytes or more, so it covers one
/// of every 9th byte; a run of [`MIN_ENCODED`] base64 characters covers one of every
/// [`MIN_ENCODED`]th. Only those bytes are probed, and a run is followed out from a probe that
/// lands in one (each byte is read at most about twice).
pub(crate) fn probed(b: &[u8], digits: bool, encoded: bool) -> Vec<Run> {
    let mut out = Vec::new();
    if digits {
        let d = |c: u8| c.wrapping_sub(b'0') < 10;
        let sep = |c: u8| CLASS[c as usize] & SEP != 0;
        let mut p = 0;
        while p < b.len() {
            // A separator inside a run follows a digit.
            let q = if d(b[p]) {
                p
            } else if sep(b[p]) && p > 0 && d(b[p - 1]) {
                p - 1
            } else {
                p += 9;
                continue;
            };
            let (start, last) = digit_run(b, q);
            if b[start..=last].iter().filter(|c| c.is_ascii_digit()).count() >= 10 {
                out.push(Run::Digits(start, last + 1));
            }
            // The next run begins two bytes on at the earliest (the byte after a run is not a
            // digit, and a separator there is followed by none).
            p = (last + 2).next_multiple_of(9).max(p + 9);
        }
    }
    if encoded {
        let b64 = |c: u8| CLASS[c as usize] & B64 != 0;
        let mut p = MIN_ENCODED - 1;
        while p < b.len() {
            if !b64(b[p]) {
                p += MIN_ENCODED;
                continue;
            }
            let mut end = p + 1;
            while end < b.len() && b64(b[end]) {
                end += 1;
            }
            // A run long enough covers the byte MIN_ENCODED before its end: most words stop here.
            if end < MIN_ENCODED || !b64(b[end - MIN_ENCODED]) {
                p = end + MIN_ENCODED;
                continue;
            }
            let mut start = p;
            while start > 0 && b64(b[start - 1]) {
                start -= 1;
            }
            if end - start >= MIN_ENCODED {
                out.push(Run::Base64(start, end));
            }
            p = end + MIN_ENCODED;
        }
    }
    out
}

/// The masked search, with AVX2 (the only `unsafe` in joch: two unaligned loads of 32 bytes from
/// an array of 64, and calling the function compiled for AVX2 once the CPU says it has it).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod simd {
    use super::{digit_run, Run};
    use crate::MIN_ENCODED;
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX2 (and the bit instructions that come with it; cached by the
    /// standard library).
    pub(crate) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("bmi1")
    }

    /// Bit `j` is set where the byte `j` of `chunk` is a digit, a separator, a base64 character.
    /// (Not inlined: inlined, the compiler takes the masks apart byte by byte again.)
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    fn classes(chunk: &[u8; 64]) -> (u64, u64, u64) {
        let half = |v: __m256i| {
            let set = |c: u8| _mm256_set1_epi8(c as i8);
            let below = |x: __m256i, n: u8| _mm256_cmpeq_epi8(_mm256_min_epu8(x, set(n)), x);
            let digit = below(_mm256_sub_epi8(v, set(b'0')), 9);
            let letter = below(_mm256_sub_epi8(_mm256_or_si256(v, set(0x20)), set(b'a')), 25);
            let eq = |c: u8| _mm256_cmpeq_epi8(v, set(c));
            let (plus, minus) = (eq(b'+'), eq(b'-'));
            let b64 = _mm256_or_si256(
                _mm256_or_si256(_mm256_or_si256(digit, letter), _mm256_or_si256(plus, minus)),
                _mm256_or_si256(_mm256_or_si256(eq(b'/'), eq(b'_')), eq(b'=')),
            );
            let sep = _mm256_or_si256(
                _mm256_or_si256(_mm256_or_si256(eq(b' '), eq(b'.')), _mm256_or_si256(eq(b'('), eq(b')'))),
                _mm256_or_si256(plus, minus),
            );
            let mask = |x: __m256i| _mm256_movemask_epi8(x) as u32 as u64;
            (mask(digit), mask(sep), mask(b64))
        };
        // SAFETY: each load reads 32 bytes at offset 0 and 32 of a 64-byte array (unaligned
        // loads are allowed).
        let (lo, hi) = unsafe {
            (
                _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>()),
                _mm256_loadu_si256(chunk.as_ptr().add(32).cast::<__m256i>()),
            )
        };
        let ((d0, s0, e0), (d1, s1, e1)) = (half(lo), half(hi));
        (d0 | d1 << 32, s0 | s1 << 32, e0 | e1 << 32)
    }

    /// Bit `j` set where `m` has `n` ones from bit `j` on (`n` <= 32): ones doubled by shifts,
    /// then the last stretch (shorter than what is already there) added.
    fn ones_from(m: u128, n: u32) -> u128 {
        let (mut r, mut have) = (m, 1);
        while have * 2 <= n {
            r &= r >> have;
            have *= 2;
        }
        if have < n {
            r &= r >> (n - have);
        }
        r
    }

    /// The classes of the 64 bytes at `at` (past the end: none).
    #[target_feature(enable = "avx2")]
    fn class(b: &[u8], at: usize) -> (u64, u64, u64) {
        match b.get(at..at + 64) {
            Some(full) => classes(full.try_into().expect("64 bytes")),
            None => {
                let mut c = [0u8; 64];
                let rest = b.get(at..).unwrap_or_default();
                c[..rest.len()].copy_from_slice(rest);
                classes(&c)
            }
        }
    }

    /// The runs, found with the masks.
    pub(crate) fn runs(b: &[u8], digits: bool, encoded: bool) -> Vec<Run> {
        assert!(available(), "AVX2 is there");
        // SAFETY: this CPU has the features the function is compiled for (checked above).
        unsafe { masked(b, digits, encoded) }
    }

    #[target_feature(enable = "avx2,popcnt,bmi1")]
    fn masked(b: &[u8], digits: bool, encoded: bool) -> Vec<Run> {
        let mut out = Vec::new();
        let class = |at: usize| class(b, at);
        // Runs that begin in the chunk at `at` are found with the masks of that chunk and the
        // next (a run long enough to matter is found by its first 10 or MIN_ENCODED bytes).
        let mut cur = class(0);
        // Where a new run may begin (past the last one found).
        let (mut next_digit, mut next_b64) = (0, 0);
        let mut at = 0;
        while at < b.len() {
            let nxt = class(at + 64);
            let join = |a: u64, b: u64| a as u128 | (b as u128) << 64;
            let past = |next: usize| {
                if next <= at {
                    !0u64
                } else if next - at >= 64 {
                    0
                } else {
                    !0u64 << (next - at)
                }
            };
            // Ten digits need ten bits among the two chunks' digits.
            if digits && (cur.0.count_ones() + nxt.0.count_ones() >= 10) {
                let d = join(cur.0, nxt.0);
                // A separator joins a run only between two digits.
                let c = d | (join(cur.1, nxt.1) & (d << 1) & (d >> 1));
                let mut found = ones_from(c, 10) as u64 & past(next_digit);
                while found != 0 {
                    let q = at + found.trailing_zeros() as usize;
                    let (start, last) = digit_run(b, q);
                    if b[start..=last].iter().filter(|c| c.is_ascii_digit()).count() >= 10 {
                        out.push(Run::Digits(start, last + 1));
                    }
                    next_digit = last + 2;
                    found &= past(next_digit);
                }
            }
            if encoded {
                let e = join(cur.2, nxt.2);
                let mut found = ones_from(e, MIN_ENCODED as u32) as u64 & past(next_b64);
                while found != 0 {
                    let q = at + found.trailing_zeros() as usize;
                    let mut start = q;
                    while start > 0 && super::CLASS[b[start - 1] as usize] & super::B64 != 0 {
                        start -= 1;
                    }
                    let mut end = q;
                    while end < b.len() && super::CLASS[b[end] as usize] & super::B64 != 0 {
                        end += 1;
                    }
                    out.push(Run::Base64(start, end));
                    next_b64 = end + 1;
                    found &= past(next_b64);
                }
            }
            cur = nxt;
            at += 64;
        }
        out
    }
}
