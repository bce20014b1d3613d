//! Homoglyphs: letters of other scripts (Cyrillic, Greek, Armenian, Roman numerals, fullwidth)
//! that look like Latin ones. A word that mixes Latin letters with them is folded to Latin and
//! scanned again (`Scanner::scan_into`).

/// Cyrillic and Greek letters that look like Latin ones, Roman numerals, and fullwidth Latin.
fn confusable(c: char) -> Option<char> {
    Some(match c {
        'Ⅰ' | 'Ⅼ' | 'ⅰ' | 'ⅼ' | 'Ⅴ' | 'ⅴ' | 'Ⅹ' | 'ⅹ' | 'Ⅽ' | 'ⅽ' | 'Ⅾ' | 'ⅾ' | 'Ⅿ' | 'ⅿ' => {
            match c {
                'Ⅰ' => 'I',
                'ⅰ' => 'i',
                'Ⅼ' => 'L',
                'ⅼ' => 'l',
                'Ⅴ' => 'V',
                'ⅴ' => 'v',
                'Ⅹ' => 'X',
                'ⅹ' => 'x',
                'Ⅽ' => 'C',
                'ⅽ' => 'c',
                'Ⅾ' => 'D',
                'ⅾ' => 'd',
                'Ⅿ' => 'M',
                _ => 'm',
            }
        }
        'а' => 'a',
        'в' => 'b',
        'е' => 'e',
        'ё' => 'e',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'х' => 'x',
        'і' => 'i',
        'ї' => 'i',
        'ј' => 'j',
        'ѕ' => 's',
        'ԁ' => 'd',
        'ɡ' => 'g',
        'һ' => 'h',
        'ո' => 'n',
        'ս' => 'u',
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'І' => 'I',
        'Ј' => 'J',
        'Ѕ' => 'S',
        'α' => 'a',
        'ε' => 'e',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Χ' => 'X',
        'Υ' => 'Y',
        'Ζ' => 'Z',
        c @ '\u{FF21}'..='\u{FF3A}' => char::from_u32(c as u32 - 0xFF21 + 'A' as u32)?,
        c @ '\u{FF41}'..='\u{FF5A}' => char::from_u32(c as u32 - 0xFF41 + 'a' as u32)?,
        _ => return None,
    })
}

/// The text with look-alike letters folded to Latin, and for every byte of it the byte of the
/// original it came from (one more entry for the end); `None` when a word mixes no scripts (a
/// Russian or Greek text is not folded: only words that mix Latin with look-alikes are).
pub(crate) fn fold_confusables(text: &str) -> Option<(String, Vec<usize>)> {
    if !mixes_scripts(text) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut back = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        let f = confusable(c).unwrap_or(c);
        for _ in 0..f.len_utf8() {
            back.push(i);
        }
        out.push(f);
    }
    back.push(text.len());
    Some((out, back))
}

/// Whether a word of `text` mixes Latin letters with look-alikes. Only the look-alikes are
/// visited (`memchr` for the lead bytes of their UTF-8 forms: Latin extensions, Greek,
/// Cyrillic, Armenian, Roman numerals, fullwidth), and each word once: most non-English text has none of them,
/// or no Latin letters in the words that have them.
fn mixes_scripts(text: &str) -> bool {
    let b = text.as_bytes();
    let word = |c: char| c.is_alphanumeric();
    let mixed = |checked: &mut usize, i: usize| {
        if i < *checked {
            return false;
        }
        let Some(c) = text[i..].chars().next() else { return false };
        if confusable(c).is_none() {
            return false;
        }
        let start = text[..i].char_indices().rev().take_while(|(_, c)| word(*c)).last().map_or(i, |(j, _)| j);
        let end = text[i..].char_indices().find(|(_, c)| !word(*c)).map_or(text.len(), |(j, _)| i + j);
        *checked = end;
        text[start..end].bytes().any(|c| c.is_ascii_alphabetic())
    };
    // Each lead byte's positions in order (a word is skipped once looked at).
    // (E2: Roman numerals, U+2160..; also the lead byte of common punctuation, each decoded.)
    [[0xD0, 0xD1, 0xEF], [0xCE, 0xCF, 0xC9], [0xD4, 0xD5, 0xE2]].iter().any(|&[x, y, z]| {
        let mut checked = 0;
        memchr::memchr3_iter(x, y, z, b).any(|i| mixed(&mut checked, i))
    })
}
