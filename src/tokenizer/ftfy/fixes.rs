//! ftfy 6.3's individual fixes (`ftfy.fixes`), but for `unescape_html` (in `mod.rs`) and
//! the encoding repair (in `encoding.rs`).

use super::chars::{in_ranges, translate};
use super::codecs::charmap_decode_byte;
use super::tables::{
    A_GRAVE_NOT_BEFORE, ALTERED_UTF8, CHARMAPS, CONTROL_CHARS, DOUBLE_QUOTES, LIGATURES,
    LOSSY_UTF8, SINGLE_QUOTES, TERMINAL_ESCAPE, UTF8_CONTINUATION, UTF8_CONTINUATION_STRICT,
    UTF8_FIRST_OF_2, UTF8_FIRST_OF_3, UTF8_FIRST_OF_4, WIDTH_MAP,
};
use regex::Regex;
use regex::bytes::Regex as BytesRegex;
use std::sync::LazyLock;

/// `chardata.ALTERED_UTF8_RE`: UTF-8 that would be valid had a byte A0 not become a space.
pub static ALTERED_UTF8_RE: LazyLock<BytesRegex> =
    LazyLock::new(|| BytesRegex::new(ALTERED_UTF8).expect("static regex"));

/// `chardata.LOSSY_UTF8_RE`: UTF-8 with bytes lost to U+FFFD (read back as 0x1A) or `?`.
static LOSSY_UTF8_RE: LazyLock<BytesRegex> =
    LazyLock::new(|| BytesRegex::new(LOSSY_UTF8).expect("static regex"));

/// `fixes.ANSI_RE`.
static TERMINAL_ESCAPE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(TERMINAL_ESCAPE).expect("static regex"));

/// Index of sloppy-windows-1252 in the generated charmaps.
static SLOPPY_1252: LazyLock<usize> = LazyLock::new(|| {
    CHARMAPS
        .iter()
        .position(|c| c.name == "sloppy-windows-1252")
        .expect("generated table")
});

/// `fixes.restore_byte_a0`: puts back the A0 bytes that became spaces inside UTF-8
/// sequences (first `"\xc3 "` as the word "à", as `A_GRAVE_WORD_RE` does).
pub fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        let a_grave_word = bytes[i] == 0xC3
            && bytes.get(i + 1) == Some(&b' ')
            && !A_GRAVE_NOT_BEFORE
                .iter()
                .any(|next| bytes[i + 2..].starts_with(next));
        if a_grave_word {
            out.extend_from_slice(b"\xc3\xa0 ");
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    ALTERED_UTF8_RE
        .replace_all(&out, |caps: &regex::bytes::Captures| {
            let seq = &caps[0];
            seq.iter()
                .map(|&b| if b == b' ' { 0xA0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// `fixes.replace_lossy_sequences`: each UTF-8 sequence missing bytes becomes U+FFFD.
pub fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    LOSSY_UTF8_RE
        .replace_all(bytes, "\u{fffd}".as_bytes())
        .into_owned()
}

/// The matches of `chardata.UTF8_DETECTOR_RE` (character index ranges): runs of characters
/// that look like UTF-8 read in a single-byte encoding, not just after a "strict"
/// continuation character (the pattern's look-behind, which `regex` lacks).
pub fn utf8_detector_matches(chars: &[char]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i == 0 || !in_ranges(UTF8_CONTINUATION_STRICT, chars[i - 1]) {
            let end = utf8_detector_run(chars, i);
            if end > i {
                found.push((i, end));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// The end of the detector's `(...)+` group from `start` (`start` where it does not match):
/// each round takes the first alternative that matches, as Python's backtracking does when
/// nothing follows the group.
fn utf8_detector_run(chars: &[char], start: usize) -> usize {
    let continues = |from: usize, n: usize| {
        chars.len() >= from + n
            && chars[from..from + n]
                .iter()
                .all(|&c| in_ranges(UTF8_CONTINUATION, c))
    };
    let mut pos = start;
    while pos < chars.len() {
        let lead = chars[pos];
        let length = if in_ranges(UTF8_FIRST_OF_2, lead) && continues(pos + 1, 1) {
            2
        } else if in_ranges(UTF8_FIRST_OF_3, lead) && continues(pos + 1, 2) {
            3
        } else if in_ranges(UTF8_FIRST_OF_4, lead) && continues(pos + 1, 3) {
            4
        } else {
            break;
        };
        pos += length;
    }
    pos
}

/// `fixes.fix_c1_controls`: C1 controls read as windows-1252, as browsers do.
pub fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| match u8::try_from(u32::from(c)) {
            Ok(b @ 0x80..=0x9F) => charmap_decode_byte(b, *SLOPPY_1252),
            _ => c,
        })
        .collect()
}

/// Whether `text` holds a C1 control (`chardata.C1_CONTROL_RE`).
pub fn has_c1_control(text: &str) -> bool {
    text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c))
}

/// `fixes.fix_latin_ligatures`.
pub fn fix_latin_ligatures(text: &str) -> String {
    translate(text, LIGATURES)
}

/// `fixes.fix_character_width`.
pub fn fix_character_width(text: &str) -> String {
    translate(text, WIDTH_MAP)
}

/// `fixes.uncurl_quotes`.
pub fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| {
            if in_ranges(DOUBLE_QUOTES, c) {
                '"'
            } else if in_ranges(SINGLE_QUOTES, c) {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// `fixes.fix_line_breaks`.
pub fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// `fixes.remove_terminal_escapes`.
pub fn remove_terminal_escapes(text: &str) -> String {
    TERMINAL_ESCAPE_RE.replace_all(text, "").into_owned()
}

/// `fixes.remove_control_chars`.
pub fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| !in_ranges(CONTROL_CHARS, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a0_is_restored_inside_utf8_only() {
        assert_eq!(restore_byte_a0(b"voil\xc3 le"), b"voil\xc3\xa0 le");
        // Not the word "à" before "quela": the space itself was the A0.
        assert_eq!(restore_byte_a0(b"\xc3 quela"), b"\xc3\xa0quela");
        assert_eq!(restore_byte_a0(b"\xc3  x"), b"\xc3\xa0 x");
        assert_eq!(restore_byte_a0(b"\xe2\x80 x"), b"\xe2\x80\xa0x");
        assert_eq!(restore_byte_a0(b"plain text"), b"plain text".to_vec());
    }

    #[test]
    fn lossy_sequences_become_replacement_characters() {
        assert_eq!(
            replace_lossy_sequences(b"\xe2\x80\x1a!"),
            "\u{fffd}!".as_bytes()
        );
        assert_eq!(replace_lossy_sequences(b"\xc3?"), "\u{fffd}".as_bytes());
        assert_eq!(replace_lossy_sequences(b"a\x1ab"), "a\u{fffd}b".as_bytes());
    }

    #[test]
    fn the_detector_needs_no_strict_continuation_before() {
        let chars: Vec<char> = "a Ã© b".chars().collect();
        assert_eq!(utf8_detector_matches(&chars), vec![(2, 4)]);
        // `€` is a strict continuation character: no match may start just after it.
        let chars: Vec<char> = "€Ã©".chars().collect();
        assert_eq!(utf8_detector_matches(&chars), vec![]);
    }

    #[test]
    fn simple_fixes() {
        assert_eq!(fix_c1_controls("a\u{80}\u{81}\u{93}"), "a€\u{81}“");
        assert_eq!(fix_latin_ligatures("ﬂuﬃeﬆ Ĳ"), "fluffiest IJ");
        assert_eq!(fix_character_width("ＬＯＵＤ　ｶﾀ"), "LOUD カタ");
        assert_eq!(uncurl_quotes("“here’s”"), "\"here's\"");
        assert_eq!(fix_line_breaks("a\r\nb\rc\u{2028}d\u{85}"), "a\nb\nc\nd\n");
        assert_eq!(
            remove_terminal_escapes("\u{1b}[36;44mblue\u{1b}[0m"),
            "blue"
        );
        assert_eq!(
            remove_control_chars("a\u{0}\u{7f}\t\u{feff}b\u{200d}"),
            "a\tb\u{200d}"
        );
    }
}
