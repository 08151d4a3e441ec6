//! ftfy 6.3's mojibake repair (`ftfy.fix_encoding`): undo one wrong decoding at a time until
//! the text stops changing.

use super::badness::is_bad;
use super::codecs::{charmap_encode, decode_utf8, decode_utf8_variants};
use super::fixes::{
    ALTERED_UTF8_RE, fix_c1_controls, has_c1_control, replace_lossy_sequences, restore_byte_a0,
    utf8_detector_matches,
};
use super::tables::CHARMAPS;

/// `ftfy.fix_encoding(text)`.
pub fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    loop {
        let fixed = fix_encoding_step(&text);
        if fixed == text {
            return text;
        }
        text = fixed;
    }
}

/// ftfy's `_fix_encoding_one_step_and_explain`, the text only.
fn fix_encoding_step(text: &str) -> String {
    if text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut latin1_possible = false;
    for (index, charmap) in CHARMAPS.iter().enumerate() {
        let Some(bytes) = charmap_encode(text, index) else {
            continue;
        };
        latin1_possible |= charmap.name == "latin-1";
        if let Some(fixed) = redecode(bytes, charmap.name, charmap.sloppy) {
            return fixed;
        }
    }
    if !utf8_detector_matches(&text.chars().collect::<Vec<_>>()).is_empty() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    // ftfy checks for "windows-1252" among the encodings that fit, which it never tries (only
    // the sloppy form), so latin-1 text is always read as strict windows-1252 here.
    if latin1_possible
        && let Some(fixed) = latin1_as_windows_1252(text)
        && fixed != text
    {
        return fixed;
    }
    if has_c1_control(text) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

/// The bytes of a text encoded in `encoding`, repaired and read as UTF-8 (or its variants);
/// `None` where they are not.
fn redecode(mut bytes: Vec<u8>, encoding: &str, sloppy: bool) -> Option<String> {
    if encoding != "macroman" && ALTERED_UTF8_RE.is_match(&bytes) {
        bytes = restore_byte_a0(&bytes);
    }
    if sloppy {
        bytes = replace_lossy_sequences(&bytes);
    }
    if bytes.contains(&0xED) || bytes.contains(&0xC0) {
        decode_utf8_variants(&bytes)
    } else {
        decode_utf8(&bytes)
    }
}

/// `text.encode("latin-1").decode("windows-1252")` with Python's strict codec (bytes 81, 8D,
/// 8F, 90 and 9D undefined); the text is known to be latin-1.
fn latin1_as_windows_1252(text: &str) -> Option<String> {
    let sloppy = CHARMAPS
        .iter()
        .find(|c| c.name == "sloppy-windows-1252")
        .expect("generated table");
    text.chars()
        .map(|c| match u32::from(c) {
            0x81 | 0x8D | 0x8F | 0x90 | 0x9D => None,
            code @ 0x80..=0x9F => Some(sloppy.decode[code as usize]),
            _ => Some(c),
        })
        .collect()
}

/// `fixes.decode_inconsistent_utf8`: repairs each stretch that looks like mojibake on its
/// own (and is not the whole text).
fn decode_inconsistent_utf8(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in utf8_detector_matches(&chars) {
        out.extend(&chars[last..start]);
        let stretch: String = chars[start..end].iter().collect();
        if end - start < chars.len() && is_bad(&stretch) {
            out.push_str(&fix_encoding(&stretch));
        } else {
            out.push_str(&stretch);
        }
        last = end;
    }
    out.extend(&chars[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_layer_of_mojibake_is_undone() {
        assert_eq!(fix_encoding("sÃ³"), "só");
        assert_eq!(fix_encoding("voilÃ le travail"), "voilà le travail");
        assert_eq!(
            fix_encoding("â€œ like this â€\u{fffd}"),
            "“ like this \u{fffd}"
        );
        assert_eq!(fix_encoding("plain ascii"), "plain ascii");
    }
}
