"""Generate tests/fixtures/tokenizer_corpus.json.gz: how OpenAI's CLIP tokenizer cleans and
tokenizes a generated corpus of awkward strings, and what CLIPTokenizerFast makes of them.

How to run (from the repository root, with the reference venv of tests/reference/requirements.txt):

    /work/refvenv/bin/python tests/reference/make_tokenizer_fixtures.py

CI does NOT run this script; the Rust test tests/tokenizer_parity.rs reads its output. The
corpus is generated from a fixed seed and the file is written with a zero gzip time stamp, so
two runs give the same bytes. No network and no weights: open_clip's bundled BPE file and the
bundled weights/tiny-clip/tokenizer.json are the only inputs.

Each case of `cases` holds, for one input string `text`:
  unescape  html.unescape(text)
  ftfy      ftfy.fix_text(text)                    (ftfy 6.3, default configuration)
  clean     open_clip's cleaning: whitespace_clean(basic_clean(text)).lower(), i.e. ftfy.fix_text,
            html.unescape twice, strip, collapse whitespace (str.split), lower-case
  openai    [49406] + SimpleTokenizer().encode(text) + [49407]   (what clip.tokenize holds), with
            OpenAI's names for the two special tokens (see `openai_tokenizer`)
  hf        CLIPTokenizerFast(weights/tiny-clip)(text).input_ids (no ftfy, no unescaping)
`unescape_cases` holds the same fields but `hf`, for every HTML5 entity name, with and without its
semicolon, and numeric references around every boundary of Python's html.unescape rules.

The last 212 cases are mojibake of other kinds (`extra_mojibake`, its own seed, so the cases before
it do not move): random accented, Greek, Cyrillic, symbol and emoji text through every encoding ftfy
tries, lossy windows-1252 (U+FFFD), A0 bytes turned spaces, CESU-8 and Java's C0 80, mojibake beside
clean text, over several lines.

It also writes tests/fixtures/ftfy_encoding_steps.json: for each kind of step of
`ftfy.fix_encoding_and_explain` (every encoding, `restore_byte_a0`, `replace_lossy_sequences`,
`utf-8-variants`, `decode_inconsistent_utf8`, latin-1 read as windows-1252, `fix_c1_controls`), up
to four corpus strings whose repair takes it, with `ftfy.fix_encoding`'s result and the plan.
"""

from __future__ import annotations

import gzip
import html
import html.entities
import io
import json
import random
import sys
from pathlib import Path

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers sloppy-windows-1252 and friends)
import open_clip
import regex as re
import transformers
from open_clip.tokenizer import SimpleTokenizer, _clean_lower
from transformers import CLIPTokenizerFast

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "tokenizer_corpus.json.gz"
STEPS_OUT = REPO / "tests" / "fixtures" / "ftfy_encoding_steps.json"
TINY_CLIP = REPO / "weights" / "tiny-clip"
SOT, EOT = 49406, 49407
SEED = 14

# Class names of the domain-generalisation datasets (PACS, VLCS, Office-Home, DomainNet) and
# harder ones a researcher might type.
CLASSES = [
    "dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "bird", "car", "chair",
    "Alarm_Clock", "Backpack", "Batteries", "Desk_Lamp", "Exit_Sign", "File_Cabinet",
    "Flipflops", "Lamp_Shade", "Paper_Clip", "Postit_Notes", "Push_Pin", "ToothBrush",
    "Trash_Can", "TV", "Webcam", "The_Eiffel_Tower", "The_Great_Wall_of_China",
    "The_Mona_Lisa", "aircraft_carrier", "hot_air_balloon", "t-shirt", "see_saw",
]
HARD = [
    "café", "crème brûlée", "jalapeño", "piñata", "café au lait", "São Paulo", "Zürich",
    "smörgåsbord", "Ångström", "naïve art", "façade", "Œuvre", "Straße", "İstanbul", "ΣΟΦΙΑ",
    "Ελλάδα", "Москва", "東京タワー", "北京烤鸭", "김치", "ramen 🍜", "👨‍👩‍👧 family",
    "🇯🇵 flag", "½ cup", "x² + y²", "5 µm", "№ 5", "Coca‑Cola™", "€100 note", "— dash —",
    "wait…", "dog’s toy", "“quoted” thing", "rock & roll", "fish & chips", "Ben & Jerry's",
    "AT&T phone", "déjà vu", "Mötley Crüe", "Björk", "El Niño", "Dvořák", "Łódź",
    "Ørsted", "Þingvellir", "ﬁsh ﬂag", "Ｆｕｌｌ ｗｉｄｔｈ", "ｶﾀｶﾅ", "a\u0301 combining",
    "Pokémon", "señor", "Ĳssel", "Æsir", "crêpe", "über", "«guillemets»", "„low“ quote",
    "‘single’ quote", "it’s", "don′t", "12″ ruler", "√2", "∞ sign", "→ arrow", "© 2024",
]
TEMPLATES = [
    "a picture of a {}", "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.",
    "a sculpture of a {}.", "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a pixelated photo of the {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a close-up photo of a {}.", "itap of a {}.", "a origami {}.", "art of the {}.",
    "a sketch of the {}.", "a doodle of a {}.", "a cartoon {}.", "a {} in a video game.",
    "a toy {}.", "a plushie {}.", "the {} in a video game.", "a photo of the small {}.",
    "a photo of the large {}.", "a photo of the weird {}.", "a dark photo of the {}.",
    "{}",
]
CURLY = ["‘", "’", "“", "”", "‚", "„", "‛", "‟", "′", "″", "‹", "›", "«", "»", "＂", "＇"]
LIGATURES = ["ﬀ", "ﬁ", "ﬂ", "ﬃ", "ﬄ", "ﬅ", "ﬆ", "Ĳ", "ĳ", "ŉ", "Ǆ", "ǅ", "ǆ", "Ǉ", "ǈ", "ǉ",
             "Ǌ", "ǋ", "ǌ", "Ǳ", "ǲ", "ǳ", "æ", "œ"]
WIDE = [chr(c) for c in range(0xFF01, 0xFF5F)] + ["\u3000", "ｱ", "ｲ", "ｳ", "ﾞ", "ﾟ", "ｰ", "￥", "￦"]
SPACES = ["\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
          "\xa0", "\u1680", "\u2000", "\u2002", "\u2003", "\u2007", "\u2009", "\u200a",
          "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u200b", "\u200d", "\u2060",
          "\ufeff", "\u00ad", "  ", "   "]
CONTROLS = [chr(c) for c in range(0x00, 0x20) if c not in (0x0A, 0x0D)] + ["\x7f"] + \
    [chr(c) for c in range(0x80, 0xA0)] + ["\x1b[31m", "\x1b[0m", "\x1b[1;32m", "\ufffc", "\ufffd"]
EMOJI_CJK = ["😀", "🍜", "🐕", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "☕", "🏳️‍🌈", "漢字", "日本語",
             "中文", "한국어", "ひらがな", "カタカナ", "ไทย", "العربية", "עברית", "हिन्दी",
             "\u1100\u1161\u11a8", "e\u0301", "A\u030a", "ﬁ", "Ⅻ", "①", "㍿", "ℌ", "ℵ", "𝔘𝔫𝔦",
             "𝟙𝟚𝟛", "ǅ", "ΣΑΣ", "ẞ", "İ", "ﬄ", "\U0001F9D1\u200d\U0001F373"]
MOJIBAKE_CODECS = ["latin-1", "sloppy-windows-1252", "windows-1252", "macroman", "cp437",
                   "sloppy-windows-1251", "iso-8859-2", "sloppy-windows-1250"]
NUMERIC_POINTS = sorted(
    set(range(0x00, 0x110))
    | set(range(0x7C, 0xA2))
    | {0x2019, 0x201C, 0x20AC, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000}
    | set(range(0xFDCE, 0xFDF2))
    | {0xFFFD, 0xFFFE, 0xFFFF, 0x10000}
    | {p * 0x10000 + o for p in range(1, 17) for o in (0xFFFD, 0xFFFE, 0xFFFF)}
    | {0x10FFFF, 0x110000, 0x7FFFFFFF, 0xFFFFFFFF, 0x100000000, 10**30}
)


def prompt(rng: random.Random, names: list[str]) -> str:
    name = rng.choice(names)
    if rng.random() < 0.5:
        name = name.replace("_", " ").lower()
    return rng.choice(TEMPLATES).format(name)


def mojibake(rng: random.Random, text: str) -> str:
    """`text` as UTF-8 bytes decoded in a single-byte encoding, one or two layers deep."""
    for _ in range(rng.choice([1, 1, 2])):
        codec = rng.choice(MOJIBAKE_CODECS)
        try:
            text = text.encode("utf-8").decode(codec)
        except UnicodeDecodeError:
            text = text.encode("utf-8").decode("latin-1")
    return text


def sprinkle(rng: random.Random, text: str, pieces: list[str], n: int) -> str:
    chars = list(text)
    for _ in range(n):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(pieces))
    return "".join(chars)


def escape_entity(rng: random.Random, ch: str) -> str:
    code = ord(ch)
    return rng.choice([f"&#{code};", f"&#x{code:x};", f"&#X{code:X};", f"&#{code}", f"&#0{code};"])


def html_escaped(rng: random.Random, names: list[str], text: str) -> str:
    """Entities of several kinds: named (with and without `;`, upper-cased), numeric, double-
    escaped, broken; sometimes beside a `<` (which turns ftfy's own unescaping off)."""
    kind = rng.randrange(9)
    if kind == 0:
        out = html.escape(text, quote=True)
    elif kind == 1:
        out = html.escape(html.escape(text))
    elif kind == 2:
        out = "".join(escape_entity(rng, c) if rng.random() < 0.3 else c for c in text)
    elif kind == 3:
        out = sprinkle(rng, text, ["&" + n for n in names], rng.randint(1, 3))
    elif kind == 4:
        out = sprinkle(rng, text, ["&" + n.upper() for n in names if n.endswith(";")], 2)
    elif kind == 5:
        out = sprinkle(rng, text, ["&amp;amp;", "&amp;#39;", "&amp;quot;", "&amp;lt;b&amp;gt;",
                                   "&#38;amp;", "&amp;#x2019;", "&amp;amp;amp;amp;"], 2)
    elif kind == 6:
        out = sprinkle(rng, text, ["&", "&;", "&#;", "&#x;", "&#xZZ;", "& amp;", "&amp",
                                   "&ampx", "&notin", "&notit;", "&copy2024", "&lt3",
                                   "&#65abc", "&#x41g", "&#1114112;", "&#99999999999999;"], 2)
    elif kind == 7:
        out = "<b>" + html.escape(text) + "</b> &amp; " + escape_entity(rng, "’")
    else:
        out = html.escape(text) + "\n<i>" + html.escape(text) + "</i>\n&amp;lt; &#x201C;x&#x201D;"
    return out


def generate_corpus() -> list[str]:
    rng = random.Random(SEED)
    names = sorted(html.entities.html5)
    everything = CLASSES + HARD
    corpus: list[str] = [
        "", " ", "\n", "\t \n", "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b",
        "<|STARTOFTEXT|> dog", "<start_of_text> x", "ΟΔΟΣ", "ΣΑΣ σας", "İİ", "ẞ", "ǅungla", "a" * 300,
        " ".join(["photo"] * 90), "&" * 40, "&" + "a" * 40 + ";",
        "&CounterClockwiseContourIntegral;", "&CounterClockwiseContourIntegralx",
    ]
    for _ in range(300):
        corpus.append(prompt(rng, everything))
    for _ in range(700):
        corpus.append(mojibake(rng, prompt(rng, HARD)))
    for _ in range(80):
        corpus.append(mojibake(rng, rng.choice(HARD)))
    for _ in range(200):
        corpus.append(sprinkle(rng, prompt(rng, everything), CURLY, rng.randint(1, 4)))
    for _ in range(150):
        corpus.append(sprinkle(rng, prompt(rng, everything), LIGATURES, rng.randint(1, 3)))
    for _ in range(150):
        corpus.append(sprinkle(rng, prompt(rng, everything), WIDE, rng.randint(1, 6)))
    for _ in range(100):
        corpus.append("".join(WIDE[ord(c) - 0x21] if "!" <= c <= "~" else c
                              for c in prompt(rng, CLASSES)))
    for _ in range(650):
        corpus.append(html_escaped(rng, names, prompt(rng, everything)))
    for _ in range(200):
        corpus.append(sprinkle(rng, prompt(rng, everything), CONTROLS, rng.randint(1, 4)))
    for _ in range(200):
        corpus.append(sprinkle(rng, prompt(rng, everything), EMOJI_CJK, rng.randint(1, 4)))
    for _ in range(250):
        corpus.append(sprinkle(rng, prompt(rng, everything), SPACES, rng.randint(1, 6)))
    pools = [CURLY, LIGATURES, WIDE, CONTROLS, EMOJI_CJK, SPACES]
    for _ in range(400):
        text = prompt(rng, everything)
        for _ in range(rng.randint(2, 4)):
            step = rng.randrange(8)
            if step < 6:
                text = sprinkle(rng, text, pools[step], rng.randint(1, 3))
            elif step == 6:
                text = mojibake(rng, text)
            else:
                text = html_escaped(rng, names, text)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        corpus.append(text)
    return corpus + extra_mojibake(random.Random(SEED * 1000 + 1))


EXTRA_POOL = (
    [chr(c) for c in range(0xC0, 0x180)] + list("ΑΒΓΔΕΖΗΘαβγδεζηθλμπσςωάέήίόύώ")
    + list("АБВГДЕЖЗИКЛМНОПабвгдежзиклмнопрстуфхцчшщъыьэюяёЁђћ") + list("€£¥©®™°±²³µ¶·¼½¾×÷")
    + list("–—‘’“”„†‡•…‰‹›") + ["😀", "🍜", "👍🏽", "𝔘", "漢", "字", "한", "ひ", "\xa0", "\u200b"]
)
ALL_CODECS = MOJIBAKE_CODECS + ["sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257"]


def cesu8(text: str) -> bytes:
    """UTF-8, but astral characters as surrogate pairs (CESU-8) and U+0000 as C0 80 (Java)."""
    out = b""
    for c in text:
        if c == "\0":
            out += b"\xc0\x80"
        elif ord(c) > 0xFFFF:
            v = ord(c) - 0x10000
            pair = chr(0xD800 + (v >> 10)) + chr(0xDC00 + (v & 0x3FF))
            out += pair.encode("utf-8", "surrogatepass")
        else:
            out += c.encode("utf-8")
    return out


def extra_mojibake(rng: random.Random) -> list[str]:
    """Mojibake the main corpus has little of, for ftfy's less common repair paths."""
    out = []
    for i in range(200):
        words = ["".join(rng.choice(EXTRA_POOL) for _ in range(rng.randint(1, 6)))
                 for _ in range(rng.randint(1, 4))]
        text = " ".join(w if rng.random() < 0.6 else prompt(rng, HARD) for w in words)
        kind = i % 8
        codec = rng.choice(ALL_CODECS)
        if kind == 0:
            out.append(mojibake(rng, text))
        elif kind == 1:
            out.append(text.encode("utf-8").decode("windows-1252", errors="replace"))
        elif kind == 2:
            bad = text.encode("utf-8").decode(rng.choice(["latin-1", "sloppy-windows-1252"]))
            out.append(bad.replace("\xa0", " "))
        elif kind == 3:
            extra = rng.choice(["😀", "🍜", "𝔘", "\0", "👍🏽"])
            raw = cesu8(sprinkle(rng, text, [extra], rng.randint(1, 2)))
            out.append(raw.decode(rng.choice(["latin-1", "sloppy-windows-1252"])))
        elif kind == 4:
            bad = text.encode("utf-8").decode(rng.choice(["latin-1", "sloppy-windows-1252"]))
            out.append(prompt(rng, HARD) + " " + bad + " " + rng.choice(HARD))
        elif kind == 5:
            try:
                out.append(text.encode("utf-8").decode(codec))
            except UnicodeDecodeError:
                out.append(text.encode("utf-8").decode("latin-1"))
        elif kind == 6:
            lines = [mojibake(rng, prompt(rng, HARD)) for _ in range(rng.randint(2, 3))]
            out.append(rng.choice(["\n", "\r\n", "\n<b>"]).join(lines))
        else:
            out.append(sprinkle(rng, mojibake(rng, text), CONTROLS[-40:], rng.randint(1, 3)))
    # One string through each encoding, in letters that tell the encodings apart.
    for codec in ALL_CODECS + ["iso-8859-2"]:
        text = rng.choice(["Москва", "Ελλάδα", "İstanbul Ğ", "Łódź"]) + " " + rng.choice(HARD)
        try:
            out.append(text.encode("utf-8").decode(codec))
        except UnicodeDecodeError:
            out.append(text.encode("utf-8").decode("latin-1"))
    return out


def step_kinds(plan: list[tuple[str, str]]) -> set[str]:
    """The kinds of step one repair plan takes: `encode:<encoding>`, `transcode:<fix>`,
    `decode:<codec>`, `apply:decode_inconsistent_utf8`."""
    return {f"{op}:{name}" for op, name in plan}


def encoding_step_cases(texts: list[str]) -> list[dict]:
    """Up to four strings for each kind of step fix_encoding_and_explain takes on the corpus."""
    picked: dict[str, list[dict]] = {}
    for text in texts:
        result = ftfy.fix_encoding_and_explain(text)
        for kind in sorted(step_kinds(result.explanation)):
            cases = picked.setdefault(kind, [])
            if len(cases) < 4 and all(c["text"] != text for c in cases):
                cases.append({"text": text, "fixed": ftfy.fix_encoding(text),
                              "plan": [list(step) for step in result.explanation]})
    return [dict(kind=k, **c) for k, cases in sorted(picked.items()) for c in cases]


def unescape_corpus() -> list[str]:
    names = sorted(html.entities.html5)
    out = [f"x&{n}y" for n in names]
    out += [f"&{n.rstrip(';')}" for n in names if n.endswith(";")]
    for i in range(0, len(NUMERIC_POINTS), 8):
        group = NUMERIC_POINTS[i : i + 8]
        out.append("".join(f"<&#{p};>" for p in group))
        out.append("".join(f"<&#x{p:X}>" for p in group))
    return out


OPENAI_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def openai_tokenizer() -> SimpleTokenizer:
    """OpenAI's `clip.simple_tokenizer.SimpleTokenizer`: open_clip's copy of it, whose only change
    is the names of the special tokens (`<start_of_text>` for OpenAI's `<|startoftext|>`), which
    matter when a prompt spells one out. Renamed back here, ids unchanged."""
    st = SimpleTokenizer()
    for ours, theirs in OPENAI_SPECIALS.items():
        st.encoder[theirs] = st.encoder.pop(ours)
        del st.cache[ours]
        st.cache[theirs] = theirs
    st.pat = re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        re.IGNORECASE,
    )
    return st


def check_vocab(tok: CLIPTokenizerFast, st: SimpleTokenizer) -> None:
    """The bundled tokenizer.json is OpenAI's 49408-token BPE: ids are directly comparable."""
    vocab = tok.get_vocab()
    assert len(vocab) == 49408, len(vocab)
    assert vocab == st.encoder, "weights/tiny-clip/tokenizer.json is not OpenAI's vocabulary"


def main() -> None:
    tok = CLIPTokenizerFast.from_pretrained(str(TINY_CLIP))
    st = openai_tokenizer()
    check_vocab(tok, st)
    stock = SimpleTokenizer()
    cases = []
    bpe_after_clean_differs = 0
    for text in generate_corpus():
        clean = _clean_lower(text)
        openai = [SOT] + st.encode(text) + [EOT]
        if not any(s in clean for s in list(OPENAI_SPECIALS) + list(OPENAI_SPECIALS.values())):
            assert [SOT] + stock.encode(text) + [EOT] == openai, text
        # fedclip's `openai` tokenizer: the cleaning, then the same BPE through tokenizer.json.
        if tok(clean, truncation=False)["input_ids"] != openai:
            bpe_after_clean_differs += 1
        cases.append({
            "text": text,
            "unescape": html.unescape(text),
            "ftfy": ftfy.fix_text(text),
            "clean": clean,
            "openai": openai,
            "hf": tok(text, truncation=False)["input_ids"],
        })
    unescape_cases = [{
        "text": t,
        "unescape": html.unescape(t),
        "ftfy": ftfy.fix_text(t),
        "clean": _clean_lower(t),
        "openai": [SOT] + st.encode(t) + [EOT],
    } for t in unescape_corpus()]
    steps = encoding_step_cases([c["text"] for c in cases])
    STEPS_OUT.write_text(json.dumps({
        "made_by": "tests/reference/make_tokenizer_fixtures.py",
        "ftfy": ftfy.__version__,
        "cases": steps,
    }, ensure_ascii=False, indent=1) + "\n")
    doc = {
        "made_by": "tests/reference/make_tokenizer_fixtures.py",
        "versions": {
            "python": sys.version.split()[0],
            "ftfy": ftfy.__version__,
            "open_clip": open_clip.__version__,
            "transformers": transformers.__version__,
        },
        "cases": cases,
        "unescape_cases": unescape_cases,
    }
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(body)
    OUT.write_bytes(buf.getvalue())
    changed = sum(c["clean"] != " ".join(c["text"].split()).lower() for c in cases)
    print(f"wrote {OUT.relative_to(REPO)}: {len(cases)} cases ({changed} changed by cleaning, "
          f"{sum(c['openai'] != c['hf'] for c in cases)} with other ids than CLIPTokenizerFast), "
          f"{len(unescape_cases)} unescape cases, {len(buf.getvalue()) // 1024} KiB")
    print(f"wrote {STEPS_OUT.relative_to(REPO)}: {len(steps)} cases of "
          f"{len({c['kind'] for c in steps})} step kinds")
    print(f"tokenizer.json on the cleaned text differs from SimpleTokenizer on "
          f"{bpe_after_clean_differs} cases")


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()
    main()
