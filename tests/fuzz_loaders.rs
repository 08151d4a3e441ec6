//! Loader fuzzing: a seeded mutator over the files fedclip reads from users (safetensors
//! header and data, config.json, tokenizer.json, preprocessor_config.json, PNG, JPEG, and
//! image sizes whose resize is far larger than the source). Every case must load or fail with
//! an error: no panic, no abort, bounded memory (the child running the cases has a 4 GiB
//! address-space limit, and images go through the `--max-image-pixels` check) and bounded
//! time (the whole target is killed after a deadline, naming the case it was on).
//!
//! `FEDCLIP_FUZZ_CASES=N` (default 300 per target) and `FEDCLIP_FUZZ_SEED=S` (default 0)
//! run longer or different campaigns; a failure names the seed and case to replay.

mod common;

use common::repo;
use fedclip::model::ClipModel;
use fedclip::preprocess::{PreprocessConfig, preprocess_bytes};
use fedclip::tokenizer::ClipTokenizer;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "FEDCLIP_FUZZ_CHILD";
/// Deadline for one target's whole campaign (a hang detector, not a benchmark).
const SECONDS_PER_CASE: u64 = 2;

fn cases() -> u64 {
    std::env::var("FEDCLIP_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn base_seed() -> u64 {
    std::env::var("FEDCLIP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// SplitMix64: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte-level mutations, `focus` bytes from the start getting most of them (a header).
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, focus: usize) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFF, 0xFE, b'9', b'"'];
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            data.push(0);
        }
        let span = if rng.below(4) > 0 {
            focus.min(data.len())
        } else {
            data.len()
        };
        let at = rng.below(span);
        match rng.below(7) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => data[at] = rng.next() as u8,
            3 => data.truncate(at),
            4 => {
                let len = 1 + rng.below(16);
                let extra: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                data.splice(at..at, extra);
            }
            5 => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            _ => {
                // Copy a run of bytes elsewhere (duplicated markers, chunks, keys).
                let end = (at + 1 + rng.below(32)).min(data.len());
                let piece = data[at..end].to_vec();
                let to = rng.below(data.len());
                data.splice(to..to, piece);
            }
        }
    }
}

/// A JSON value that breaks assumptions: huge, negative, fractional, wrong type, empty.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::from(-1),
        1 => Value::from(0),
        2 => Value::from(u64::MAX),
        3 => serde_json::json!(1e308),
        4 => serde_json::json!(0.5),
        5 => Value::from("x"),
        6 => Value::Null,
        7 => serde_json::json!([]),
        8 => serde_json::json!({}),
        _ => Value::from(1 << (rng.below(40))),
    }
}

/// Structure-aware JSON mutation: replace, delete or duplicate a random node.
fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() && (depth < 4 || rng.below(2) == 0) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            match rng.below(6) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(key.clone(), odd_value(rng));
                }
                _ => mutate_json(rng, map.get_mut(key).unwrap(), depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(3) > 0 => {
            let i = rng.below(items.len());
            match rng.below(4) {
                0 => {
                    items.remove(i);
                }
                1 => items[i] = odd_value(rng),
                _ => mutate_json(rng, &mut items[i], depth + 1),
            }
        }
        other => *other = odd_value(rng),
    }
}

fn mutate_json_text(rng: &mut Rng, text: &str) -> Vec<u8> {
    if rng.below(3) == 0 {
        let mut bytes = text.as_bytes().to_vec();
        mutate_bytes(rng, &mut bytes, usize::MAX);
        return bytes;
    }
    let mut v: Value = serde_json::from_str(text).unwrap();
    for _ in 0..1 + rng.below(3) {
        mutate_json(rng, &mut v, 0);
    }
    serde_json::to_vec(&v).unwrap()
}

/// Runs `body` in a child process (this test binary, filtered to `test`), so an abort or
/// a hang is caught and named rather than taking the test harness down.
fn in_child(test: &str, body: impl Fn(u64, &mut Rng)) {
    let n = cases();
    if std::env::var_os(CHILD).is_some() {
        limit_memory(4 << 30);
        for case in 0..n {
            let seed = base_seed().wrapping_mul(1_000_003).wrapping_add(case);
            println!("case {case} seed {seed}");
            std::io::stdout().flush().unwrap();
            let mut rng = Rng(seed ^ fxhash(test));
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(case, &mut rng)));
            if caught.is_err() {
                println!("PANIC in case {case} seed {seed}");
                std::process::exit(3);
            }
        }
        println!("done");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(tmp.path().join("err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30 + SECONDS_PER_CASE * n);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let last = out.lines().rfind(|l| l.starts_with("case ")).unwrap_or("");
    let err = std::fs::read_to_string(tmp.path().join("err")).unwrap_or_default();
    // The panic message (its line and the next), else the end of stderr.
    let at = err
        .find("panicked at")
        .unwrap_or(err.len().saturating_sub(2000));
    let tail: String = err[at..].lines().take(3).collect::<Vec<_>>().join("\n");
    match status {
        None => panic!("{test}: past the deadline at {last} (a hang?)"),
        Some(s) => assert!(
            s.success() && out.contains("\ndone"),
            "{test}: child ended with {s} at {last}:\n{}\n{tail}",
            out.lines().last().unwrap_or("")
        ),
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Caps the child's address space: an allocation past it fails (and aborts), which the
/// parent reports, instead of the machine swapping.
fn limit_memory(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is shared.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    assert_eq!(rc, 0, "setrlimit failed");
}

/// A model directory to mutate, one per child.
fn scratch_model(src: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(repo().join(src)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

/// Loads the model and, when it loads, runs both towers once: mutated data must give an
/// error or numbers, never a panic.
fn load_and_run(dir: &Path) {
    let Ok(model) = ClipModel::load(dir) else {
        return;
    };
    if let Some(v) = &model.vision {
        let pixels = vec![0.1f32; v.pixels_per_image()];
        let _ = v.forward(&pixels, 1, false);
    }
    if let Some(t) = &model.text {
        let ids = [t.config.bos_token_id, 5, t.config.eos_token_id];
        let _ = t.forward(&ids, 1, 3, false);
    }
}

#[test]
fn fuzz_safetensors() {
    let (_tmp, dir) = scratch_model("tests/fixtures/models/tiny-f32");
    let file = dir.join("model.safetensors");
    let original = std::fs::read(&file).unwrap();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    in_child("fuzz_safetensors", |_, rng| {
        let mut bytes = original.clone();
        // Mostly the header (names, dtypes, shapes, offsets), sometimes the data.
        let focus = if rng.below(5) == 0 {
            bytes.len()
        } else {
            header
        };
        mutate_bytes(rng, &mut bytes, focus);
        std::fs::write(&file, &bytes).unwrap();
        load_and_run(&dir);
    });
}

#[test]
fn fuzz_config_json() {
    let (_tmp, dir) = scratch_model("tests/fixtures/models/tiny-f32");
    let file = dir.join("config.json");
    let original = std::fs::read_to_string(&file).unwrap();
    in_child("fuzz_config_json", |_, rng| {
        std::fs::write(&file, mutate_json_text(rng, &original)).unwrap();
        load_and_run(&dir);
    });
}

/// The bundled tokenizer.json cut down to a few hundred tokens and merges, so that one
/// parse costs milliseconds; the structure is the real one.
fn small_tokenizer() -> Value {
    let text = std::fs::read_to_string(repo().join("weights/tiny-clip/tokenizer.json")).unwrap();
    let mut tok: Value = serde_json::from_str(&text).unwrap();
    let model = tok["model"].as_object_mut().unwrap();
    let vocab = model["vocab"].as_object().unwrap();
    let kept: serde_json::Map<String, Value> = vocab
        .iter()
        .filter(|(k, id)| id.as_u64().unwrap() < 400 || k.starts_with("<|"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let parts: Vec<String> = match m {
                Value::String(s) => s.split(' ').map(str::to_string).collect(),
                Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().to_string()).collect(),
                _ => return false,
            };
            parts.len() == 2
                && parts.iter().all(|p| kept.contains_key(p))
                && kept.contains_key(&parts.concat())
        })
        .cloned()
        .collect();
    model.insert("vocab".into(), Value::Object(kept));
    model.insert("merges".into(), Value::Array(merges));
    tok
}

#[test]
fn fuzz_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tokenizer.json");
    let original = serde_json::to_string(&small_tokenizer()).unwrap();
    std::fs::write(&file, &original).unwrap();
    assert!(
        ClipTokenizer::load(tmp.path(), 77, fedclip::tokenizer::TokenizerKind::Openai).is_ok(),
        "the cut-down tokenizer loads"
    );
    in_child("fuzz_tokenizer_json", |_, rng| {
        std::fs::write(&file, mutate_json_text(rng, &original)).unwrap();
        if let Ok(t) =
            ClipTokenizer::load(tmp.path(), 77, fedclip::tokenizer::TokenizerKind::Openai)
        {
            let _ = t.encode("a picture of a dog", false);
            let _ = t.encode(&"dog ".repeat(100), true);
        }
    });
}

fn images(ext: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = [
        "tests/fixtures/preprocess/images",
        "tests/fixtures/images/pacs",
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(repo().join(d)).unwrap())
    .map(|e| e.unwrap().path())
    .filter(|p| p.extension().is_some_and(|e| e == ext))
    .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Decode + preprocess under a 4-Mpixel limit, so memory per case stays small.
fn fuzz_images(test: &str, ext: &str, header: usize) {
    let bases = images(ext);
    assert!(bases.len() >= 3, "{ext} fixtures");
    let mut cfg = PreprocessConfig::openai(30);
    cfg.max_image_pixels = 1 << 22;
    in_child(test, |case, rng| {
        let mut bytes = bases[case as usize % bases.len()].clone();
        mutate_bytes(rng, &mut bytes, header);
        let _ = preprocess_bytes(&bytes, "case", &cfg);
    });
}

#[test]
fn fuzz_png() {
    // IHDR, PLTE, tRNS and the first IDAT sit in the first few hundred bytes.
    fuzz_images("fuzz_png", "png", 400);
}

#[test]
fn fuzz_jpeg() {
    // Markers, quantisation and Huffman tables and the frame header come first.
    fuzz_images("fuzz_jpeg", "jpg", 700);
}

/// `preprocessor_config.json` mutated (sizes up to 2^64, zeros, strings, missing fields),
/// read and checked as `Encoder::preprocess_config` does (`from_model_dir`, then
/// `check_sizes` against the model's image size), then one image preprocessed with it: a
/// crop or resize no image could take must be an error, not an allocation.
#[test]
fn fuzz_preprocessor_config() {
    let (_tmp, dir) = scratch_model("tests/fixtures/models/tiny-f32");
    let file = dir.join("preprocessor_config.json");
    let original = serde_json::json!({
        "size": {"shortest_edge": 30},
        "crop_size": {"height": 30, "width": 30},
        "do_resize": true,
        "do_center_crop": true,
        "do_rescale": true,
        "do_normalize": true,
        "rescale_factor": 1.0 / 255.0,
        "resample": 3,
        "image_mean": [0.48, 0.45, 0.4],
        "image_std": [0.26, 0.26, 0.27]
    })
    .to_string();
    let image = images("jpg").swap_remove(0);
    in_child("fuzz_preprocessor_config", |_, rng| {
        std::fs::write(&file, mutate_json_text(rng, &original)).unwrap();
        let Ok(cfg) = PreprocessConfig::from_model_dir(&dir, 30) else {
            return;
        };
        if cfg.check_sizes(30).is_ok() {
            let _ = preprocess_bytes(&image, "case", &cfg);
        }
    });
}

/// Image sizes that stress the resize: real PNGs and JPEG/PNG headers claiming thin or wide
/// sizes (1..8 pixels by up to 65535), whose resize to the short side is far larger than the
/// source. Under the fuzz limit (4 Mpixel) each must be refused or preprocessed.
#[test]
fn fuzz_resize_sizes() {
    let (pngs, jpegs) = (images("png"), images("jpg"));
    // CLIP's 224: a 1 x 65535 source would become 224 x 14680000 (3.3 GB) without the check.
    let mut cfg = PreprocessConfig::openai(224);
    cfg.max_image_pixels = 1 << 22;
    in_child("fuzz_resize_sizes", |case, rng| {
        let thin = 1 + rng.below(8) as u32;
        let long = 1 + rng.below(65_535) as u32;
        let (w, h) = if rng.below(2) == 0 {
            (thin, long)
        } else {
            (long, thin)
        };
        let bytes = match case % 3 {
            0 => {
                let mut out = Vec::new();
                let mut enc = png::Encoder::new(&mut out, w, h);
                enc.set_color(png::ColorType::Grayscale);
                let mut writer = enc.write_header().unwrap();
                writer
                    .write_image_data(&vec![(case % 256) as u8; (w * h) as usize])
                    .unwrap();
                drop(writer);
                out
            }
            1 => {
                let mut png = pngs[rng.below(pngs.len())].clone();
                png[16..20].copy_from_slice(&w.to_be_bytes());
                png[20..24].copy_from_slice(&h.to_be_bytes());
                png
            }
            _ => {
                let mut jpg = jpegs[rng.below(jpegs.len())].clone();
                if let Some(sof) = jpg.windows(2).position(|m| m == [0xFF, 0xC0]) {
                    jpg[sof + 5..sof + 7].copy_from_slice(&(h.min(65_535) as u16).to_be_bytes());
                    jpg[sof + 7..sof + 9].copy_from_slice(&(w.min(65_535) as u16).to_be_bytes());
                }
                jpg
            }
        };
        let _ = preprocess_bytes(&bytes, "case", &cfg);
    });
}
