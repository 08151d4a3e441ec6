"""Generate src/tokenizer/ftfy/tables.rs: the character data of ftfy 6.3's `fix_text`, taken
from the installed ftfy itself so that fedclip's Rust implementation uses exactly its tables.

How to run (from the repository root, with the reference venv of tests/reference/requirements.txt):

    /work/refvenv/bin/python tests/reference/make_ftfy_tables.py

CI does NOT run this script; its output is committed. It writes:
  * the single-byte encodings ftfy tries (`chardata.CHARMAP_ENCODINGS`, the sloppy ones from
    `ftfy.bad_codecs`) as 256-entry decoding tables, after checking that Python's encoder is
    the inverse the Rust side builds and that `possible_encoding` accepts exactly that set;
  * `badness.BADNESS_RE`, `chardata.ALTERED_UTF8_RE`, `chardata.LOSSY_UTF8_RE` and
    `fixes.ANSI_RE` translated from Python's parse tree into Rust `regex` syntax, every class
    spelled out (Python's `\\s`, `\\d`, `\\w` are expanded from Python's own `re`, whose Unicode
    tables differ from the `regex` crate's);
  * the classes of `chardata.UTF8_DETECTOR_RE` (it needs a look-behind; src/tokenizer/ftfy/
    fixes.rs matches it by hand), the look-ahead alternatives of `fixes.A_GRAVE_WORD_RE`, and
    the translation tables (control characters, ligatures, width forms, curly quotes).
The script asserts that each pattern still has the shape the hand-written Rust matchers expect.
"""

from __future__ import annotations

import re
import re._constants as C
import re._parser as P
import sys
import unicodedata
from pathlib import Path

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers sloppy-windows-1252 and friends)
from ftfy import badness, chardata, fixes

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "tokenizer" / "ftfy" / "tables.rs"
SCALARS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def ranges(codes: set[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges of Unicode scalar values (surrogates split them)."""
    out: list[list[int]] = []
    for c in sorted(codes):
        if out and out[-1][1] + 1 == c:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


def class_members(pattern: str) -> set[int]:
    compiled = re.compile(pattern)
    return {c for c in SCALARS if compiled.fullmatch(chr(c))}


CATEGORY_SETS = {
    C.CATEGORY_DIGIT: class_members(r"\d"),
    C.CATEGORY_SPACE: class_members(r"\s"),
    C.CATEGORY_WORD: class_members(r"\w"),
}


def lit(code: int, binary: bool) -> str:
    if binary:
        return f"\\x{code:02X}"
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    return f"\\x{{{code:X}}}"


def class_item(code_lo: int, code_hi: int, binary: bool) -> str:
    if code_lo == code_hi:
        return lit(code_lo, binary)
    return f"{lit(code_lo, binary)}-{lit(code_hi, binary)}"


def translate_in(items: list, binary: bool) -> str:
    negate = False
    codes: set[int] = set()
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            codes.add(av)
        elif op is C.RANGE:
            codes.update(range(av[0], av[1] + 1))
        elif op is C.CATEGORY and not binary and av in CATEGORY_SETS:
            codes |= CATEGORY_SETS[av]
        else:
            raise ValueError(f"unsupported class item {op} {av}")
    codes -= set(range(0xD800, 0xE000))
    body = "".join(class_item(a, b, binary) for a, b in ranges(codes))
    return "[" + ("^" if negate else "") + body + "]"


def translate(tree, binary: bool) -> str:
    """Python `re` parse tree to Rust `regex` syntax (leftmost-first in both)."""
    out = []
    for op, av in tree:
        if op is C.LITERAL:
            out.append(lit(av, binary))
        elif op is C.NOT_LITERAL:
            out.append("[^" + lit(av, binary) + "]")
        elif op is C.ANY:
            out.append("[^\\x0A]" if binary else "[^\\x{A}]")
        elif op is C.IN:
            out.append(translate_in(av, binary))
        elif op is C.BRANCH:
            out.append("(?:" + "|".join(translate(b, binary) for b in av[1]) + ")")
        elif op is C.SUBPATTERN:
            out.append("(?:" + translate(av[3], binary) + ")")
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            lo, hi, sub = av
            bound = f"{{{lo},}}" if hi is C.MAXREPEAT else f"{{{lo},{hi}}}"
            lazy = "?" if op is C.MIN_REPEAT else ""
            out.append("(?:" + translate(sub, binary) + ")" + bound + lazy)
        elif op is C.AT and av in (C.AT_BEGINNING, C.AT_BEGINNING_STRING):
            out.append("\\A")
        else:
            raise ValueError(f"unsupported pattern element {op} {av}")
    return "".join(out)


def rust_pattern(compiled: re.Pattern) -> str:
    binary = isinstance(compiled.pattern, bytes)
    text = translate(P.parse(compiled.pattern, compiled.flags), binary)
    assert '"' not in text and "#" not in text
    return ("(?-u)" if binary else "") + text


def char(c: int) -> str:
    return f"'\\u{{{c:X}}}'"


def rust_str(s: str) -> str:
    return '"' + "".join(f"\\u{{{ord(c):X}}}" for c in s) + '"'


def range_table(name: str, doc: str, codes: set[int]) -> str:
    rows = "".join(f"    ({char(a)}, {char(b)}),\n" for a, b in ranges(codes))
    return f"/// {doc}\npub const {name}: &[(char, char)] = &[\n{rows}];\n"


def map_table(name: str, doc: str, mapping: dict[int, str]) -> str:
    rows = "".join(f"    ({char(k)}, {rust_str(v)}),\n" for k, v in sorted(mapping.items()))
    return f"/// {doc}\npub const {name}: &[(char, &str)] = &[\n{rows}];\n"


def charmap(encoding: str) -> str:
    """One encoding's decoding table, checked against Python's encoder and `possible_encoding`."""
    decode = bytes(range(256)).decode(encoding)
    allowed = {c for c in range(0x80) if c != 0x1A} | {ord(decode[b]) for b in range(0x80, 0x100)}
    allowed.add(ord(decode[0x1A]))
    inverse: dict[int, int] = {}
    for b in list(range(0x80, 0x100)) + [0x1A]:
        assert ord(decode[b]) not in inverse or ord(decode[b]) < 0x80, (encoding, b)
        inverse.setdefault(ord(decode[b]), b)
    for c in range(0x80):
        if c != 0x1A:
            assert decode[c] == chr(c), (encoding, c)
            inverse[c] = c
    accepted = {c for c in SCALARS if chardata.possible_encoding(chr(c), encoding)}
    assert accepted == allowed, encoding
    for c in allowed:
        assert chr(c).encode(encoding) == bytes([inverse[c]]), (encoding, c)
    table = ", ".join(char(ord(c)) for c in decode)
    sloppy = "true" if encoding.startswith("sloppy") else "false"
    return (f"    Charmap {{\n        name: \"{encoding}\",\n        sloppy: {sloppy},\n"
            f"        decode: [{table}],\n    }},\n")


def detector_classes() -> dict[str, set[int]]:
    """The classes of UTF8_DETECTOR_RE, after checking its shape is the one fixes.rs matches."""
    clues = chardata.UTF8_CLUES
    expected = """
    (?<! [{utf8_continuation_strict}])
    (
        [{utf8_first_of_2}] [{utf8_continuation}]
        |
        [{utf8_first_of_3}] [{utf8_continuation}]{{2}}
        |
        [{utf8_first_of_4}] [{utf8_continuation}]{{3}}
    )+
    """.format(**clues)
    assert chardata.UTF8_DETECTOR_RE.pattern == expected, "UTF8_DETECTOR_RE changed shape"
    assert chardata.UTF8_DETECTOR_RE.flags & re.VERBOSE
    return {name: class_members("[" + body + "]") for name, body in clues.items()}


def a_grave_lookahead() -> list[bytes]:
    tree = P.parse(fixes.A_GRAVE_WORD_RE.pattern)
    assert [tree[0], tree[1]] == [(C.LITERAL, 0xC3), (C.LITERAL, 0x20)], tree
    op, (direction, sub) = tree[2]
    assert op is C.ASSERT_NOT and direction == 1 and len(tree) == 3, tree
    ((branch, (_, alternatives)),) = sub
    assert branch is C.BRANCH
    out = []
    for alt in alternatives:
        assert all(o is C.LITERAL for o, _ in alt), alt
        out.append(bytes(v for _, v in alt))
    return out


def main() -> None:
    assert chardata.C1_CONTROL_RE.pattern == "[\\x80-\\x9f]"
    assert fixes.SURROGATE_RE.pattern == "[\ud800-\udfff]"
    parts = [
        "//! ftfy 6.3's character data, generated by tests/reference/make_ftfy_tables.py from\n"
        f"//! ftfy {ftfy.__version__} under Python {sys.version.split()[0]} "
        f"(Unicode {unicodedata.unidata_version}). Do not edit; rerun the script.\n\n",
        "/// A single-byte encoding ftfy tries to undo: byte `b` decodes to `decode[b]`.\n"
        "pub struct Charmap {\n    pub name: &'static str,\n"
        "    /// One of ftfy's `sloppy-` codecs (which read byte 0x1A as U+FFFD).\n"
        "    pub sloppy: bool,\n    pub decode: [char; 256],\n}\n\n",
        "/// `chardata.CHARMAP_ENCODINGS`, in the order ftfy tries them.\n"
        f"pub const CHARMAPS: [Charmap; {len(chardata.CHARMAP_ENCODINGS)}] = [\n"
        + "".join(charmap(e) for e in chardata.CHARMAP_ENCODINGS) + "];\n\n",
        "/// `badness.BADNESS_RE`.\n"
        f"pub const BADNESS: &str = r\"{rust_pattern(badness.BADNESS_RE)}\";\n\n",
        "/// `chardata.ALTERED_UTF8_RE` (bytes).\n"
        f"pub const ALTERED_UTF8: &str = r\"{rust_pattern(chardata.ALTERED_UTF8_RE)}\";\n\n",
        "/// `chardata.LOSSY_UTF8_RE` (bytes).\n"
        f"pub const LOSSY_UTF8: &str = r\"{rust_pattern(chardata.LOSSY_UTF8_RE)}\";\n\n",
        "/// `fixes.ANSI_RE`.\n"
        f"pub const TERMINAL_ESCAPE: &str = r\"{rust_pattern(fixes.ANSI_RE)}\";\n\n",
        "/// What may follow `\"\\xc3 \"` for `fixes.A_GRAVE_WORD_RE` not to match.\n"
        "pub const A_GRAVE_NOT_BEFORE: &[&[u8]] = &["
        + ", ".join("b\"" + "".join(f"\\x{b:02X}" for b in alt) + "\"" for alt in a_grave_lookahead())
        + "];\n\n",
    ]
    for name, codes in detector_classes().items():
        parts.append(range_table(name.upper(), f"`chardata.UTF8_CLUES[\"{name}\"]`.", codes) + "\n")
    parts.append(range_table("CONTROL_CHARS", "`chardata.CONTROL_CHARS` (removed).",
                             set(chardata.CONTROL_CHARS)) + "\n")
    parts.append(range_table("SINGLE_QUOTES", "`chardata.SINGLE_QUOTE_RE` (to `'`).",
                             class_members(chardata.SINGLE_QUOTE_RE.pattern)) + "\n")
    parts.append(range_table("DOUBLE_QUOTES", "`chardata.DOUBLE_QUOTE_RE` (to `\"`).",
                             class_members(chardata.DOUBLE_QUOTE_RE.pattern)) + "\n")
    parts.append(map_table("LIGATURES", "`chardata.LIGATURES`.", chardata.LIGATURES) + "\n")
    parts.append(map_table("WIDTH_MAP", "`chardata.WIDTH_MAP`.", chardata.WIDTH_MAP))
    OUT.write_text("".join(parts))
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
