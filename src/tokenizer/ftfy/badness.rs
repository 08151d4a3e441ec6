//! ftfy 6.3's mojibake heuristic (`ftfy.badness.is_bad`): does the text hold any of the
//! character sequences that are far likelier mojibake than intended text?

use super::tables::BADNESS;
use regex::Regex;
use std::sync::LazyLock;

/// `badness.BADNESS_RE`, translated from Python's parse tree by
/// tests/reference/make_ftfy_tables.py (Python's `\s` and `\w` spelled out).
static BADNESS_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(BADNESS).expect("static regex"));

/// `ftfy.badness.is_bad(text)`.
pub fn is_bad(text: &str) -> bool {
    BADNESS_RE.is_match(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_mojibake_is_bad() {
        assert!(is_bad("cafÃ©"));
        assert!(is_bad("â€œquotedâ€\u{9d}"));
        assert!(is_bad("\u{85}"));
        assert!(!is_bad("café"));
        assert!(!is_bad("“quoted” § 5"));
        assert!(!is_bad(""));
    }
}
