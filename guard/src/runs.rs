//! Runs of digits (phone and card numbers) and of base64 characters (encoded payloads), found
//! without reading every byte: only probes every 9th or [`MIN_ENCODED`]th byte, then a run is
//! followed out from a probe that lands in one.

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

/// The runs of digits, then the runs of base64 characters. Neither reads every byte: a run of
/// ten digits (single separators between them allowed) spans ten bytes or more, so it covers one
/// of every 9th byte; a run of [`MIN_ENCODED`] base64 characters covers one of every
/// [`MIN_ENCODED`]th. Only those bytes are probed, and a run is followed out from a probe that
/// lands in one (each byte is read at most about twice).
pub(crate) fn runs(b: &[u8], digits: bool, encoded: bool) -> Vec<Run> {
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
