//! Image preprocessing against the reference (torchvision 0.29 + Pillow 13 running OpenAI
//! CLIP's `_transform`); fixtures from tests/reference/make_preprocess_fixtures.py.
//!
//! `cargo test --release --test preprocess -- --nocapture` prints the measured differences.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedclip::preprocess::{
    self, Image, Mode, Pixels, PreprocessConfig, Resample, decode_bytes, preprocess_bytes,
    preprocess_file, resize_shortest_edge,
};
use safetensors::SafeTensors;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode_file(path: &Path) -> Image {
    decode_bytes(&read(path), &path.display().to_string()).unwrap()
}

/// Samples of `image` widened to i32, plus the channel count.
fn samples(image: &Image) -> (Vec<i32>, usize) {
    let v = match &image.pixels {
        Pixels::U8(p) => p.iter().map(|&x| x as i32).collect(),
        Pixels::U16(p) => p.iter().map(|&x| x as i32).collect(),
    };
    (v, image.mode.channels())
}

/// Compare our resized image with Pillow's (saved as PNG). Returns (max abs diff, #different).
fn compare_resized(ours: &Image, expected: &Image, label: &str) -> (i32, usize) {
    assert_eq!(
        (ours.width, ours.height),
        (expected.width, expected.height),
        "{label}: resized size"
    );
    let (a, ca) = samples(ours);
    let (b, cb) = samples(expected);
    // Channel mapping between our mode and the PNG Pillow could save.
    let pairs: Vec<(usize, usize)> = match (ca, cb) {
        (x, y) if x == y => (0..x).map(|c| (c, c)).collect(),
        // 16-bit LA: Pillow opens it as RGBA (R = G = B = L); we keep LA.
        (2, 4) => vec![(0, 0), (0, 1), (0, 2), (1, 3)],
        _ => panic!("{label}: {ca} vs {cb} channels"),
    };
    let mut max = 0;
    let mut count = 0;
    for (pa, pb) in a.chunks_exact(ca).zip(b.chunks_exact(cb)) {
        let d = pairs
            .iter()
            .map(|&(i, j)| (pa[i] - pb[j]).abs())
            .max()
            .unwrap();
        max = max.max(d);
        count += (d != 0) as usize;
    }
    (max, count)
}

#[derive(Default)]
struct ClassStats {
    cases: usize,
    tensor_max: f32,
    resized_max: i32,
    resized_diff_pixels: usize,
    resized_pixels: usize,
    tensor_bit_exact: usize,
}

const MEAN: [f32; 3] = preprocess::OPENAI_MEAN;
const STD: [f32; 3] = preprocess::OPENAI_STD;

#[test]
fn matches_torchvision_reference() {
    let dir = fixtures();
    let manifest: Vec<Value> =
        serde_json::from_slice(&read(&dir.join("manifest.json"))).expect("manifest.json");
    let stored_bytes = read(&dir.join("expected.safetensors"));
    let stored = SafeTensors::deserialize(&stored_bytes).unwrap();
    let mut stats: BTreeMap<String, ClassStats> = BTreeMap::new();
    let mut stored_checked = 0;

    println!(
        "{:<42} {:>4} {:>5} {:>10} {:>14} {:>12}",
        "image", "n", "mode", "resize max", "resize pixels≠", "tensor max"
    );
    for case in &manifest {
        let file = case["file"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let class = case["class"].as_str().unwrap().to_string();
        let label = format!("{file}@{n}");
        let bytes = read(&dir.join("images").join(file));
        let cfg = PreprocessConfig::openai(n);

        // Decoded mode = Pillow's mode.
        let decoded = decode_bytes(&bytes, file).unwrap();
        let pil_mode = case["mode"].as_str().unwrap();
        let expect_mode = if pil_mode == "RGBA" && decoded.mode == Mode::La {
            "LA" // 16-bit LA, see compare_resized
        } else {
            pil_mode
        };
        assert_eq!(decoded.mode.pil_name(), expect_mode, "{label}: mode");

        // Resize output vs Pillow.
        let resized = resize_shortest_edge(&decoded, n, Resample::Bicubic);
        let expected_resized = decode_file(
            &dir.join("expected")
                .join(case["resized_png"].as_str().unwrap()),
        );
        let (rmax, rcount) = compare_resized(&resized, &expected_resized, &label);

        // Final tensor vs the reference's RGB crop (units of 1/255 after undoing Normalize).
        let ours = preprocess_bytes(&bytes, file, &cfg).unwrap();
        assert_eq!(ours.len(), cfg.output_len(), "{label}: tensor length");
        let rgb = decode_file(&dir.join("expected").join(case["rgb_png"].as_str().unwrap()));
        assert_eq!(rgb.mode, Mode::Rgb);
        assert_eq!((rgb.width, rgb.height), (n, n));
        let Pixels::U8(rgb) = rgb.pixels else {
            unreachable!()
        };
        let plane = n * n;
        let mut tmax = 0f32;
        let mut exact = true;
        for c in 0..3 {
            for i in 0..plane {
                let x = ours[c * plane + i];
                let v = rgb[i * 3 + c];
                let reference = (v as f32 / 255.0 - MEAN[c]) / STD[c];
                exact &= x.to_bits() == reference.to_bits();
                let undone = (x * STD[c] + MEAN[c]) * 255.0;
                tmax = tmax.max((undone - v as f32).abs());
            }
        }
        // Stored float32 tensors from torchvision itself.
        let key = format!("{file}@{n}");
        if let Ok(t) = stored.tensor(&key) {
            assert_eq!(t.shape(), [3, n, n], "{label}");
            let reference: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            // Our rebuilt reference equals torchvision's output (checked by the generator)...
            for c in 0..3 {
                for i in 0..plane {
                    let v = rgb[i * 3 + c];
                    let rebuilt = (v as f32 / 255.0 - MEAN[c]) / STD[c];
                    assert_eq!(
                        rebuilt.to_bits(),
                        reference[c * plane + i].to_bits(),
                        "{label}"
                    );
                }
            }
            // ...and so does ours.
            assert!(
                ours == reference,
                "{label}: tensor differs from torchvision's"
            );
            stored_checked += 1;
        }

        println!(
            "{:<42} {:>4} {:>5} {:>10} {:>14} {:>12.4}",
            file, n, pil_mode, rmax, rcount, tmax
        );
        let s = stats.entry(class.clone()).or_default();
        s.cases += 1;
        s.tensor_max = s.tensor_max.max(tmax);
        s.resized_max = s.resized_max.max(rmax);
        s.resized_diff_pixels += rcount;
        s.resized_pixels += resized.width * resized.height;
        s.tensor_bit_exact += exact as usize;

        // Decoding (PNG and JPEG alike), the resampler and the whole pipeline are bit-exact.
        assert_eq!(rmax, 0, "{label}: resize output differs from Pillow's");
        assert!(exact, "{label}: tensor not bit-identical to the reference");
    }
    assert!(
        stored_checked >= 5,
        "stored reference tensors checked: {stored_checked}"
    );

    println!(
        "\nper class (tensor max = max |ours - reference| after undoing Normalize, in 1/255):"
    );
    let mut overall = 0f32;
    for (class, s) in &stats {
        println!(
            "  {class:<15} {:>2} cases: tensor max {:.4}/255, bit-exact tensors {}/{}, \
             resize max {} ({} of {} pixels differ)",
            s.cases,
            s.tensor_max,
            s.tensor_bit_exact,
            s.cases,
            s.resized_max,
            s.resized_diff_pixels,
            s.resized_pixels
        );
        overall = overall.max(s.tensor_max);
    }
    println!("  overall max {overall:.4}/255");

    // Speed (one thread, release build): the 227x227 PACS JPEGs -> 3x224x224.
    let pacs: Vec<Vec<u8>> = manifest
        .iter()
        .filter(|c| c["class"] == "real_jpg" && c["n"] == 224)
        .map(|c| read(&dir.join("images").join(c["file"].as_str().unwrap())))
        .collect();
    let cfg = PreprocessConfig::openai(224);
    let start = std::time::Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        for b in &pacs {
            std::hint::black_box(preprocess_bytes(b, "x", &cfg).unwrap());
        }
    }
    let per_image = start.elapsed().as_secs_f64() * 1e3 / (rounds * pacs.len()) as f64;
    println!("  speed: {per_image:.2} ms per 227x227 JPEG (decode + resize + crop + normalise)");
    assert!(
        overall <= 1.0 + 1e-3,
        "max difference {overall}/255 exceeds 1/255"
    );
}

#[test]
fn truncated_jpeg_is_an_error_naming_the_file() {
    let bytes = read(&fixtures().join("images/pacs_art_painting_dog_pic_001.jpg"));
    // Pillow 13 raises "image file is truncated" for every one of these cuts, even the one
    // that only loses the final EOI marker.
    for cut in [
        bytes.len() / 2,
        bytes.len() - 1,
        bytes.len() - 2,
        bytes.len() - 10,
        600,
        3,
    ] {
        match preprocess_bytes(&bytes[..cut], "cut.jpg", &PreprocessConfig::openai(30)) {
            Ok(_) => panic!("JPEG cut to {cut} bytes decoded"),
            Err(err) => {
                let msg = format!("{err:#}");
                assert!(msg.contains("cut.jpg"), "{msg}");
            }
        }
    }
    // Corrupted entropy-coded data (not just truncation) is an error or an image, never a
    // panic.
    let mut flipped = bytes.clone();
    for i in (bytes.len() / 3..bytes.len() - 2).step_by(97) {
        flipped[i] ^= 0x5A;
    }
    let _ = preprocess_bytes(&flipped, "flipped.jpg", &PreprocessConfig::openai(30));
}

#[test]
fn corrupt_or_truncated_png_is_an_error() {
    let bytes = read(&fixtures().join("images/rgba_250x230.png"));
    let cut = &bytes[..bytes.len() * 2 / 3];
    let msg = format!(
        "{:#}",
        preprocess_bytes(cut, "cut.png", &PreprocessConfig::openai(30)).unwrap_err()
    );
    assert!(msg.contains("cut.png"), "{msg}");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xFF; // breaks the IDAT CRC / zlib stream
    assert!(preprocess_bytes(&flipped, "flipped.png", &PreprocessConfig::openai(30)).is_err());
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fedclip-preprocess-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn non_image_files_are_errors_naming_the_file() {
    let dir = temp_dir("nonimage");
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "this is not a picture\n").unwrap();
    let msg = format!(
        "{:#}",
        preprocess_file(&text, &PreprocessConfig::openai(224)).unwrap_err()
    );
    assert!(
        msg.contains("notes.jpg") && msg.contains("cannot decode image"),
        "{msg}"
    );

    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(preprocess_file(&empty, &PreprocessConfig::openai(224)).is_err());

    let missing = dir.join("missing.jpg");
    let msg = format!(
        "{:#}",
        preprocess_file(&missing, &PreprocessConfig::openai(224)).unwrap_err()
    );
    assert!(msg.contains("missing.jpg"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn file_and_bytes_paths_agree() {
    let path = fixtures().join("images/pacs_sketch_house_8801.png");
    let cfg = PreprocessConfig::openai(224);
    let a = preprocess_file(&path, &cfg).unwrap();
    let b = preprocess_bytes(&read(&path), "x", &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 3 * 224 * 224);
}

#[test]
fn preprocessor_config_parsing() {
    // Absent file: OpenAI defaults at the model's size.
    let dir = temp_dir("config");
    let cfg = PreprocessConfig::from_model_dir(&dir, 30).unwrap();
    assert_eq!(cfg, PreprocessConfig::openai(30));

    // Hugging Face CLIP style (dict sizes).
    let hf = r#"{
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true,
        "do_rescale": true, "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 224}
    }"#;
    std::fs::write(dir.join("preprocessor_config.json"), hf).unwrap();
    let cfg = PreprocessConfig::from_model_dir(&dir, 30).unwrap();
    assert_eq!(cfg, PreprocessConfig::openai(224));

    // Older style: plain integers; bilinear; other statistics.
    let old = r#"{"size": 256, "crop_size": 240, "resample": 2,
                  "image_mean": [0.5, 0.5, 0.5], "image_std": 0.5, "do_normalize": false}"#;
    let cfg = PreprocessConfig::from_json_str(old, 30).unwrap();
    assert_eq!(cfg.resize_shortest, 256);
    assert_eq!((cfg.crop_height, cfg.crop_width), (240, 240));
    assert_eq!(cfg.resample, Resample::Bilinear);
    assert_eq!(cfg.mean, [0.5; 3]);
    assert_eq!(cfg.std, [0.5; 3]);
    assert!(!cfg.do_normalize);
    assert_ne!(
        cfg.fingerprint(),
        PreprocessConfig::openai(224).fingerprint()
    );
    assert_eq!(
        PreprocessConfig::openai(224).fingerprint(),
        PreprocessConfig::openai(224).fingerprint()
    );

    // Errors name the file and the field.
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 224}, "resample": 9}"#,
    )
    .unwrap();
    let msg = format!(
        "{:#}",
        PreprocessConfig::from_model_dir(&dir, 224).unwrap_err()
    );
    assert!(
        msg.contains("preprocessor_config.json") && msg.contains("`resample`"),
        "{msg}"
    );
    for (bad, field) in [
        (r#"{"resample": "bicubic"}"#, "`resample`"),
        (r#"{"size": {"height": 224, "width": 224}}"#, "`size`"),
        (r#"{"size": -3}"#, "`size`"),
        (r#"{"crop_size": {"height": 224}}"#, "`crop_size.width`"),
        (r#"{"image_mean": [0.5, 0.5]}"#, "`image_mean`"),
        (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "`image_std`"),
        (r#"{"do_resize": "yes"}"#, "`do_resize`"),
        (r#"{"rescale_factor": "x"}"#, "`rescale_factor`"),
    ] {
        let msg = format!(
            "{:#}",
            PreprocessConfig::from_json_str(bad, 224).unwrap_err()
        );
        assert!(msg.contains(field), "{bad}: {msg}");
    }
    std::fs::write(dir.join("preprocessor_config.json"), "{not json").unwrap();
    assert!(PreprocessConfig::from_model_dir(&dir, 224).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn non_default_settings_give_the_configured_shape() {
    let bytes = read(&fixtures().join("images/rgb_301x210.png"));
    let mut cfg = PreprocessConfig::openai(30);
    cfg.crop_height = 20;
    cfg.crop_width = 40; // the resized image is 43x30: a plain crop
    cfg.resample = Resample::Bilinear;
    let out = preprocess_bytes(&bytes, "x", &cfg).unwrap();
    assert_eq!(out.len(), 3 * 20 * 40);
    // Crop wider than the image: 3 columns of zero padding on the left (black).
    cfg.crop_width = 50;
    let out = preprocess_bytes(&bytes, "x", &cfg).unwrap();
    assert_eq!(out.len(), 3 * 20 * 50);
    let black = (0.0 - MEAN[0]) / STD[0];
    assert_eq!(out[0], black); // left padding column, first row, red plane
    // No crop: the resized image must already have the output size.
    cfg.do_center_crop = false;
    assert!(preprocess_bytes(&bytes, "x", &cfg).is_err());
}

/// Randomly damaged copies of every fixture (bit flips, random bytes, fill bytes, cuts):
/// each must decode or fail with an error, never panic.
#[test]
fn damaged_files_never_panic() {
    let dir = fixtures().join("images");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cfg = PreprocessConfig::openai(30);
    let (mut ok, mut err) = (0, 0);
    for f in &files {
        let orig = read(f);
        for _ in 0..40 {
            let mut b = orig.clone();
            for _ in 0..1 + rnd() % 8 {
                let i = (rnd() as usize) % b.len();
                match rnd() % 5 {
                    0 => b[i] ^= 1 << (rnd() % 8),
                    1 => b[i] = rnd() as u8,
                    2 => b[i] = b[i].wrapping_add(1),
                    3 => b[i] = 0xFF,
                    _ => b.truncate(i.max(1)),
                }
            }
            match preprocess_bytes(&b, "damaged", &cfg) {
                Ok(t) => {
                    assert_eq!(t.len(), cfg.output_len());
                    ok += 1
                }
                Err(e) => {
                    assert!(format!("{e:#}").contains("damaged"));
                    err += 1
                }
            }
        }
    }
    println!("damaged files: {ok} decoded, {err} rejected with an error");
}
