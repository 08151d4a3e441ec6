//! `fedclip run` with the methods of `src/heads/` on the bundled PACS-mini and tiny model:
//! every one runs end to end and repeats its bytes with the same seed; the bytes each way are
//! what the README's method table says; the linear probe starts where zero-shot is; settings
//! a method cannot use are refused by name.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const NEW_METHODS: &[&str] = &[
    "linear-probe",
    "clip-adapter",
    "tip-adapter",
    "tip-adapter-f",
];

/// `fedclip run` on the CPU, 2 rounds at lr 5e-3 unless `extra` says otherwise.
fn run(out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(["run", "--device", "cpu"]);
    for (flag, value) in [("--rounds", "2"), ("--lr", "5e-3")] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    let o = cmd
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    o
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn summary(dir: &Path) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    for k in [
        "seconds_extracting",
        "seconds_training",
        "images_extracted",
        "images_from_cache",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn every_new_method_runs_and_repeats_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for m in NEW_METHODS {
        let (a, b) = (
            tmp.path().join(format!("{m}-a")),
            tmp.path().join(format!("{m}-b")),
        );
        ok(run(&a, &cache, &["--method", m]));
        ok(run(&b, &cache, &["--method", m]));
        for f in [
            "metrics.csv",
            "adapter-last.safetensors",
            "adapter-best.safetensors",
        ] {
            let bytes =
                |d: &Path| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{m}/{f}: {e}"));
            assert!(
                bytes(&a) == bytes(&b),
                "{m}: {f} differs between two runs of one seed"
            );
        }
        let s = summary(&a);
        assert_eq!(s, summary(&b), "{m}: summary.json");
        assert_eq!(s["method"], *m);
        let rows = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
        let rounds = if *m == "tip-adapter" { 1 } else { 2 };
        assert_eq!(u(&s, "rounds_run"), rounds, "{m}");
        assert!(rows.lines().count() > 1, "{m}: metrics rows");
    }
}

/// Bytes per round: the linear probe and CLIP-Adapter send P f32 values each way per sampled
/// client (P = C·d + C and 2·d·d/4; the bundled model has d = 32 and PACS has C = 7);
/// Tip-Adapter sends each client's cache up, N_k (4d + 4) bytes, and nothing down.
#[test]
fn bytes_each_way_are_the_families_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (d, c, clients) = (32u64, 7u64, 3u64);
    for (m, p) in [
        ("linear-probe", c * d + c),
        ("clip-adapter", 2 * d * (d / 4)),
    ] {
        let out = tmp.path().join(m);
        ok(run(&out, &cache, &["--method", m]));
        let s = summary(&out);
        assert_eq!(u(&s, "adapter_parameters"), p, "{m}");
        assert_eq!(
            s["bytes_down_per_round"],
            serde_json::json!(vec![clients * p * 4; 2]),
            "{m}"
        );
        assert_eq!(
            s["bytes_up_per_round"],
            serde_json::json!(vec![clients * p * 4; 2]),
            "{m}"
        );
    }
    let out = tmp.path().join("tip");
    ok(run(&out, &cache, &["--method", "tip-adapter"]));
    let s = summary(&out);
    let train: u64 = (s["best_round_accuracy"].as_object().unwrap().keys())
        .filter(|k| {
            !s["held_out_test_accuracy"]
                .as_object()
                .unwrap()
                .contains_key(*k)
        })
        .count() as u64;
    assert_eq!(train, clients);
    assert_eq!(u(&s, "bytes_down"), 0);
    let up = u(&s, "bytes_up");
    assert!(
        up > 0 && up.is_multiple_of(4 * d + 4),
        "tip-adapter up {up}: whole samples of 4d + 4"
    );
    assert_eq!(s["bytes_up_per_round"], serde_json::json!([up]));
}

/// At a learning rate too small to move an f32 parameter, the linear probe's first round
/// still holds its starting point, W = s·t̂ and b = 0: every accuracy in metrics.csv equals
/// zero-shot's, on the bundled data.
#[test]
fn linear_probe_starts_as_zero_shot_on_the_bundled_data() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (probe, zs) = (tmp.path().join("probe"), tmp.path().join("zs"));
    ok(run(
        &probe,
        &cache,
        &["--method", "linear-probe", "--rounds", "1", "--lr", "1e-30"],
    ));
    ok(run(&zs, &cache, &["--method", "zeroshot"]));
    let accuracies = |d: &Path| -> Vec<String> {
        (std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines())
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
    };
    assert_eq!(accuracies(&probe), accuracies(&zs));
}

#[test]
fn server_optimisers_and_finetuning_work_for_the_global_families() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for m in ["linear-probe", "clip-adapter"] {
        let out = tmp.path().join(m);
        ok(run(
            &out,
            &cache,
            &[
                "--method",
                m,
                "--server-opt",
                "fedadam",
                "--finetune-local-steps",
                "2",
            ],
        ));
        let s = summary(&out);
        assert_eq!(s["server_opt"], "fedadam");
        assert_eq!(
            s["finetuned_test_accuracy"].as_object().unwrap().len(),
            3,
            "{m}"
        );
    }
}

#[test]
fn settings_a_method_cannot_use_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let refused = |extra: &[&str], want: &str| {
        let o = run(&tmp.path().join("x"), &cache, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
    };
    refused(
        &["--method", "tip-adapter", "--server-opt", "fedadam"],
        "--server-opt fedadam needs a method with a global model",
    );
    refused(
        &["--method", "tip-adapter-f", "--finetune-local-steps", "2"],
        "--finetune-local-steps needs a method with a global model",
    );
    refused(
        &["--method", "clip-adapter", "--clip-adapter-ratio", "1.5"],
        "--clip-adapter-ratio must be finite and in [0, 1], got 1.5",
    );
    refused(
        &["--method", "tip-adapter", "--tip-beta=-1"],
        "--tip-beta must be finite and zero or positive, got -1",
    );
    refused(
        &["--method", "linear-probe", "--tip-alpha", "nan"],
        "--tip-alpha must be finite",
    );
}
