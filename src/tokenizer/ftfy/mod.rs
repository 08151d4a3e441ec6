//! `ftfy.fix_text` (ftfy 6.3, default configuration), written for fedclip after ftfy's
//! algorithm: each line is fixed on its own, by every fix in ftfy's order again until nothing
//! changes (`fix_and_explain`). The mojibake repair is in [`encoding`], the other fixes in
//! [`fixes`]; the character data (codecs, the `badness` heuristic's classes, translation
//! tables) is generated from the installed ftfy by tests/reference/make_ftfy_tables.py into
//! `tables.rs`, so it is ftfy's to the character.
//!
//! Two of ftfy's steps have nothing to do here: `fix_surrogates` (a Rust `str` cannot hold a
//! surrogate, and no fix makes one) and the explanations. NFC is the `unicode-normalization`
//! crate's, whose Unicode version may be newer than the reference Python's (3.11, Unicode 14):
//! characters assigned since compose only here.
//! tests/tokenizer_parity.rs checks the whole against Python's ftfy 6.3.1 on every string of
//! its corpus.

mod badness;
mod chars;
mod codecs;
mod encoding;
mod fixes;
#[rustfmt::skip]
mod tables;

pub use encoding::fix_encoding;

use super::clean::html_unescape;
use regex::{Captures, Regex};
use std::collections::HashMap;
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

/// ftfy's `HTML_ENTITY_RE`: the references its `unescape_html` fix decodes.
static HTML_ENTITY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("&#?[0-9A-Za-z]{1,24};").expect("static regex"));

/// ftfy's `max_decode_length`: longer lines are fixed in pieces of this many characters.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// ftfy's `HTML_ENTITIES`: every HTML5 name with its semicolon, and the upper-cased form of a
/// lower-case name where `html.unescape` leaves that form as it is.
static FTFY_ENTITIES: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let mut table = HashMap::new();
    for (name, value) in htmlize::ENTITIES.entries() {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        if !name.ends_with(';') {
            continue;
        }
        table.insert(name.to_string(), value.to_string());
        let upper = name.to_ascii_uppercase();
        if name == name.to_ascii_lowercase() && html_unescape(&upper) == upper {
            table.insert(upper, value.to_uppercase());
        }
    }
    table
});

/// `ftfy.fix_text(text)`.
pub fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        for segment in pieces(line, MAX_DECODE_LENGTH) {
            // ftfy's `unescape_html="auto"`: off from the first segment with a `<` on.
            unescape &= !segment.contains('<');
            out.push_str(&fix_segment(segment, unescape));
        }
    }
    out
}

/// `text` cut into pieces of at most `max` characters.
fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// ftfy's `fix_and_explain` on one segment: every fix, again until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = fix_encoding(&text);
        text = fixes::fix_c1_controls(&text);
        text = fixes::fix_latin_ligatures(&text);
        text = fixes::fix_character_width(&text);
        text = fixes::uncurl_quotes(&text);
        text = fixes::fix_line_breaks(&text);
        text = fixes::remove_terminal_escapes(&text);
        text = fixes::remove_control_chars(&text);
        text = text.nfc().collect();
        if text == before {
            return text;
        }
    }
}

/// ftfy's `unescape_html` fix.
pub fn unescape_html(text: &str) -> String {
    HTML_ENTITY
        .replace_all(text, |caps: &Captures| {
            let entity = &caps[0];
            if let Some(value) = FTFY_ENTITIES.get(entity) {
                value.clone()
            } else if entity.starts_with("&#") {
                // A numeric reference counts only when its `;` is consumed.
                let decoded = html_unescape(entity);
                if decoded.contains(';') {
                    entity.to_string()
                } else {
                    decoded
                }
            } else {
                entity.to_string()
            }
        })
        .into_owned()
}
