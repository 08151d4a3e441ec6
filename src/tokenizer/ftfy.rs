//! `ftfy.fix_text` (ftfy 6.3, default configuration) as plsfix does it, with a thin layer of
//! our own where plsfix 0.1.8 departs from ftfy 6.3:
//!
//! * HTML entities: plsfix decodes them on every line and with a table of its own. ftfy 6.3
//!   stops decoding from the first line holding a `<` on, decodes numeric references as
//!   `html.unescape` does (e.g. `&#1114112;` to U+FFFD) and upper-cased names only where
//!   `html.unescape` leaves the upper-case form alone (not `&GTRLESS;`). So entities are
//!   decoded here ([`unescape_html`]) and hidden from plsfix.
//! * Terminal escapes: plsfix's pattern never matches (it spells ESC as `"\033"`, which Rust
//!   reads as NUL, `3`, `3`), so they are removed here, before plsfix drops the ESC alone.
//!
//! Not bridged: plsfix's mojibake repair, private to it, follows an older ftfy (its `badness`
//! heuristic, and `restore_byte_a0` tried under MacRoman too), so some mojibake is repaired
//! otherwise than by ftfy 6.3 (tests/fixtures/tokenizer_known_deviations.json lists the corpus
//! strings this affects).

use super::clean::html_unescape;
use regex::{Captures, Regex};
use std::collections::HashMap;
use std::sync::LazyLock;

/// ftfy's `HTML_ENTITY_RE`: the references its `unescape_html` fix decodes.
static HTML_ENTITY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("&#?[0-9A-Za-z]{1,24};").expect("static regex"));

/// ftfy's `ANSI_RE`.
static TERMINAL_ESCAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("static regex"));

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
    text.split_inclusive('\n')
        .map(|line| {
            // ftfy's `unescape_html="auto"`: off from the first line with a `<` on.
            unescape &= !line.contains('<');
            fix_segment(line, unescape)
        })
        .collect()
}

/// ftfy's `fix_and_explain` on one line: every fix, again until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = TERMINAL_ESCAPE.replace_all(&text, "").into_owned();
        text = plsfix_without_entities(&text);
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

/// plsfix's fixes with no entity left for its own (unconditional) decoding: each `;` closing
/// an entity is swapped for an ASCII mark absent from the text, which no other fix treats
/// otherwise than `;`, and swapped back afterwards.
fn plsfix_without_entities(text: &str) -> String {
    if !HTML_ENTITY.is_match(text) {
        return plsfix::fix_text(text, None);
    }
    let Some(mark) = "^`~|@$%=+:*".chars().find(|&c| {
        let wide = char::from_u32(c as u32 - 0x21 + 0xFF01).expect("full-width form");
        !text.contains(c) && !text.contains(wide)
    }) else {
        return plsfix::fix_text(text, None);
    };
    let hidden = HTML_ENTITY.replace_all(text, |caps: &Captures| {
        let entity = &caps[0];
        format!("{}{mark}", &entity[..entity.len() - 1])
    });
    plsfix::fix_text(&hidden, None).replace(mark, ";")
}
