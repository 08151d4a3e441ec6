//! `fedclip run --method promptfl | coop` on the bundled PACS-mini and tiny model: both run
//! end to end and repeat their bytes with the same seed; the adapter files hold CoOp's
//! `prompt_learner.ctx`; bytes per round are n_ctx·d_text·4 each way per sampled client (×C
//! with --csc, none for coop); server optimisers, aggregation, sampling and fine-tuning work
//! for promptfl; the prompt flags' bad values are refused by name.

use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

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

/// The shape of `<prefix>prompt_learner.ctx` in an adapter file and its layout line.
fn ctx_shape(file: &Path, prefix: &str) -> (Vec<usize>, String) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let layout = meta.metadata().as_ref().unwrap()["layout"].clone();
    (
        st.tensor(&format!("{prefix}prompt_learner.ctx"))
            .unwrap()
            .shape()
            .to_vec(),
        layout,
    )
}

#[test]
fn promptfl_and_coop_run_and_repeat_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (d, c, clients) = (32u64, 7u64, 3u64);
    let cases = [
        ("promptfl", vec!["--n-ctx", "4"], 4 * d, vec![4, 32], ""),
        (
            "promptfl",
            vec!["--n-ctx", "3", "--csc", "--class-token-position", "middle"],
            c * 3 * d,
            vec![7, 3, 32],
            "",
        ),
        (
            "coop",
            vec![
                "--ctx-init",
                "a photo of a",
                "--class-token-position",
                "front",
            ],
            4 * d,
            vec![4, 32],
            "cartoon.",
        ),
    ];
    for (i, (m, extra, p, shape, prefix)) in cases.into_iter().enumerate() {
        let (a, b) = (
            tmp.path().join(format!("{m}-{i}-a")),
            tmp.path().join(format!("{m}-{i}-b")),
        );
        let mut args = vec!["--method", m];
        args.extend(&extra);
        ok(run(&a, &cache, &args));
        ok(run(&b, &cache, &args));
        for f in ["metrics.csv", "summary.json"] {
            let read = |dir: &Path| std::fs::read_to_string(dir.join(f)).unwrap();
            if f == "summary.json" {
                assert_eq!(summary(&a), summary(&b), "{m} {extra:?}: summary.json");
            } else {
                assert_eq!(read(&a), read(&b), "{m} {extra:?}: {f}");
            }
        }
        let s = summary(&a);
        assert_eq!(s["method"], m);
        assert_eq!(
            s["adapter_parameters"].as_u64().unwrap(),
            p,
            "{m} {extra:?}"
        );
        let each_way = if m == "coop" { 0 } else { clients * p * 4 };
        assert_eq!(
            s["bytes_down_per_round"],
            serde_json::json!(vec![each_way; 2]),
            "{m} {extra:?}"
        );
        assert_eq!(
            s["bytes_up_per_round"],
            serde_json::json!(vec![each_way; 2]),
            "{m} {extra:?}"
        );
        let file = a.join("adapter-last.safetensors");
        let (got, layout) = ctx_shape(&file, prefix);
        assert_eq!(got, shape, "{m} {extra:?}");
        assert!(layout.contains("CoOp prompt learner"), "{layout}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(b.join("adapter-last.safetensors")).unwrap(),
            "{m} {extra:?}: adapter file"
        );
    }
}

#[test]
fn promptfl_takes_server_optimisers_sampling_aggregation_and_finetuning() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("run");
    ok(run(
        &out,
        &cache,
        &[
            "--method",
            "promptfl",
            "--n-ctx",
            "2",
            "--server-opt",
            "fedadam",
            "--aggregate",
            "weighted",
            "--sample-fraction",
            "0.67",
            "--finetune-local-steps",
            "2",
        ],
    ));
    let s = summary(&out);
    assert_eq!(s["server_opt"], "fedadam");
    assert_eq!(s["finetuned_test_accuracy"].as_object().unwrap().len(), 3);
}

#[test]
fn prompt_flags_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let refused = |extra: &[&str], want: &[&str]| {
        let o = run(&tmp.path().join("x"), &cache, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && want.iter().all(|w| err.contains(w)),
            "{extra:?}: {err}"
        );
    };
    refused(
        &["--method", "promptfl", "--n-ctx", "0"],
        &["--n-ctx must be at least 1, got 0"],
    );
    refused(
        &[
            "--method",
            "coop",
            "--n-ctx",
            "3",
            "--ctx-init",
            "a photo of a",
        ],
        &["--n-ctx 3 disagrees with --ctx-init \"a photo of a\", which is 4 tokens"],
    );
    // 1 + 75 + "<name>." + EOS: over 77 for every PACS class.
    refused(
        &["--method", "promptfl", "--n-ctx", "75"],
        &["over the text tower's 77 positions", "--n-ctx"],
    );
    refused(
        &["--method", "fedclip", "--csc", "--n-ctx", "4"],
        &[
            "--n-ctx, --csc only apply to a method that learns prompts",
            "not --method fedclip",
        ],
    );
    refused(
        &[
            "--method",
            "linear-probe",
            "--class-token-position",
            "front",
        ],
        &["--class-token-position only apply to a method that learns prompts"],
    );
    refused(
        &["--method", "tip-adapter", "--ctx-init", "a photo"],
        &["--ctx-init only apply"],
    );
}

/// A promptfl run killed after round 2's checkpoint and resumed equals the uninterrupted run
/// (Adam moments kept across rounds, the server's FedAdam moments, the context).
#[test]
fn resumed_promptfl_equals_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let args = [
        "--method",
        "promptfl",
        "--n-ctx",
        "3",
        "--ctx-init",
        "a photo of",
        "--rounds",
        "4",
        "--keep-optimizer-state",
        "--server-opt",
        "fedadam",
    ];
    let whole = tmp.path().join("whole");
    ok(run(&whole, &cache, &args));
    let cut = tmp.path().join("cut");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(["run", "--device", "cpu", "--lr", "5e-3", "--out"])
        .arg(&cut)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .env("FEDCLIP_ABORT_AT", "2:state");
    assert!(
        !cmd.output().unwrap().status.success(),
        "the abort hook did not fire"
    );
    let resumed = ok(run(&cut, &cache, &[&args[..], &["--resume"]].concat()));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resumed after round"));
    assert_eq!(summary(&whole), summary(&cut));
    for f in [
        "metrics.csv",
        "adapter-last.safetensors",
        "adapter-best.safetensors",
    ] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
}
