//! Every method's outputs on the bundled PACS-mini, byte for byte against files committed
//! before the federated loop was split into stages and strategies: `metrics.csv`, the
//! adapters, and `summary.json` without its timings and cache counts (which depend on the
//! machine and on what the cache already held) and the model path (which depends on the
//! checkout). `FEDCLIP_BLESS=1` rewrites the files instead; do that only for a change that is
//! meant to move a figure, and say so in the commit.
//!
//! The bytes are those of one numeric path: the `gemm` crate picks its f32 kernels at run time
//! from the CPU (AVX-512, FMA or scalar on x86), and they sum in different orders, so the last
//! bits of features and adapters differ between paths. The files are kept per path
//! (`tests/fixtures/runs/<path>/`); on a path with none committed the comparison is skipped
//! and says so. These bytes are the reference CPU kernels' (`model::ops` over `gemm`), so the
//! runs here set `FEDCLIP_ISA=reference`; the packed kernels are checked against that
//! reference within their error model in tests/cpu_kernels.rs and tests/cpu_engine.rs.

mod common;

use common::repo;
use std::path::Path;
use std::process::Command;

/// (fixture name, extra flags). Every case runs 3 rounds at lr 5e-3 on the CPU.
const CASES: &[(&str, &[&str])] = &[
    ("fedclip", &["--method", "fedclip"]),
    ("fedprox", &["--method", "fedprox", "--mu", "0.5"]),
    ("local", &["--method", "local"]),
    ("zeroshot", &["--method", "zeroshot"]),
    // Sampling, weighted averaging, kept moments, the class loss, several epochs, AdamW.
    (
        "fedclip-sampled",
        &[
            "--method",
            "fedclip",
            "--clients-per-domain",
            "2",
            "--sample-fraction",
            "0.5",
            "--aggregate",
            "weighted",
            "--keep-optimizer-state",
            "--loss",
            "class",
            "--local-epochs",
            "2",
            "--optimizer",
            "adamw",
            "--batch",
            "16",
        ],
    ),
    (
        "local-sampled",
        &[
            "--method",
            "local",
            "--clients-per-domain",
            "2",
            "--sample-fraction",
            "0.5",
        ],
    ),
];

/// The kernels gemm 0.19 (built with `x86-v4`) runs on this CPU, as its `init_gemm_fn`
/// chooses them.
fn gemm_path() -> String {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let path = if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "fma"
        } else {
            "scalar"
        };
        format!("x86-{path}")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// `summary.json` lines that depend on the machine, the cache or the checkout.
fn comparable_summary(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let key = l.trim_start();
            !["\"seconds_", "\"images_", "\"model\":"]
                .iter()
                .any(|k| key.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The byte counts added when bytes were split into the two ways (the only fields added to
/// these fixtures since they were committed): each way sums its rounds, one entry per round
/// run, and the two ways add up to the `bytes_communicated` the fixtures always had.
fn check_bytes_split(name: &str, summary: &str) {
    let s: serde_json::Value = serde_json::from_str(summary).unwrap();
    let int = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{name}: no {k}"));
    assert_eq!(
        int("bytes_down") + int("bytes_up"),
        int("bytes_communicated"),
        "{name}: bytes_down + bytes_up"
    );
    for way in ["down", "up"] {
        let rounds: Vec<u64> = (s[format!("bytes_{way}_per_round")].as_array())
            .unwrap_or_else(|| panic!("{name}: no bytes_{way}_per_round"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            rounds.len() as u64,
            int("rounds_run"),
            "{name}: rounds of {way}"
        );
        assert_eq!(
            rounds.iter().sum::<u64>(),
            int(&format!("bytes_{way}")),
            "{name}: {way}"
        );
    }
}

fn outputs(run: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let read = |f: &str| std::fs::read(run.join(f)).ok();
    let mut files = vec![(
        "metrics.csv",
        read("metrics.csv").expect("metrics.csv written"),
    )];
    let summary = String::from_utf8(read("summary.json").expect("summary.json written")).unwrap();
    files.push(("summary.json", comparable_summary(&summary).into_bytes()));
    for f in ["adapter-last.safetensors", "adapter-best.safetensors"] {
        if let Some(bytes) = read(f) {
            files.push((f, bytes));
        }
    }
    files
}

#[test]
fn every_method_reproduces_its_committed_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("FEDCLIP_BLESS").is_some();
    let path = gemm_path();
    let committed_runs = repo().join("tests/fixtures/runs").join(&path);
    if !bless && !committed_runs.is_dir() {
        println!(
            "skipped: no outputs committed for the {path} numeric path \
             (FEDCLIP_BLESS=1 on such a machine writes them)"
        );
        return;
    }
    println!("comparing with the outputs of the {path} numeric path");
    let model = repo().join("weights/tiny-clip");
    let data = repo().join("data/pacs-mini");
    for (name, extra) in CASES {
        let out = tmp.path().join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_fedclip"))
            .env("FEDCLIP_ISA", "reference")
            .args(["run", "--device", "cpu", "--rounds", "3", "--lr", "5e-3"])
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .arg("--out")
            .arg(&out)
            .args(*extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let fixtures = committed_runs.join(name);
        let got = outputs(&out);
        if bless {
            std::fs::create_dir_all(&fixtures).unwrap();
            for (f, bytes) in &got {
                std::fs::write(fixtures.join(f), bytes).unwrap();
            }
            continue;
        }
        let committed = std::fs::read_dir(&fixtures)
            .unwrap_or_else(|e| panic!("{}: {e}", fixtures.display()))
            .count();
        assert_eq!(committed, got.len(), "{name}: files written vs committed");
        for (f, bytes) in &got {
            if *f == "summary.json" {
                check_bytes_split(name, std::str::from_utf8(bytes).unwrap());
            }
            let want = std::fs::read(fixtures.join(f))
                .unwrap_or_else(|e| panic!("{name}/{f}: {e} (FEDCLIP_BLESS=1 writes it)"));
            assert!(
                *bytes == want,
                "{name}/{f} differs from tests/fixtures/runs/{path}/{name}/{f}"
            );
        }
    }
}
