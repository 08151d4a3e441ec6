//! The codecs ftfy's encoding repair goes through: the single-byte encodings of
//! `chardata.CHARMAP_ENCODINGS` (Python's strict codecs and ftfy's "sloppy" ones, from the
//! generated decoding tables) and ftfy's `utf-8-variants` decoder.

use super::tables::{CHARMAPS, Charmap};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Each charmap's encoder: the inverse of its decoding table over the characters ftfy's
/// `possible_encoding` accepts (ASCII but 0x1A, what bytes 0x80..=0xFF and 0x1A decode to;
/// tests/reference/make_ftfy_tables.py checks this is Python's encoder).
static ENCODERS: LazyLock<Vec<HashMap<char, u8>>> =
    LazyLock::new(|| CHARMAPS.iter().map(encoder).collect());

fn encoder(charmap: &Charmap) -> HashMap<char, u8> {
    let mut table: HashMap<char, u8> = (0u8..0x80)
        .filter(|&b| b != 0x1A)
        .map(|b| (char::from(b), b))
        .collect();
    for b in (0x80..=0xFF).chain([0x1A]) {
        table.entry(charmap.decode[usize::from(b)]).or_insert(b);
    }
    table
}

/// `text.encode(CHARMAPS[index].name)`, or `None` where ftfy's `possible_encoding` says no.
pub fn charmap_encode(text: &str, index: usize) -> Option<Vec<u8>> {
    let table = &ENCODERS[index];
    text.chars().map(|c| table.get(&c).copied()).collect()
}

/// `bytes.decode(CHARMAPS[index].name)` for the bytes 0x80..=0x9F and ASCII (enough for
/// `fix_c1_controls`, whose characters are all below U+0100).
pub fn charmap_decode_byte(byte: u8, index: usize) -> char {
    CHARMAPS[index].decode[usize::from(byte)]
}

/// Python's strict `bytes.decode("utf-8")`.
pub fn decode_utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

/// ftfy's `utf-8-variants` decoder (strict): UTF-8, plus Java's `C0 80` for U+0000 and
/// CESU-8's surrogate pairs (`ED A0..AF xx ED B0..BF xx`) for one supplementary character.
/// It follows the codec step by step, quirks included: its patterns end in Python's `$`, which
/// also matches before a final newline, so a final `C0 \n` reads as U+0000 (the newline gone).
pub fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(start) = find_special(rest) else {
            out.push_str(std::str::from_utf8(rest).ok()?);
            break;
        };
        if start > 0 {
            out.push_str(std::str::from_utf8(&rest[..start]).ok()?);
            pos += start;
            continue;
        }
        if rest[0] == 0xC0 {
            // `C0 80`, or `C0` at the end (an error) or before a final newline.
            if rest.len() < 2 {
                return None;
            }
            out.push('\0');
            pos += 2;
        } else if rest.len() >= 6 && cesu8_at(rest, 0) {
            let code = ((u32::from(rest[1]) & 0x0F) << 16)
                + ((u32::from(rest[2]) & 0x3F) << 10)
                + ((u32::from(rest[4]) & 0x0F) << 6)
                + (u32::from(rest[5]) & 0x3F)
                + 0x10000;
            out.push(char::from_u32(code)?);
            pos += 6;
        } else {
            // A lone or truncated surrogate: invalid UTF-8 either way.
            return None;
        }
    }
    Some(out)
}

/// Python's `$` (no MULTILINE) at `pos`: the end, or just before a final newline.
fn at_dollar(bytes: &[u8], pos: usize) -> bool {
    pos == bytes.len() || (pos + 1 == bytes.len() && bytes[pos] == b'\n')
}

/// Matches a sequence of `(byte class | $)` groups from `pos`, as Python's backtracking does
/// (a group takes a byte of its class, else matches `$` without one).
fn groups_match(bytes: &[u8], mut pos: usize, groups: &[fn(u8) -> bool]) -> bool {
    for class in groups {
        if pos < bytes.len() && class(bytes[pos]) {
            pos += 1;
        } else if !at_dollar(bytes, pos) {
            return false;
        }
    }
    true
}

fn lead_surrogate(b: u8) -> bool {
    (0xA0..=0xAF).contains(&b)
}
fn trail_surrogate(b: u8) -> bool {
    (0xB0..=0xBF).contains(&b)
}
fn any_surrogate(b: u8) -> bool {
    (0xA0..=0xBF).contains(&b)
}
fn continuation(b: u8) -> bool {
    (0x80..=0xBF).contains(&b)
}
fn is_ed(b: u8) -> bool {
    b == 0xED
}
fn is_80(b: u8) -> bool {
    b == 0x80
}

/// The codec's `CESU8_RE` at `pos` (which holds `ED`).
fn cesu8_at(bytes: &[u8], pos: usize) -> bool {
    bytes[pos] == 0xED
        && groups_match(
            bytes,
            pos + 1,
            &[
                lead_surrogate,
                continuation,
                is_ed,
                trail_surrogate,
                continuation,
            ],
        )
}

/// Where the codec's `SPECIAL_BYTES_RE` (Java null, CESU-8 pair, surrogate) first matches.
fn find_special(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&pos| match bytes[pos] {
        0xC0 => groups_match(bytes, pos + 1, &[is_80]),
        0xED => {
            cesu8_at(bytes, pos) || groups_match(bytes, pos + 1, &[any_surrogate, continuation])
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_variants_reads_java_null_and_cesu8() {
        assert_eq!(decode_utf8_variants(b"a\xc0\x80b").as_deref(), Some("a\0b"));
        // U+1F600 as a CESU-8 surrogate pair.
        let pair = b"x\xed\xa0\xbd\xed\xb8\x80y";
        assert_eq!(decode_utf8_variants(pair).as_deref(), Some("x\u{1F600}y"));
        assert_eq!(
            decode_utf8_variants("é\u{D7FF}".as_bytes()).as_deref(),
            Some("é\u{D7FF}")
        );
        assert_eq!(decode_utf8_variants(b"\xed\xa0\x80"), None);
        assert_eq!(decode_utf8_variants(b"\xed\xb0\x80 and more"), None);
        assert_eq!(decode_utf8_variants(b"\xc0"), None);
        assert_eq!(decode_utf8_variants(b"\xc0\x81"), None);
        // Python's `$` before a final newline.
        assert_eq!(decode_utf8_variants(b"a\xc0\n").as_deref(), Some("a\0"));
    }

    #[test]
    fn charmaps_encode_only_what_they_decode() {
        let latin1 = CHARMAPS.iter().position(|c| c.name == "latin-1").unwrap();
        let sloppy = CHARMAPS
            .iter()
            .position(|c| c.name == "sloppy-windows-1252")
            .unwrap();
        assert_eq!(
            charmap_encode("Ã©\u{1a}", latin1),
            Some(vec![0xC3, 0xA9, 0x1A])
        );
        assert_eq!(charmap_encode("€", latin1), None);
        assert_eq!(
            charmap_encode("â€\u{fffd}", sloppy),
            Some(vec![0xE2, 0x80, 0x1A])
        );
        assert_eq!(charmap_encode("\u{1a}", sloppy), None);
        assert_eq!(charmap_encode("\u{81}", sloppy), Some(vec![0x81]));
    }
}
