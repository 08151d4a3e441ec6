//! Issue 23: a resumed run continues the same run or says why it cannot (changed images or
//! model, a cut or missing metrics.csv, a checkpoint that is not the run's, a shortened
//! --rounds, a lost config.json), and no run ends with a wrong result and exit 0 (settings
//! that overflow f32, a NaN logit_scale, --batch 1).

mod common;

use common::repo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fedclip_in(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

fn fedclip(args: &[&str], env: &[(&str, &str)]) -> Output {
    fedclip_in(None, args, env)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn image(n: u32) -> PathBuf {
    repo().join(format!("data/pacs-mini/photo/dog/056_000{n}.jpg"))
}

/// Domains `names`, two classes, five copies of one bundled image each.
fn dataset_named(root: &Path, names: &[&str]) {
    for d in names {
        for c in ["cat", "dog"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                std::fs::copy(image(1), dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
}

fn dataset(root: &Path) {
    dataset_named(root, &["d0", "d1", "d2"]);
}

/// A run on `data` of `rounds` rounds (the first domain held out).
fn args<'a>(data: &'a str, out: &'a str, cache: &'a str, rounds: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--device",
        "cpu",
        "--rounds",
        rounds,
        "--data",
        data,
        "--out",
        out,
        "--cache-dir",
        cache,
    ]
}

struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    out: PathBuf,
    cache: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        dataset(&data);
        Setup {
            data,
            out: tmp.path().join("run"),
            cache: tmp.path().join("cache"),
            _tmp: tmp,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self._tmp.path().join(rel)
    }

    fn run(&self, rounds: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_at(&self.out, rounds, extra, env)
    }

    fn run_at(&self, out: &Path, rounds: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let a = args(
            self.data.to_str().unwrap(),
            out.to_str().unwrap(),
            self.cache.to_str().unwrap(),
            rounds,
        );
        fedclip(&[&a[..], extra].concat(), env)
    }

    /// A run killed right after `round`'s (0-based) `point` was written.
    fn killed_at(&self, rounds: &str, round: u32, point: &str) {
        let spec = format!("{round}:{point}");
        let o = self.run(rounds, &[], &[("FEDCLIP_ABORT_AT", &spec)]);
        assert!(!o.status.success(), "the abort hook did not fire");
    }
}

/// `o` failed, and its message holds each of `parts`.
fn refused(o: &Output, parts: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "exit 0, stderr: {err}");
    for p in parts {
        assert!(err.contains(p), "{p:?} not in: {err}");
    }
}

#[test]
fn resume_on_changed_images_is_refused_naming_each_file() {
    let s = Setup::new();
    s.killed_at("3", 1, "state");
    let edited = s.data.join("d1/cat/2.jpg");
    std::fs::copy(image(2), &edited).unwrap();
    let o = s.run("3", &["--resume"], &[]);
    refused(&o, &["--resume", "edited: d1/cat/2.jpg", "inputs.json"]);
    let splits_before = read(&s.out.join("splits.json"));

    std::fs::copy(image(1), &edited).unwrap();
    std::fs::copy(image(3), s.data.join("d2/dog/new.jpg")).unwrap();
    std::fs::remove_file(s.data.join("d2/cat/0.jpg")).unwrap();
    let o = s.run("3", &["--resume"], &[]);
    refused(&o, &["added: d2/dog/new.jpg", "removed: d2/cat/0.jpg"]);
    assert!(!stderr(&o).contains("edited"), "{}", stderr(&o));
    assert_eq!(
        read(&s.out.join("splits.json")),
        splits_before,
        "splits.json rewritten"
    );

    std::fs::remove_file(s.data.join("d2/dog/new.jpg")).unwrap();
    std::fs::copy(image(1), s.data.join("d2/cat/0.jpg")).unwrap();
    let o = s.run("3", &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resumed after round 2"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn resume_with_replaced_model_weights_is_refused() {
    let s = Setup::new();
    let model = s.path("model");
    copy_dir(&repo().join("weights/tiny-clip"), &model);
    let m = ["--model", model.to_str().unwrap()];
    let o = s.run("3", &m, &[("FEDCLIP_ABORT_AT", "0:state")]);
    assert!(!o.status.success());
    // Replaced in place: the same file, one weight changed (still a valid model).
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let o = s.run("3", &[&m[..], &["--resume"]].concat(), &[]);
    refused(&o, &["--resume", "the model's weights"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The same dataset under `./data` and `data`, and moved elsewhere with equal content,
/// resumes; the result equals an uninterrupted run's.
#[test]
fn a_moved_or_differently_spelled_dataset_resumes() {
    let s = Setup::new();
    let cwd = s.path("");
    let whole = s.run_at(&s.path("whole"), "3", &[], &[]);
    assert!(whole.status.success(), "{}", stderr(&whole));

    let relative = |data: &str, extra: &[&str], env: &[(&str, &str)]| {
        let a = args(data, "run", "cache", "3");
        fedclip_in(Some(&cwd), &[&a[..], extra].concat(), env)
    };
    let o = relative("./data", &[], &[("FEDCLIP_ABORT_AT", "0:state")]);
    assert!(!o.status.success());
    let o = relative("data", &["--resume"], &[("FEDCLIP_ABORT_AT", "1:state")]);
    assert!(
        !o.status.success() && stderr(&o).contains("FEDCLIP_ABORT_AT"),
        "{}",
        stderr(&o)
    );
    std::fs::rename(s.path("data"), s.path("moved")).unwrap();
    let o = relative("moved", &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resumed after round 2"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        read(&s.path("whole/metrics.csv")),
        read(&s.out.join("metrics.csv"))
    );
    assert_eq!(
        std::fs::read(s.path("whole/adapter-last.safetensors")).unwrap(),
        std::fs::read(s.out.join("adapter-last.safetensors")).unwrap()
    );
}

/// A small seeded generator (xorshift), so each run of the test kills at the same moments.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Kill -9 at random moments (a real SIGKILL after a random delay, or an abort right after a
/// round's metrics or checkpoint), then: one image changed, `--resume` is refused naming it;
/// changed back, the resumed run equals an uninterrupted one.
#[test]
fn kill_at_random_moments_then_change_one_image_or_nothing() {
    let s = Setup::new();
    let whole = s.run_at(&s.path("whole"), "4", &[], &[]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for trial in 0..4 {
        let out = s.path(&format!("trial{trial}"));
        let a = args(
            s.data.to_str().unwrap(),
            out.to_str().unwrap(),
            s.cache.to_str().unwrap(),
            "4",
        );
        if trial % 2 == 0 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_fedclip"))
                .args(&a)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50 + rng.below(1500)));
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        } else {
            let point = ["metrics", "state"][rng.below(2) as usize];
            let spec = format!("{}:{point}", rng.below(3));
            let o = fedclip(&a, &[("FEDCLIP_ABORT_AT", &spec)]);
            assert!(!o.status.success(), "the abort hook did not fire");
        }
        let victim = s
            .data
            .join(format!("d{}/dog/{}.jpg", 1 + rng.below(2), rng.below(5)));
        let rel = victim
            .strip_prefix(&s.data)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        std::fs::copy(image(2), &victim).unwrap();
        let resumed = [&a[..], &["--resume"]].concat();
        let o = fedclip(&resumed, &[]);
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "trial {trial}: resumed on a changed image: {err}"
        );
        // Killed before the run directory took its config: there is no run to continue.
        assert!(
            err.contains(&format!("edited: {rel}")) || err.contains("no run to continue"),
            "trial {trial}: {err}"
        );
        std::fs::copy(image(1), &victim).unwrap();
        if err.contains("no run to continue") {
            continue;
        }
        let o = fedclip(&resumed, &[]);
        assert!(o.status.success(), "trial {trial}: {}", stderr(&o));
        assert_eq!(
            read(&s.path("whole/metrics.csv")),
            read(&out.join("metrics.csv")),
            "trial {trial}"
        );
        assert_eq!(
            std::fs::read(s.path("whole/adapter-last.safetensors")).unwrap(),
            std::fs::read(out.join("adapter-last.safetensors")).unwrap(),
            "trial {trial}"
        );
    }
}

#[test]
fn a_missing_or_cut_metrics_csv_is_refused_not_emptied() {
    let s = Setup::new();
    s.killed_at("4", 2, "state");
    let metrics = s.out.join("metrics.csv");
    let text = read(&metrics);

    std::fs::remove_file(&metrics).unwrap();
    let o = s.run("4", &["--resume"], &[]);
    refused(&o, &["metrics.csv", "3 rounds finished", "restore"]);

    // Cut in round 2's rows: rounds 2 and 3 are lost.
    let cut = text.find("\n2,").unwrap();
    std::fs::write(&metrics, &text[..cut + 1]).unwrap();
    let o = s.run("4", &["--resume"], &[]);
    refused(&o, &["metrics.csv", "round(s) 2, 3", "restore"]);

    // A malformed row among the finished rounds: refused before any round trains.
    std::fs::write(&metrics, text.replacen("\n2,d1,", "\n2,d1,bogus,", 1)).unwrap();
    let o = s.run("4", &["--resume"], &[]);
    refused(&o, &["malformed row", "metrics.csv line"]);
    assert!(!stderr(&o).contains("round    4/4"), "{}", stderr(&o));

    // A row of the interrupted round cut by the kill (no line end): dropped, and the resumed
    // run equals an uninterrupted one.
    std::fs::write(&metrics, format!("{text}4,d1,tr")).unwrap();
    let o = s.run("4", &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = s.run_at(&s.path("whole"), "4", &[], &[]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    assert_eq!(read(&s.path("whole/metrics.csv")), read(&metrics));
    let summary: serde_json::Value =
        serde_json::from_str(&read(&s.out.join("summary.json"))).unwrap();
    assert_eq!(summary["rounds_run"], 4);
}

#[test]
fn rounds_done_beyond_the_config_and_a_shortened_rounds_are_refused() {
    let s = Setup::new();
    s.killed_at("4", 2, "state");
    let o = s.run("2", &["--resume"], &[]);
    refused(
        &o,
        &[
            "--rounds 2",
            "already finished 3 rounds",
            "--rounds 3 or more",
        ],
    );
    let config = read(&s.out.join("config.json"));
    assert!(
        config.contains("\"rounds\": 4"),
        "config.json rewritten: {config}"
    );

    // rounds_done 9 in a 4-round run's checkpoint (same length, so the file stays valid).
    let state = s.out.join("state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.contains("\"rounds_done\":\"3\""));
    let tampered: Vec<u8> =
        replace_bytes(&bytes, b"\"rounds_done\":\"3\"", b"\"rounds_done\":\"9\"");
    std::fs::write(&state, tampered).unwrap();
    let o = s.run("4", &["--resume"], &[]);
    refused(&o, &["state.safetensors", "rounds_done is 9", "4 rounds"]);
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = hay.windows(from.len()).position(|w| w == from).unwrap();
    [&hay[..at], to, &hay[at + from.len()..]].concat()
}

#[test]
fn a_run_without_its_config_json_says_so() {
    let s = Setup::new();
    s.killed_at("3", 1, "state");
    std::fs::remove_file(s.out.join("config.json")).unwrap();
    for extra in [&["--resume"][..], &[]] {
        let o = s.run("3", extra, &[]);
        refused(&o, &["not its config.json", "restore config.json"]);
    }
}

#[test]
fn domain_names_with_commas_quotes_and_newlines_round_trip_through_metrics_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset_named(&data, &["0held", "a,b", "q\"x\ny"]);
    let s = Setup {
        data,
        out: tmp.path().join("run"),
        cache: tmp.path().join("cache"),
        _tmp: tmp,
    };
    s.killed_at("3", 0, "state");
    let o = s.run("3", &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = read(&s.out.join("metrics.csv"));
    assert!(text.contains("\n1,\"a,b\",train,"), "{text}");
    assert!(text.contains("\n3,\"q\"\"x\ny\",val,"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&read(&s.out.join("summary.json"))).unwrap();
    assert!(
        summary["best_round_accuracy"]["a,b"]["val"].is_number(),
        "{summary}"
    );
    assert!(
        summary["best_round_accuracy"]["q\"x\ny"]["val"].is_number(),
        "{summary}"
    );
}

#[test]
fn parameters_that_overflow_fail_instead_of_writing_nan_adapters() {
    let s = Setup::new();
    for (flag, value) in [
        ("--weight-decay", "1e300"),
        ("--tip-alpha", "1e39"),
        ("--mu", "1e300"),
    ] {
        let out = s.path(&format!("out{flag}"));
        let o = s.run_at(&out, "1", &[flag, value, "--method", "fedprox"], &[]);
        refused(&o, &[flag, "f32"]);
        // Refused with the flags: nothing extracted, no cache made.
        assert!(!s.cache.exists(), "{flag}: refused only after extraction");
    }
    // Finite in f32, but the first steps overflow.
    let o = s.run("1", &["--lr", "1e38"], &[]);
    refused(&o, &["not finite", "--lr 1e38", "lower --lr"]);
    assert!(!s.out.join("adapter-last.safetensors").exists());
    assert!(!s.out.join("state.safetensors").exists());

    let o = s.run_at(
        &s.path("fedadam"),
        "1",
        &["--server-opt", "fedadam", "--server-lr", "1e300"],
        &[],
    );
    refused(&o, &["--server-lr", "f32"]);
}

#[test]
fn a_nan_logit_scale_is_refused_by_every_method_naming_it() {
    let s = Setup::new();
    let model = s.path("model");
    copy_dir(&repo().join("weights/tiny-clip"), &model);
    // logit_scale is the first tensor, one f16: NaN is 0x7e00.
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let head: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
    assert_eq!(head["logit_scale"]["dtype"], "F16");
    let at = 8 + header + head["logit_scale"]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bytes = bytes;
    bytes[at..at + 2].copy_from_slice(&[0x00, 0x7e]);
    std::fs::write(&weights, bytes).unwrap();
    for method in [
        "fedclip",
        "zeroshot",
        "local",
        "linear-probe",
        "clip-adapter",
        "tip-adapter",
        "tip-adapter-f",
    ] {
        let out = s.path(&format!("out-{method}"));
        let o = s.run_at(
            &out,
            "1",
            &["--method", method, "--model", model.to_str().unwrap()],
            &[],
        );
        refused(&o, &["logit_scale"]);
        assert!(!stderr(&o).contains("diverged"), "{method}: {}", stderr(&o));
        assert!(!out.join("summary.json").exists(), "{method}");
    }
}

#[test]
fn batch_one_for_the_adapter_is_refused_naming_batch_and_loss() {
    let s = Setup::new();
    for loss in ["contrastive", "class"] {
        let o = s.run("1", &["--batch", "1", "--loss", loss], &[]);
        refused(
            &o,
            &["--batch 1", &format!("--loss {loss}"), "--batch 2 or more"],
        );
    }
    // The other families train on one sample a step.
    let o = s.run("1", &["--batch", "1", "--method", "linear-probe"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn class_folders_rendering_the_same_prompt_are_refused_naming_both() {
    for (a, b) in [("dog", "Dog"), ("sea_lion", "sea lion")] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        for d in ["d0", "d1"] {
            for c in [a, b] {
                let dir = data.join(d).join(c);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(image(1), dir.join("0.jpg")).unwrap();
            }
        }
        let out = tmp.path().join("run");
        let cache = tmp.path().join("cache");
        let a_ = args(
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            cache.to_str().unwrap(),
            "1",
        );
        let o = fedclip(&a_, &[]);
        // Sorted: "Dog" < "dog", "sea lion" < "sea_lion".
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        refused(
            &o,
            &[
                &format!("{first:?} and {second:?}"),
                "both become the prompt",
                "never be predicted",
            ],
        );
    }
}

/// `--skip-bad` that empties a client: a training client (the first domain too) or a
/// held-out domain is refused, named, instead of training on nothing or reporting `{}`.
#[test]
fn skip_bad_that_empties_a_client_is_refused_naming_it() {
    for (broken, extra, parts) in [
        (
            "d1",
            &[][..],
            &["training client `d1`", "no usable training image", "10 of"][..],
        ),
        (
            "d0",
            &[],
            &[
                "held-out domain `d0`",
                "no usable test image",
                "--test-domain",
            ],
        ),
        (
            "d0",
            &["--test-domain", "d2"],
            &["training client `d0`", "no usable training image"],
        ),
    ] {
        let s = Setup::new();
        for c in ["cat", "dog"] {
            for i in 0..5 {
                let f = s.data.join(broken).join(c).join(format!("{i}.jpg"));
                std::fs::write(f, b"not an image").unwrap();
            }
        }
        let o = s.run("1", &[&["--skip-bad"], extra].concat(), &[]);
        refused(&o, parts);
        assert!(!s.out.join("summary.json").exists());
    }
}

#[test]
fn without_validation_files_the_best_round_is_the_last_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Four files a domain: int(4 · 0.2) = 0 validation files.
    for d in ["d0", "d1", "d2"] {
        for c in ["cat", "dog"] {
            let dir = data.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2 {
                std::fs::copy(image(1 + i), dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
    let out = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let a = args(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        cache.to_str().unwrap(),
        "3",
    );
    let o = fedclip(&a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no training client has validation files"),
        "{err}"
    );
    assert!(
        err.contains("best round 3 (the last: no validation files)"),
        "{err}"
    );
    assert!(!err.contains("mean val accuracy"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    assert_eq!(summary["best_round"], 3);
    assert!(summary["best_mean_val_accuracy"].is_null(), "{summary}");
    assert_eq!(
        std::fs::read(out.join("adapter-best.safetensors")).unwrap(),
        std::fs::read(out.join("adapter-last.safetensors")).unwrap()
    );
}
