//! `--optimizer sgd`, `--momentum`, `--lr-schedule`, `--warmup-rounds`, `--warmup-lr` through
//! `fedclip run` on the bundled PACS-mini and tiny model: each bad value refused before any
//! work with a message naming the flag, the optimiser's defaults written to config.json,
//! every training family stepping with SGD, and the schedule reaching the trainer. (The
//! numerics are tests/sgd_schedule.rs's; kill + --resume is in tests/run.rs.)

use std::path::Path;
use std::process::{Command, Output};

fn fedclip(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `fedclip run` on the CPU into `<tmp>/<name>` with a shared cache and `extra` flags.
fn run(tmp: &Path, name: &str, extra: &[&str]) -> Output {
    let (out, cache) = (tmp.join(name), tmp.join("cache"));
    let args = [
        &[
            "run",
            "--device",
            "cpu",
            "--out",
            s(&out),
            "--cache-dir",
            s(&cache),
        ][..],
        extra,
    ]
    .concat();
    fedclip(&args)
}

fn config(tmp: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(tmp.join(name).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn bad_optimiser_settings_are_refused_naming_the_flag_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--optimizer", "sgd", "--momentum", "1"],
            "--momentum must be finite and in [0, 1), got 1",
        ),
        (
            &["--optimizer", "sgd", "--momentum=-0.1"],
            "--momentum must be finite and in [0, 1), got -0.1",
        ),
        (
            &["--optimizer", "sgd", "--momentum", "nan"],
            "--momentum must be finite and in [0, 1), got NaN",
        ),
        (
            &["--momentum", "0.5"],
            "--momentum applies to --optimizer sgd only, not --optimizer adam",
        ),
        (
            &["--warmup-rounds", "1", "--warmup-lr", "0"],
            "--warmup-lr must be finite and positive, got 0",
        ),
        (
            &["--rounds", "3", "--warmup-rounds", "3"],
            "--warmup-rounds (3) must be below --rounds (3)",
        ),
        (&["--lr-schedule", "linear"], "--lr-schedule"),
    ];
    for (extra, want) in cases {
        let o = run(tmp.path(), "run", extra);
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
    }
    let o = run(tmp.path(), "run", &["--lr-schedule", "linear"]);
    assert!(stderr(&o).contains("cosine"), "the choices are listed");
    assert!(!tmp.path().join("run").exists(), "nothing was started");
    assert!(!tmp.path().join("cache").exists(), "nothing was extracted");
}

#[test]
fn sgd_defaults_are_coops_and_adams_stay_the_references() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), "sgd", &["--optimizer", "sgd", "--rounds", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = config(tmp.path(), "sgd");
    assert_eq!(
        (
            &c["optimizer"],
            &c["lr"],
            &c["weight_decay"],
            &c["momentum"]
        ),
        (&"sgd".into(), &0.002.into(), &5e-4.into(), &0.9.into())
    );
    assert_eq!(
        (&c["lr_schedule"], &c["warmup_rounds"], &c["warmup_lr"]),
        (&"constant".into(), &0.into(), &1e-5.into())
    );
    let o = run(tmp.path(), "adam", &["--rounds", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = config(tmp.path(), "adam");
    assert_eq!(
        (&c["optimizer"], &c["lr"], &c["weight_decay"]),
        (&"adam".into(), &5e-5.into(), &0.2.into())
    );
}

/// Every family that trains runs with SGD, and its adapters differ from Adam's.
#[test]
fn every_training_family_steps_with_sgd() {
    let tmp = tempfile::tempdir().unwrap();
    for method in [
        "fedclip",
        "fedprox",
        "linear-probe",
        "clip-adapter",
        "tip-adapter-f",
    ] {
        let adapters = |name: &str, extra: &[&str]| {
            let args = [
                &["--method", method, "--rounds", "2", "--lr", "0.05"][..],
                extra,
            ]
            .concat();
            let o = run(tmp.path(), name, &args);
            assert!(o.status.success(), "{method} {extra:?}: {}", stderr(&o));
            std::fs::read(tmp.path().join(name).join("adapter-last.safetensors")).unwrap()
        };
        let sgd = adapters(
            &format!("{method}-sgd"),
            &["--optimizer", "sgd", "--lr-schedule", "cosine"],
        );
        let adam = adapters(&format!("{method}-adam"), &[]);
        assert_ne!(sgd, adam, "{method}: SGD trained as Adam did");
    }
}

/// The rate of each round reaches the trainer: a warm-up at the base rate is no warm-up, a
/// warm-up at a tiny rate changes the result, and so does round 2's cosine rate.
#[test]
fn the_round_schedule_reaches_the_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let adapters = |name: &str, extra: &[&str]| {
        let args = [
            &["--optimizer", "sgd", "--rounds", "2", "--lr", "0.05"][..],
            extra,
        ]
        .concat();
        let o = run(tmp.path(), name, &args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        std::fs::read(tmp.path().join(name).join("adapter-last.safetensors")).unwrap()
    };
    let plain = adapters("plain", &[]);
    let same_rate = adapters("same", &["--warmup-rounds", "1", "--warmup-lr", "0.05"]);
    assert_eq!(
        plain, same_rate,
        "a warm-up at the base rate changed the run"
    );
    let tiny = adapters("tiny", &["--warmup-rounds", "1", "--warmup-lr", "1e-9"]);
    assert_ne!(plain, tiny, "the warm-up rate did not reach the trainer");
    let cosine = adapters("cosine", &["--lr-schedule", "cosine"]);
    assert_ne!(
        plain, cosine,
        "round 2's cosine rate did not reach the trainer"
    );
}
