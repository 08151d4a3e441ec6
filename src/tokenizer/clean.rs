//! The text cleaning OpenAI's `clip.tokenize` applies before BPE (open_clip's `_clean_lower`):
//! `ftfy.fix_text`, `html.unescape` twice, whitespace collapsed (Python's `str.split`), then
//! lower-cased. Each step follows its Python original exactly; tests/tokenizer_parity.rs checks
//! every step against Python on a generated corpus.

pub use super::ftfy::fix_text;
use regex::{Captures, Regex};
use std::sync::LazyLock;

/// OpenAI CLIP's cleaning of one prompt.
pub fn openai_clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    python_split_join(&unescaped).to_lowercase()
}

/// Numeric character references as Python's `html.unescape` finds them.
static NUMERIC_REF: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("&#(?:([0-9]+)|[xX]([0-9a-fA-F]+));?").expect("static regex"));

/// Python's `html.unescape`. Named references are htmlize's (the WHATWG table, longest prefix
/// match as in text content, which is Python's rule too). Numeric ones are decoded here, because
/// Python deletes references to control characters and noncharacters where the HTML5 spec (and
/// htmlize) keeps the character.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for caps in NUMERIC_REF.captures_iter(text) {
        let whole = caps.get(0).expect("match");
        // A segment between numeric references cannot hold part of a named one: names never
        // contain `&`.
        out.push_str(&htmlize::unescape(&text[last..whole.start()]));
        out.push_str(&numeric_reference(&caps));
        last = whole.end();
    }
    out.push_str(&htmlize::unescape(&text[last..]));
    out
}

/// One numeric reference, decoded as Python's `html._replace_charref` does.
fn numeric_reference(caps: &Captures) -> String {
    let (digits, radix) = match caps.get(1) {
        Some(d) => (d.as_str(), 10),
        None => (caps.get(2).expect("hex digits").as_str(), 16),
    };
    // Any number past U+10FFFF is decoded alike (U+FFFD), so saturate rather than overflow.
    let code = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
    if python_drops_reference(code) {
        return String::new();
    }
    // htmlize applies the rest of Python's table: U+0000, surrogates and out-of-range numbers
    // become U+FFFD, 0x80..0x9F are read as windows-1252, anything else is the character.
    htmlize::unescape(format!("&#x{:X};", code.min(0x11_0000))).into_owned()
}

/// Python's `html._invalid_codepoints` less the ones its `_invalid_charrefs` table maps first
/// (U+0080..U+009F): references to these decode to nothing.
fn python_drops_reference(code: u32) -> bool {
    matches!(code, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF)
        || (code <= 0x10_FFFF && code & 0xFFFE == 0xFFFE)
}

/// Python's `str.isspace`: Unicode White_Space plus the four information separators.
fn python_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `" ".join(text.split())`: runs of Python whitespace to one space, none at either end.
fn python_split_join(text: &str) -> String {
    text.split(python_is_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_references_follow_python() {
        assert_eq!(html_unescape("&#65;&#x42&#X43;d"), "ABCd");
        assert_eq!(html_unescape("a&#1;b&#x7f;c&#xFDD0;d&#x10FFFF;e"), "abcde");
        assert_eq!(
            html_unescape("&#0;&#xD800;&#99999999999999;"),
            "\u{fffd}".repeat(3)
        );
        assert_eq!(html_unescape("&#128;&#x81;&#13;"), "\u{20ac}\u{81}\r");
        assert_eq!(html_unescape("&#;&#x;&#xZZ;"), "&#;&#x;&#xZZ;");
    }

    #[test]
    fn named_references_take_the_longest_prefix() {
        assert_eq!(
            html_unescape("&amp;amp; &ampx &notin &notit; &lt3"),
            "&amp; &x ¬in ¬it; <3"
        );
        assert_eq!(html_unescape("&nosuch; &"), "&nosuch; &");
    }

    #[test]
    fn whitespace_is_pythons() {
        assert_eq!(python_split_join(" a\u{1c}b\u{3000}\u{85}c\n"), "a b c");
        assert_eq!(python_split_join("a\u{200b}b"), "a\u{200b}b");
    }
}
