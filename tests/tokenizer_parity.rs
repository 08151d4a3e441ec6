//! Tokenizer parity with Python on tests/fixtures/tokenizer_corpus.json.gz (made by
//! tests/reference/make_tokenizer_fixtures.py): each cleaning step equals its Python original
//! (html.unescape, ftfy 6.3's fix_text, open_clip's whole cleaning), `--tokenizer openai` gives
//! OpenAI's `clip.tokenize` ids and `--tokenizer hf` those of `CLIPTokenizerFast`. A failure
//! names the first string that differs. Every string must match; there is no list of
//! exceptions.

use fedclip::tokenizer::clean::{fix_text, html_unescape, openai_clean};
use fedclip::tokenizer::ftfy::fix_encoding;
use fedclip::tokenizer::{ClipTokenizer, TokenizerKind};
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

#[derive(Deserialize)]
struct Corpus {
    cases: Vec<Case>,
    unescape_cases: Vec<UnescapeCase>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    unescape: String,
    ftfy: String,
    clean: String,
    openai: Vec<u32>,
    hf: Vec<u32>,
}

/// An entity case: the fields of [`Case`] but `hf`.
#[derive(Deserialize)]
struct UnescapeCase {
    text: String,
    unescape: String,
    ftfy: String,
    clean: String,
    openai: Vec<u32>,
}

/// tests/fixtures/ftfy_encoding_steps.json: corpus strings by the kind of step ftfy's
/// encoding repair takes on them.
#[derive(Deserialize)]
struct EncodingSteps {
    cases: Vec<EncodingStep>,
}

#[derive(Deserialize)]
struct EncodingStep {
    kind: String,
    text: String,
    fixed: String,
}

fn corpus() -> Corpus {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_corpus.json.gz");
    let file = std::fs::File::open(&path).expect("tokenizer corpus fixture");
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("gzip JSON");
    serde_json::from_str(&json).expect("corpus JSON")
}

fn tokenizer(kind: TokenizerKind) -> ClipTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-clip");
    // A context far past every case: the untruncated ids are compared.
    ClipTokenizer::load(&dir, 1 << 20, kind).unwrap()
}

/// Checks `got(input) == want` on every pair; panics naming the first input that differs,
/// and how many do.
fn check<'a, T: PartialEq + std::fmt::Debug>(
    step: &str,
    pairs: impl Iterator<Item = (&'a str, T)>,
    got: impl Fn(&str) -> T,
) {
    let (mut total, mut failures, mut first) = (0, 0, None);
    for (input, want) in pairs {
        total += 1;
        let value = got(input);
        if value != want {
            failures += 1;
            first.get_or_insert(format!("{input:?}: got {value:?}, Python {want:?}"));
        }
    }
    assert!(total > 0, "{step}: no cases");
    if let Some(first) = first {
        panic!("{step}: {failures} of {total} strings differ; the first is {first}");
    }
}

#[test]
fn html_unescape_equals_python() {
    let c = corpus();
    let pairs = c
        .cases
        .iter()
        .map(|x| (x.text.as_str(), x.unescape.clone()));
    check("html.unescape", pairs, html_unescape);
    let pairs = c
        .unescape_cases
        .iter()
        .map(|x| (x.text.as_str(), x.unescape.clone()));
    check("html.unescape (entity table)", pairs, html_unescape);
}

#[test]
fn fix_text_equals_ftfy() {
    let c = corpus();
    let pairs = c.cases.iter().map(|x| (x.text.as_str(), x.ftfy.clone()));
    check("ftfy.fix_text", pairs, fix_text);
    let pairs = c
        .unescape_cases
        .iter()
        .map(|x| (x.text.as_str(), x.ftfy.clone()));
    check("ftfy.fix_text (entity table)", pairs, fix_text);
}

#[test]
fn cleaning_equals_open_clip() {
    let c = corpus();
    let pairs = c.cases.iter().map(|x| (x.text.as_str(), x.clean.clone()));
    check("open_clip cleaning", pairs, openai_clean);
    let pairs = c
        .unescape_cases
        .iter()
        .map(|x| (x.text.as_str(), x.clean.clone()));
    check("open_clip cleaning (entity table)", pairs, openai_clean);
}

#[test]
fn openai_ids_equal_clip_tokenize() {
    let c = corpus();
    let tok = tokenizer(TokenizerKind::Openai);
    let pairs = c.cases.iter().map(|x| (x.text.as_str(), x.openai.clone()));
    check("--tokenizer openai ids", pairs, |t| {
        tok.encode(t, false).unwrap()
    });
    let pairs = c
        .unescape_cases
        .iter()
        .map(|x| (x.text.as_str(), x.openai.clone()));
    check("--tokenizer openai ids (entity table)", pairs, |t| {
        tok.encode(t, false).unwrap()
    });
}

/// Every kind of step of ftfy's encoding repair, on strings that take it: `fix_encoding`
/// alone equals Python's. The fixture must cover each kind, so a regenerated one cannot
/// quietly lose a path.
#[test]
fn fix_encoding_paths_equal_ftfy() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ftfy_encoding_steps.json");
    let steps: EncodingSteps =
        serde_json::from_str(&std::fs::read_to_string(path).expect("steps fixture")).unwrap();
    let encodings = [
        "latin-1",
        "sloppy-windows-1252",
        "sloppy-windows-1251",
        "sloppy-windows-1250",
        "sloppy-windows-1253",
        "sloppy-windows-1254",
        "sloppy-windows-1257",
        "iso-8859-2",
        "macroman",
        "cp437",
    ];
    let others = [
        "transcode:restore_byte_a0",
        "transcode:replace_lossy_sequences",
        "transcode:fix_c1_controls",
        "decode:utf-8",
        "decode:utf-8-variants",
        "decode:windows-1252",
        "apply:decode_inconsistent_utf8",
    ];
    let required = encodings.iter().map(|e| format!("encode:{e}"));
    for kind in required.chain(others.iter().map(|k| k.to_string())) {
        assert!(
            steps.cases.iter().any(|c| c.kind == kind),
            "no fixture case takes {kind}"
        );
    }
    for kind in others
        .iter()
        .map(|k| k.to_string())
        .chain(encodings.iter().map(|e| format!("encode:{e}")))
    {
        let pairs = steps
            .cases
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| (c.text.as_str(), c.fixed.clone()));
        check(&format!("ftfy.fix_encoding ({kind})"), pairs, fix_encoding);
    }
}

#[test]
fn hf_ids_equal_clip_tokenizer_fast() {
    let c = corpus();
    let tok = tokenizer(TokenizerKind::Hf);
    let pairs = c.cases.iter().map(|x| (x.text.as_str(), x.hf.clone()));
    check("--tokenizer hf ids", pairs, |t| {
        tok.encode(t, false).unwrap()
    });
}

#[test]
fn the_corpus_exercises_the_difference() {
    // Guards the fixture itself: most strings must clean to something else than a plain
    // whitespace collapse, and the two tokenizers must disagree on many of them.
    let c = corpus();
    let differ = c.cases.iter().filter(|x| x.openai != x.hf).count();
    assert!(
        c.cases.len() >= 3000 && differ >= 1000,
        "{} cases, {differ} differ",
        c.cases.len()
    );
}

/// `fedclip embed --tokenizer`: the choice reaches the text tower. A prompt that cleaning
/// changes gets other features under `hf`; one it leaves alone gets the same.
#[test]
fn embed_passes_the_tokenizer_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a photo of a dog\nrock &amp; roll’s “best”\n").unwrap();
    let embed = |kind: &str| -> Vec<f32> {
        let out = tmp.path().join(format!("{kind}.safetensors"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fedclip"))
            .args(["embed", "--device", "cpu", "--tokenizer", kind, "--texts"])
            .arg(&prompts)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("text_embeds").unwrap();
        bytemuck::pod_collect_to_vec(t.data())
    };
    let (openai, hf) = (embed("openai"), embed("hf"));
    let dim = openai.len() / 2;
    assert_eq!(openai[..dim], hf[..dim], "a plain prompt must not change");
    assert_ne!(openai[dim..], hf[dim..], "the cleaned prompt must change");
}
