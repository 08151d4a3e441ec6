//! `fedclip run`'s run directory and flags: nothing outside `--out`/`--cache-dir` is
//! written, one run holds a directory at a time, the README's command can be run twice,
//! every setting is checked before work starts, and partitions leave no client empty.

mod common;

use common::repo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fedclip_in(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `run` on the bundled data, into `out`, with `extra` flags (one round unless they say).
fn run(tmp: &Path, out: &Path, extra: &[&str]) -> Output {
    let cache = tmp.join("cache");
    let mut args = vec![
        "run",
        "--device",
        "cpu",
        "--out",
        s(out),
        "--cache-dir",
        s(&cache),
    ];
    if !extra.contains(&"--rounds") {
        args.extend(["--rounds", "1"]);
    }
    args.extend_from_slice(extra);
    fedclip_in(tmp, &args)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &dst.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn out_that_is_not_a_run_directory_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&repo().join("weights/tiny-clip"), &model);
    let before = std::fs::read(model.join("config.json")).unwrap();
    let o = run(tmp.path(), &model, &[]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("--out")
            && err.contains("is not empty and is not a fedclip run directory"),
        "{err}"
    );
    assert_eq!(std::fs::read(model.join("config.json")).unwrap(), before);
    assert!(!model.join("metrics.csv").exists());

    // Inside the dataset (the next scan would take it for a domain) or the model.
    let data = tmp.path().join("data");
    copy_dir(&repo().join("data/pacs-mini"), &data);
    let inside = data.join("results");
    let o = run(tmp.path(), &inside, &["--data", s(&data)]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("is inside --data") && !inside.exists(),
        "{err}"
    );
    let o = fedclip_in(
        tmp.path(),
        &[
            "run",
            "--model",
            s(&model),
            "--out",
            s(&tmp.path().join("elsewhere")),
            "--cache-dir",
            s(&model.join("cache")),
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("--cache-dir") && err.contains("is inside --model"),
        "{err}"
    );
}

#[test]
fn a_second_run_on_a_held_directory_fails_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args([
            "run", "--device", "cpu", "--rounds", "100000", "--seed", "7",
        ])
        .args([
            "--out",
            s(&out),
            "--cache-dir",
            s(&tmp.path().join("cache")),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".fedclip-run.lock");
    let held = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid"))
    });
    assert!(held, "the first run never took the lock");
    let o = run(tmp.path(), &out, &["--seed", "8"]);
    let err = stderr(&o);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !o.status.success()
            && err.contains("is in use by another fedclip run")
            && err.contains(&format!("pid {}", first.id()))
            && err.contains("seed 7"),
        "{err}"
    );
    // The killed run's lock went with it: --resume may take the folder now.
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"seed\": 7"), "{config}");
}

#[test]
fn runs_sharing_a_cache_dir_both_finish_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_fedclip"))
            .args(["run", "--device", "cpu", "--rounds", "2", "--lr", "5e-3"])
            .args(["--out", s(&tmp.path().join(name)), "--cache-dir", s(&cache)])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    for child in [a, b] {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let metrics =
        |n: &str| std::fs::read_to_string(tmp.path().join(n).join("metrics.csv")).unwrap();
    assert_eq!(metrics("a"), metrics("b"));
}

#[test]
fn the_default_out_takes_the_next_free_directory_and_resume_prints_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["run", "--device", "cpu", "--rounds", "1"];
    let first = fedclip_in(tmp.path(), &args);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = fedclip_in(tmp.path(), &args);
    let err = stderr(&second);
    assert!(second.status.success(), "{err}");
    let base = "runs/fedclip-pacs-mini-art_painting-seed0";
    assert!(
        err.contains(&format!("{base} already holds a run; writing to {base}-2")),
        "{err}"
    );
    assert!(tmp.path().join(format!("{base}-2/summary.json")).exists());
    // An explicit --out that holds a run is still refused without --resume.
    let o = fedclip_in(tmp.path(), &[&args[..], &["--out", base]].concat());
    assert!(
        !o.status.success() && stderr(&o).contains("already holds a run"),
        "{}",
        stderr(&o)
    );
    // --resume of a finished run (the latest one) prints its summary and exits 0.
    let o = fedclip_in(tmp.path(), &[&args[..], &["--resume"]].concat());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("resuming {base}-2"))
            && err.contains("best round 1")
            && err.contains("held-out art_painting"),
        "{err}"
    );
}

#[test]
fn every_flag_is_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run(
        tmp.path(),
        &out,
        &[
            "--weight-decay",
            "nan",
            "--lr",
            "1e300",
            "--prompt-template",
            "a photo",
            "--mu=-1",
            "--dirichlet-alpha",
            "0",
            "--rounds",
            "0",
            "--sample-fraction",
            "inf",
        ],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    for want in [
        "7 settings are wrong",
        "--lr 1e300 is beyond the range of f32",
        "--weight-decay must be finite and zero or positive, got NaN",
        "--prompt-template must contain `{}` exactly once",
        "\"a photo\"",
        "--mu must be finite and zero or positive, got -1",
        "--dirichlet-alpha must be finite and positive, got 0",
        "--rounds must be at least 1, got 0",
        "--sample-fraction must be finite and in (0, 1], got inf",
    ] {
        assert!(err.contains(want), "missing `{want}`: {err}");
    }
    // 1e300 is beyond f32 (the trainers' type); a value is shown readably when it is wrong.
    let o = run(tmp.path(), &out, &["--lr=-1e300", "--weight-decay", "inf"]);
    let err = stderr(&o);
    assert!(
        err.contains("--lr must be finite and positive, got -1e300")
            && err.contains("--weight-decay must be finite and zero or positive, got inf"),
        "{err}"
    );
    assert!(!out.exists(), "nothing was started");
    assert!(!tmp.path().join("cache").exists(), "nothing was extracted");
}

#[test]
fn a_partition_with_empty_clients_is_refused_or_dropped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run(tmp.path(), &out, &["--clients-per-domain", "1000"]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains("domain `cartoon` (140 files) split among 1000 clients")
            && err.contains("without training files")
            && err.contains("--drop-empty-clients"),
        "{err}"
    );
    assert!(!out.exists(), "refused before the run directory is made");
    let o = run(
        tmp.path(),
        &out,
        &["--clients-per-domain", "1000", "--drop-empty-clients"],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: --clients-per-domain 1000: domain `photo`")
            && err.contains("left out"),
        "{err}"
    );
    let splits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("splits.json")).unwrap()).unwrap();
    for (name, client) in splits["clients"].as_object().unwrap() {
        if name != "art_painting" {
            assert!(!client["train"].as_array().unwrap().is_empty(), "{name}");
        }
    }
}

/// Two domains × two classes × four real PACS images.
fn small_dataset(root: &Path) {
    let pics: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures/images/pacs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    for d in ["d1", "d2"] {
        for c in ["dog", "house"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, p) in pics.iter().take(4).enumerate() {
                std::fs::copy(p, dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
}

#[test]
fn skip_bad_leaves_out_every_bad_image_and_without_it_one_error_lists_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_dataset(&data);
    let jpg = std::fs::read(data.join("d1/dog/0.jpg")).unwrap();
    std::fs::write(data.join("d1/dog/bad_text.jpg"), b"not an image").unwrap();
    std::fs::write(data.join("d2/house/bad_cut.jpg"), &jpg[..jpg.len() / 3]).unwrap();
    let mut bomb =
        std::fs::read(repo().join("tests/fixtures/images/pacs/sketch_dog_5281.png")).unwrap();
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]); // 100000 × 100000
    std::fs::write(data.join("d2/dog/bad_bomb.png"), &bomb).unwrap();
    let out = tmp.path().join("run");
    let args = ["--data", s(&data), "--test-domain", "d1"];
    let o = run(tmp.path(), &out, &args);
    let err = stderr(&o);
    assert!(!o.status.success());
    for want in [
        "3 image(s) of --data",
        "bad_text.jpg",
        "bad_cut.jpg",
        "bad_bomb.png",
        "100000x100000",
        "--skip-bad",
    ] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    assert!(!out.join("metrics.csv").exists(), "no round ran");

    let out = tmp.path().join("run-skipping");
    let o = run(tmp.path(), &out, &[&args[..], &["--skip-bad"]].concat());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("warning: skipping").count(), 3, "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["skipped_images"],
        serde_json::json!([
            "d1/dog/bad_text.jpg",
            "d2/dog/bad_bomb.png",
            "d2/house/bad_cut.jpg"
        ])
    );
}
