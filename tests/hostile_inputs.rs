//! Issue 23 (part A): inputs whose sizes would ask for more memory than exists, files that
//! must not be read (FIFOs, devices, link loops) and outputs that must not be written. Each
//! case ends with an error naming the thing, or the correct outcome, never an abort or a hang.

mod common;

use common::repo;
use fedclip::preprocess::{PreprocessConfig, preprocess_bytes};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the CLI with a time limit (a hang is a failure, not a stuck test), checking it was
/// neither killed by a signal (an abort) nor panicked.
fn fedclip(args: &[&str]) -> Output {
    fedclip_in(None, args)
}

fn fedclip_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("fedclip {args:?} did not end within 120 s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "the CLI panicked: {err}");
    assert!(out.status.code().is_some(), "killed by a signal: {err}");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pacs_jpeg() -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/images/pacs/photo_dog_056_0001.jpg")).unwrap()
}

/// A real, decodable grey PNG of `w × h` pixels (1 × 100000 compresses to a few hundred bytes).
fn thin_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer
            .write_image_data(&vec![128u8; (w * h) as usize])
            .unwrap();
    }
    out
}

/// A real JPEG whose frame header (SOF0) is rewritten to claim `w × h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut jpg = pacs_jpeg();
    let sof = jpg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline JPEG");
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpg
}

#[test]
fn thin_images_are_refused_by_what_the_resize_would_make_of_them() {
    let cfg = PreprocessConfig::openai(224);
    let png = thin_png(1, 100_000);
    assert!(png.len() < 1000, "{} bytes", png.len());
    for (name, bytes, want) in [
        ("thin.png", png, "224x22400000"),
        ("thin.jpg", jpeg_claiming(8, 65_500), "224x1834000"),
        ("wide.jpg", jpeg_claiming(65_500, 8), "1834000x224"),
    ] {
        let t = Instant::now();
        let msg = format!("{:#}", preprocess_bytes(&bytes, name, &cfg).unwrap_err());
        assert!(
            msg.contains(name) && msg.contains(want) && msg.contains("over twice the limit"),
            "{msg}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    // The limit is the source's (--max-image-pixels): a thin image whose resize fits is
    // preprocessed, and refused under a lower limit.
    let thin = thin_png(4, 2000); // resized: 224 x 112000 = 25 Mpixel
    assert_eq!(
        preprocess_bytes(&thin, "t.png", &cfg).unwrap().len(),
        3 * 224 * 224
    );
    let mut low = cfg.clone();
    low.max_image_pixels = 1_000_000;
    let msg = format!("{:#}", preprocess_bytes(&thin, "t.png", &low).unwrap_err());
    assert!(
        msg.contains("224x112000") && msg.contains("1000000"),
        "{msg}"
    );
}

/// A copy of the tiny model with `preprocessor_config.json` set to `json`.
fn model_with_preprocessor(tmp: &Path, json: &str) -> PathBuf {
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo().join("tests/fixtures/models/tiny-f32");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("preprocessor_config.json"), json).unwrap();
    dir
}

fn image_dir(tmp: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = tmp.join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn embed_refuses_thin_images_and_skip_bad_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_dir(
        tmp.path(),
        &[
            ("a_good.jpg", pacs_jpeg()),
            ("b_thin.png", thin_png(1, 100_000)),
            ("c_thin.jpg", jpeg_claiming(8, 65_500)),
        ],
    );
    let out = tmp.path().join("o.safetensors");
    let args = [
        "embed",
        "--device",
        "cpu",
        "--images",
        s(&images),
        "--out",
        s(&out),
    ];
    let o = fedclip(&args);
    let err = stderr(&o);
    assert!(!o.status.success());
    for want in ["b_thin.png", "224x22400000", "c_thin.jpg", "224x1834000"] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    assert!(!out.exists());
    let o = fedclip(&[&args[..], &["--skip-bad"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["skipped"], r#"["b_thin.png","c_thin.jpg"]"#);
}

/// Two domains, two classes, five copies of one image each; `extra` files added to d1/cat.
fn small_dataset(root: &Path, extra: &[(&str, Vec<u8>)]) {
    for d in ["d1", "d2"] {
        for c in ["cat", "dog"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                std::fs::write(dir.join(format!("{i}.jpg")), pacs_jpeg()).unwrap();
            }
        }
    }
    for (name, bytes) in extra {
        std::fs::write(root.join("d1/cat").join(name), bytes).unwrap();
    }
}

fn run_args(tmp: &Path, data: &Path) -> Vec<String> {
    [
        "run",
        "--device",
        "cpu",
        "--rounds",
        "1",
        "--data",
        s(data),
        "--cache-dir",
        s(&tmp.join("cache")),
        "--out",
        s(&tmp.join("out")),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn run(args: &[String], extra: &[&str]) -> Output {
    let all: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    fedclip(&all)
}

#[test]
fn run_refuses_a_thin_image_and_skip_bad_skips_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[("thin.png", thin_png(1, 100_000))]);
    let args = run_args(tmp.path(), &data);
    let o = run(&args, &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("thin.png") && err.contains("224x22400000"),
        "{err}"
    );
    let o = run(&args, &["--skip-bad"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: skipping") && err.contains("thin.png"),
        "{err}"
    );
    let summary = std::fs::read_to_string(tmp.path().join("out/summary.json")).unwrap();
    assert!(summary.contains("d1/cat/thin.png"), "{summary}");
}

#[test]
fn preprocessor_sizes_no_image_could_take_are_refused_before_reading_images() {
    for (json, want) in [
        (
            r#"{"size": {"shortest_edge": 1000000}, "crop_size": 30}"#,
            "1000000x1000000",
        ),
        (r#"{"size": 30, "crop_size": 100000}"#, "100000x100000"),
        (
            r#"{"size": 30, "crop_size": {"height": 30, "width": 100000}}"#,
            "30x100000",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let model = model_with_preprocessor(tmp.path(), json);
        let images = image_dir(tmp.path(), &[("a.jpg", pacs_jpeg())]);
        let out = tmp.path().join("o.safetensors");
        let t = Instant::now();
        let o = fedclip(&[
            "embed",
            "--device",
            "cpu",
            "--model",
            s(&model),
            "--images",
            s(&images),
            "--out",
            s(&out),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{json}");
        assert!(
            err.contains(want) && err.contains("preprocessor_config.json"),
            "{json}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{json}: {:?}",
            t.elapsed()
        );
        assert!(!out.exists());
    }
}

// ---- Only what should be read is read ----

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn embed_images(images: &Path, out: &Path) -> Output {
    fedclip(&[
        "embed",
        "--device",
        "cpu",
        "--images",
        s(images),
        "--out",
        s(out),
    ])
}

fn embedded_names(out: &Path) -> String {
    let bytes = std::fs::read(out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap()["images"].clone()
}

#[test]
fn fifos_and_devices_under_image_names_are_refused_by_name_not_read() {
    for (name, what) in [("x.jpg", "FIFO"), ("zero.jpg", "character device")] {
        let tmp = tempfile::tempdir().unwrap();
        let images = image_dir(tmp.path(), &[("a.jpg", pacs_jpeg())]);
        if what == "FIFO" {
            mkfifo(&images.join(name));
        } else {
            symlink(Path::new("/dev/zero"), &images.join(name));
        }
        let out = tmp.path().join("o.safetensors");
        let o = embed_images(&images, &out);
        let err = stderr(&o);
        assert!(!o.status.success(), "{name}");
        assert!(
            err.contains(name) && err.contains(what) && err.contains("not a regular file"),
            "{err}"
        );
        // Named directly, it is refused too.
        let o = embed_images(&images.join(name), &out);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains(what), "{err}");
        assert!(!out.exists());

        let data = tmp.path().join("data");
        small_dataset(&data, &[]);
        if what == "FIFO" {
            mkfifo(&data.join("d2/dog").join(name));
        } else {
            symlink(Path::new("/dev/zero"), &data.join("d2/dog").join(name));
        }
        let args = run_args(tmp.path(), &data);
        for extra in [&[][..], &["--skip-bad"]] {
            let o = run(&args, extra);
            let err = stderr(&o);
            assert!(!o.status.success(), "{name} {extra:?}");
            assert!(
                err.contains(&format!("d2/dog/{name}")) && err.contains(what),
                "{err}"
            );
        }
    }
}

#[test]
fn a_file_swapped_for_a_fifo_after_the_walk_is_refused_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("late.jpg");
    mkfifo(&fifo);
    let t = Instant::now();
    let err = fedclip::walk::read_regular(&fifo).unwrap_err().to_string();
    assert!(err.contains("late.jpg") && err.contains("FIFO"), "{err}");
    let cfg = PreprocessConfig::openai(224);
    let err = format!(
        "{:#}",
        fedclip::preprocess::preprocess_file(&fifo, &cfg).unwrap_err()
    );
    assert!(err.contains("late.jpg") && err.contains("FIFO"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn embed_reads_a_linked_loop_once() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_dir(tmp.path(), &[("a.jpg", pacs_jpeg())]);
    symlink(&images, &images.join("loop"));
    std::fs::create_dir(images.join("sub")).unwrap();
    symlink(Path::new(".."), &images.join("sub/up"));
    let out = tmp.path().join("o.safetensors");
    let o = embed_images(&images, &out);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(embedded_names(&out), r#"["a.jpg"]"#);
    assert!(err.contains("loop") && err.contains("read once"), "{err}");
}

/// `levels` folders, each holding two links (`a`, `b`) to the next, the last an image: 2^levels
/// paths to one file.
fn paired_links(root: &Path, levels: usize) -> PathBuf {
    let real = root.join("real");
    for i in 0..=levels {
        std::fs::create_dir_all(real.join(format!("r{i}"))).unwrap();
    }
    for i in 0..levels {
        for l in ["a", "b"] {
            symlink(
                &real.join(format!("r{}", i + 1)),
                &real.join(format!("r{i}/{l}")),
            );
        }
    }
    std::fs::write(real.join(format!("r{levels}/img.jpg")), pacs_jpeg()).unwrap();
    real.join("r0")
}

#[test]
fn paired_links_24_deep_are_walked_once_in_embed_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let top = paired_links(tmp.path(), 24);
    let t = Instant::now();
    let walk = fedclip::walk::regular_files(&top, "--images", |_| true).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let names: Vec<String> = walk.files.iter().map(|f| f.rel()).collect();
    // Depth first in name order: the `a` links name it.
    assert_eq!(names, [format!("{}img.jpg", "a/".repeat(24))]);
    assert_eq!(walk.warnings.len(), 24, "{:?}", walk.warnings);

    let out = tmp.path().join("o.safetensors");
    let o = embed_images(&top, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        embedded_names(&out),
        format!("[\"{}img.jpg\"]", "a/".repeat(24))
    );

    // A dataset class holding the same tree: one sample, not 2^24.
    let data = tmp.path().join("data");
    small_dataset(&data, &[]);
    symlink(&top, &data.join("d1/cat/deep"));
    let ds = fedclip::data::Dataset::scan(&data).unwrap();
    let cat: Vec<&str> = ds.domains[0]
        .samples
        .iter()
        .map(|x| x.rel.as_str())
        .filter(|r| r.contains("deep"))
        .collect();
    assert_eq!(cat, [format!("d1/cat/deep/{}img.jpg", "a/".repeat(24))]);
}

#[test]
fn walks_deeper_than_the_limit_are_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let mut deep = tmp.path().join("top");
    for _ in 0..=fedclip::walk::MAX_DEPTH + 1 {
        deep = deep.join("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = format!(
        "{:#}",
        fedclip::walk::regular_files(&tmp.path().join("top"), "--data", |_| true).unwrap_err()
    );
    assert!(
        err.contains("--data") && err.contains("folders deep") && err.contains("/d/d/d"),
        "{err}"
    );
}

/// A small deterministic generator (xorshift64*), so a failing tree can be rebuilt from its seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// What a random tree holds: its real folders and its regular image files.
struct Tree {
    files: Vec<PathBuf>,
    special: usize,
}

/// Random folders (nested), image files, links to random folders (loops, DAGs, links to
/// links), dangling links and, where `special`, FIFOs and links to devices.
fn random_tree(root: &Path, rng: &mut Rng, special: bool) -> Tree {
    let mut dirs = vec![root.to_path_buf()];
    let mut tree = Tree {
        files: Vec::new(),
        special: 0,
    };
    for i in 0..rng.below(40) + 5 {
        let parent = dirs[rng.below(dirs.len())].clone();
        let p = parent.join(format!("e{i}"));
        match rng.below(if special { 8 } else { 6 }) {
            0 | 1 => {
                std::fs::create_dir(&p).unwrap();
                dirs.push(p);
            }
            2 | 3 => {
                let p = p.with_extension("jpg");
                std::fs::write(&p, b"x").unwrap();
                tree.files.push(p);
            }
            4 => symlink(&dirs[rng.below(dirs.len())], &p), // loops and DAGs
            5 => symlink(&root.join("missing"), &p.with_extension("jpg")),
            6 => {
                mkfifo(&p.with_extension("jpg"));
                tree.special += 1;
            }
            _ => {
                let dev = ["/dev/zero", "/dev/null", "/dev/urandom"][rng.below(3)];
                symlink(Path::new(dev), &p.with_extension("png"));
                tree.special += 1;
            }
        }
    }
    tree
}

#[test]
fn random_trees_of_links_fifos_and_devices_end_quickly_with_a_clear_result() {
    let seed = std::env::var("FEDCLIP_WALK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    for case in 0..200 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let tree = random_tree(&root, &mut rng, case % 2 == 1);
        let ctx = format!("seed {seed} (FEDCLIP_WALK_SEED), case {case}");
        let t = Instant::now();
        let result = fedclip::walk::regular_files(&root, "--data", fedclip::data::is_image_file);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{ctx}: {:?}",
            t.elapsed()
        );
        match result {
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(tree.special > 0, "{ctx}: {msg}");
                assert!(
                    msg.contains("not a regular file") && msg.contains("--data"),
                    "{ctx}: {msg}"
                );
            }
            Ok(walk) => {
                assert_eq!(tree.special, 0, "{ctx}: a FIFO or device was not refused");
                // Every real file exactly once (each folder is read once), plus the
                // dangling links, which reading then names.
                let mut listed: Vec<PathBuf> = walk
                    .files
                    .iter()
                    .filter_map(|f| f.path.canonicalize().ok())
                    .collect();
                listed.sort();
                let mut want: Vec<PathBuf> = tree
                    .files
                    .iter()
                    .map(|p| p.canonicalize().unwrap())
                    .collect();
                want.sort();
                assert_eq!(listed, want, "{ctx}");
                let mut dirs = walk.dirs.clone();
                dirs.sort();
                dirs.dedup();
                assert_eq!(dirs.len(), walk.dirs.len(), "{ctx}");
            }
        }
    }
}

// ---- Nothing outside the run is written ----

fn tiny_model() -> PathBuf {
    repo().join("tests/fixtures/models/tiny-f32")
}

#[test]
fn embed_out_never_replaces_an_input_or_a_device() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_dir(tmp.path(), &[("a.jpg", pacs_jpeg())]);
    let (model, _) = (model_with_preprocessor(tmp.path(), "{}"), ());
    std::fs::remove_file(model.join("preprocessor_config.json")).unwrap();
    let weights = model.join("model.safetensors");
    let weights_before = std::fs::read(&weights).unwrap();
    let linked = tmp.path().join("linked.safetensors");
    symlink(&tmp.path().join("elsewhere"), &linked);
    let image = images.join("a.jpg");
    // Through another path to the same file (a hard link): still refused.
    let hard = tmp.path().join("hard.jpg");
    std::fs::hard_link(&image, &hard).unwrap();
    for (out, want) in [
        (image.clone(), "the input image"),
        (hard.clone(), "the input image"),
        (weights.clone(), "the model's file"),
        (model.join("config.json"), "the model's file"),
        (PathBuf::from("/dev/null"), "not a regular file"),
        (linked.clone(), "a symbolic link"),
    ] {
        let o = fedclip(&[
            "embed",
            "--device",
            "cpu",
            "--model",
            s(&model),
            "--images",
            s(&images),
            "--out",
            s(&out),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{}", out.display());
        assert!(
            err.contains("--out") && err.contains(want),
            "{}: {err}",
            out.display()
        );
    }
    assert_eq!(std::fs::read(&image).unwrap(), pacs_jpeg());
    assert_eq!(std::fs::read(&weights).unwrap(), weights_before);
    assert!(!tmp.path().join("elsewhere").exists());
    let dev_null = std::fs::metadata("/dev/null").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &dev_null.file_type()
    ));
    // A prompt file too.
    let prompts = tmp.path().join("p.txt");
    std::fs::write(&prompts, "a dog\n").unwrap();
    let o = fedclip(&[
        "embed",
        "--device",
        "cpu",
        "--model",
        s(&tiny_model()),
        "--texts",
        s(&prompts),
        "--out",
        s(&prompts),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("the prompt file") || err.contains("tokenizer"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&prompts).unwrap(), "a dog\n");
}

#[test]
fn write_atomic_refuses_links_and_devices_and_writes_regular_files() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target.txt");
    std::fs::write(&target, "keep").unwrap();
    let link = tmp.path().join("link.txt");
    symlink(&target, &link);
    let err = format!("{:#}", fedclip::io::write_atomic(&link, b"x").unwrap_err());
    assert!(
        err.contains("link.txt") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let err = format!("{:#}", fedclip::io::write_atomic(&fifo, b"x").unwrap_err());
    assert!(
        err.contains("fifo") && err.contains("not a regular file"),
        "{err}"
    );
    fedclip::io::write_atomic(&target, b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    // Only the files above: no temporary file left by the refusals.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3);
}

#[test]
fn a_lock_file_that_is_a_link_is_refused_and_its_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[]);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, &out.join(".fedclip-run.lock"));
    let o = run(&run_args(tmp.path(), &data), &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(".fedclip-run.lock") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn temporary_files_a_killed_run_left_are_removed_when_the_run_dir_is_next_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[]);
    let args = run_args(tmp.path(), &data);
    let o = run(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("out");
    let debris = out.join("state.safetensors.tmp-999999-0-1234");
    std::fs::write(&debris, b"half a checkpoint").unwrap();
    let mut more = args.clone();
    assert_eq!(more[3..5], ["--rounds", "1"]);
    more[4] = "2".into();
    let o = run(&more, &["--resume"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!debris.exists(), "{err}");
    assert!(err.contains("removed 1 temporary file"), "{err}");
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---- Messages and names ----

#[test]
fn two_runs_choosing_a_folder_at_once_get_different_ones() {
    use fedclip::federated::rundir::next_free;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("runs/name");
    // Nothing is written between the two choices, as when two runs start together.
    let first = next_free(&base).unwrap();
    let second = next_free(&base).unwrap();
    assert_eq!(first, base);
    assert_eq!(second, tmp.path().join("runs/name-2"));
    // From threads racing on one name: each gets its own.
    let base = tmp.path().join("runs/race");
    let got: Vec<PathBuf> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| next_free(&base).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{got:?}");
}

#[test]
fn default_run_names_stay_valid_file_names() {
    use fedclip::federated::rundir::default_name;
    let short = default_name("fedclip", "pacs", &["sketch".into()], 0);
    assert_eq!(short, "fedclip-pacs-sketch-seed0");
    let many: Vec<String> = (0..40).map(|i| format!("domain_number_{i}")).collect();
    let long = default_name("fedclip", "domainnet", &many, 7);
    assert!(long.len() <= 255 && long.ends_with("-seed7"), "{long}");
    assert!(
        long.starts_with("fedclip-domainnet-domain_number_0+"),
        "{long}"
    );
    // Different held-out sets keep different names.
    let other = default_name("fedclip", "domainnet", &many[1..], 7);
    assert_ne!(long, other);
    // A run without --out on them: the folder can be created.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join(&long)).unwrap();
}

#[test]
fn a_50_mb_prompt_is_cut_exactly_with_truncate_and_quoted_briefly_without() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.txt");
    let huge = "dog ".repeat(50 << 18); // 50 MiB
    std::fs::write(&prompts, format!("{}\n{huge}\n", "dog ".repeat(100))).unwrap();
    let out = tmp.path().join("o.safetensors");
    let args = [
        "embed",
        "--device",
        "cpu",
        "--texts",
        s(&prompts),
        "--out",
        s(&out),
    ];
    let o = fedclip(&args);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--truncate") && err.contains("over the context of 77"),
        "{err}"
    );
    assert!(
        err.len() < 2000,
        "the message quotes the whole prompt: {} bytes",
        err.len()
    );
    let t = Instant::now();
    let o = fedclip(&[&args[..], &["--truncate"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    // Cut from its start, it is the 100-word prompt cut to the context: the same features.
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("text_embeds").unwrap();
    let dim = t.shape()[1];
    let (a, b) = t.data().split_at(dim * 4);
    assert_eq!(a, b);
}

#[test]
fn run_does_not_advise_an_embed_flag_for_a_long_class_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[]);
    let long = "x ".repeat(100);
    for d in ["d1", "d2"] {
        std::fs::rename(data.join(d).join("cat"), data.join(d).join(long.trim())).unwrap();
    }
    let o = run(&run_args(tmp.path(), &data), &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("over the context") && err.contains("shorten the class folder"),
        "{err}"
    );
    assert!(!err.contains("--truncate"), "{err}");
}

#[test]
fn huge_client_counts_are_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data, &[]);
    for k in ["10000000000000000000", "1000000000", "100001"] {
        let o = run(&run_args(tmp.path(), &data), &["--clients-per-domain", k]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{k}");
        assert!(
            err.contains(&format!(
                "--clients-per-domain must be at most 100000, got {k}"
            )),
            "{err}"
        );
    }
    let err = fedclip::data::dirichlet_partition(&[0, 1], 2, 1 << 40, 1.0, 0, 0, 0).unwrap_err();
    assert!(err.to_string().contains("at most 100000"), "{err}");
}
