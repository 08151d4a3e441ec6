//! `fedclip sweep` and `fedclip table` end to end on the bundled PACS-mini and tiny model: a
//! sweep's runs equal separate `fedclip run`s, killed sweeps rerun to the same bytes, parallel
//! shards make one sweep, the table's numbers are the summaries', and bad input is named.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const METHODS: &str = "fedclip,zeroshot";
const SEEDS: &str = "0,1";
const ROUNDS: &str = "3";

fn fedclip(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedclip"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The sweep of the proofs: 2 methods × 4 held-out domains × 2 seeds, 3 rounds.
fn sweep_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "sweep",
        "--device",
        "cpu",
        "--methods",
        METHODS,
        "--test-domains",
        "all",
        "--seeds",
        SEEDS,
        "--rounds",
        ROUNDS,
        "--lr",
        "5e-3",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.to_str().unwrap().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn sweep(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let args = sweep_args(out, extra);
    fedclip(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
}

/// One uninterrupted sweep, shared by the tests that compare against it.
fn reference() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static SWEEP: OnceLock<std::path::PathBuf> = OnceLock::new();
    SWEEP.get_or_init(|| {
        let tmp = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        let dir = tmp.path().join("sweep");
        let o = sweep(&dir, &[], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        dir
    })
}

/// Every file under `dir` as text or bytes, keyed by relative path, with what may differ
/// between two equal sweeps taken out: timings and cache counts in `summary.json`, the run's
/// absolute folder in `config.json` and `sweep.json`, the lock files' holders, the
/// checkpoint (it carries the training time), and the feature cache itself.
fn comparable_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "feature-cache" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".fedclip") || name == "state.safetensors" {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let bytes = match name.as_str() {
                "summary.json" => strip_timings(&bytes),
                "config.json" | "sweep.json" => String::from_utf8(bytes)
                    .unwrap()
                    .replace(dir.to_str().unwrap(), "<sweep>")
                    .into_bytes(),
                _ => bytes,
            };
            files.insert(rel, bytes);
        }
    }
    files
}

fn strip_timings(bytes: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    for k in [
        "seconds_extracting",
        "seconds_training",
        "images_extracted",
        "images_from_cache",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    serde_json::to_vec_pretty(&v).unwrap()
}

fn assert_same_sweep(a: &Path, b: &Path) {
    let (fa, fb) = (comparable_files(a), comparable_files(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "different files"
    );
    for (name, bytes) in &fa {
        assert!(
            bytes == &fb[name],
            "{name} differs:\n{}\n---\n{}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&fb[name])
        );
    }
}

fn cells() -> Vec<String> {
    let mut names = Vec::new();
    for m in METHODS.split(',') {
        for d in ["art_painting", "cartoon", "photo", "sketch"] {
            for s in SEEDS.split(',') {
                names.push(format!("{m}-{d}-seed{s}"));
            }
        }
    }
    names
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_sweep_equals_its_separate_runs_and_encodes_each_image_once() {
    let sweep_dir = reference();
    let names = cells();
    assert_eq!(names.len(), 16);
    let extracted: u64 = (names.iter())
        .map(|n| {
            summary(&sweep_dir.join(n))["images_extracted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        extracted, 560,
        "the 560 bundled images are encoded once for the sweep"
    );
    assert_eq!(summary(&sweep_dir.join(&names[0]))["images_extracted"], 560);

    // The same 16 cells as `fedclip run` commands, in a folder of their own, sharing the
    // sweep's cache (so they extract nothing).
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("sweep");
    let cache = sweep_dir.join("feature-cache");
    for name in &names {
        let (method, rest) = name.split_once('-').unwrap();
        let (domain, seed) = rest.rsplit_once("-seed").unwrap();
        let out = runs.join(name);
        let o = fedclip(
            &[
                "run",
                "--device",
                "cpu",
                "--method",
                method,
                "--test-domain",
                domain,
                "--seed",
                seed,
                "--rounds",
                ROUNDS,
                "--lr",
                "5e-3",
                "--cache-dir",
                cache.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(summary(&out)["images_extracted"], 0);
        // The runs' config.json names the cache by its place; the sweep's is inside it.
        let config = std::fs::read_to_string(out.join("config.json")).unwrap();
        std::fs::write(
            out.join("config.json"),
            config.replace(sweep_dir.to_str().unwrap(), runs.to_str().unwrap()),
        )
        .unwrap();
    }
    let mut want = comparable_files(sweep_dir);
    want.retain(|k, _| names.iter().any(|n| k.starts_with(&format!("{n}/"))));
    let got = comparable_files(&runs);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(bytes == &got[name], "{name} differs from fedclip run's");
    }
}

/// The table recomputed here from each run's summary.json: the long CSV holds exactly the
/// summaries' numbers, and each cell of table.md is their mean ± sample std in percent.
#[test]
fn the_table_is_the_summaries_mean_and_sample_std() {
    let sweep_dir = reference();
    let csv = std::fs::read_to_string(sweep_dir.join("table.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("method,test_domain,seed,metric,value,status")
    );
    let mut held_out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut rows = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[5], "finished", "{line}");
        let s = summary(&sweep_dir.join(format!("{}-{}-seed{}", f[0], f[1], f[2])));
        let want = match f[3] {
            "held_out_test_accuracy" => s["held_out_test_accuracy"][f[1]].as_f64().unwrap(),
            "mean_client_test_accuracy" => s["mean_client_test_accuracy"].as_f64().unwrap(),
            other => panic!("unexpected metric {other}"),
        };
        assert_eq!(f[4].parse::<f64>().unwrap(), want, "{line}");
        if f[3] == "held_out_test_accuracy" {
            held_out
                .entry((f[0].to_string(), f[1].to_string()))
                .or_default()
                .push(want);
        }
        rows += 1;
    }
    assert_eq!(rows, 16 * 2, "two numbers for each of the 16 runs");
    let md = std::fs::read_to_string(sweep_dir.join("table.md")).unwrap();
    for method in METHODS.split(',') {
        let line = (md.lines())
            .find(|l| l.starts_with(&format!("| {method} |")))
            .unwrap();
        let mut expected = format!("| {method} |");
        let mut per_seed = [0.0f64; 2];
        for d in ["art_painting", "cartoon", "photo", "sketch"] {
            let v = &held_out[&(method.to_string(), d.to_string())];
            assert_eq!(v.len(), 2);
            for (i, x) in v.iter().enumerate() {
                per_seed[i] += x / 4.0;
            }
            expected.push_str(&format!(" {} |", mean_std(v)));
        }
        expected.push_str(&format!(" {} |", mean_std(&per_seed)));
        assert_eq!(line, expected);
    }
    let tex = std::fs::read_to_string(sweep_dir.join("table.tex")).unwrap();
    assert!(
        tex.contains("\\toprule") && tex.contains("art\\_painting & cartoon"),
        "{tex}"
    );
    let svg = std::fs::read_to_string(sweep_dir.join("table.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("zeroshot") && svg.contains("average"));
}

fn mean_std(v: &[f64]) -> String {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * var.sqrt())
}

/// A plain kill -9 of a sweep `ms` milliseconds after its start (it may have ended by then).
fn sweep_killed_after(dir: &Path, ms: u64) {
    let args = sweep_args(dir, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();
}

/// Kill -9 during the extraction, then the FEDCLIP_ABORT_AT crash points (a run dies right
/// after a round's metrics or its checkpoint; each rerun resumes the run the last one left
/// and dies in the next at another point), then kills -9 at moments among the rounds; the
/// last rerun finishes the sweep.
#[test]
fn a_sweep_killed_at_many_moments_ends_equal_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    sweep_killed_after(&dir, 700);
    for spec in ["1:metrics", "0:state", "2:metrics", "1:state", "0:metrics"] {
        let o = sweep(&dir, &[], &[("FEDCLIP_ABORT_AT", spec)]);
        assert!(
            !o.status.success() && stderr(&o).contains("FEDCLIP_ABORT_AT: aborting"),
            "{spec}: {}",
            stderr(&o)
        );
    }
    for ms in [150, 400, 650, 900] {
        sweep_killed_after(&dir, ms);
    }
    let last = sweep(&dir, &[], &[]);
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(
        stderr(&last).contains("finished before; skipped"),
        "{}",
        stderr(&last)
    );
    assert_same_sweep(reference(), &dir);
}

#[test]
fn three_shards_in_parallel_make_one_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let args = sweep_args(&dir, &["--shard", &format!("{i}/3")]);
            Command::new(env!("CARGO_BIN_EXE_fedclip"))
                .args(&args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        // 16 cells: shard 0 takes 6 (0, 3, …, 15), shards 1 and 2 take 5.
        let share = if i == 0 { 6 } else { 5 };
        assert!(
            stderr(&o).contains(&format!("sweep: {share} run now")),
            "{}",
            stderr(&o)
        );
    }
    assert_same_sweep(reference(), &dir);
}

#[test]
fn a_second_sweep_on_a_busy_cell_skips_it_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let cache = reference().join("feature-cache");
    let args = [
        "sweep",
        "--device",
        "cpu",
        "--methods",
        "fedclip",
        "--test-domains",
        "photo",
        "--seeds",
        "0,1",
        "--rounds",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ];
    // Shard 1/2 runs seed 1 and leaves seed 0 not started.
    let o = fedclip(&[&args[..], &["--shard", "1/2"]].concat(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(md.contains("fedclip-photo-seed0: not started"), "{md}");
    assert!(md.contains("(n = 1)"), "{md}");
    // Hold seed 0's lock as a sweep running it would.
    let cell = dir.join("fedclip-photo-seed0");
    std::fs::create_dir_all(&cell).unwrap();
    let lock = std::fs::File::create(cell.join(".fedclip-run.lock")).unwrap();
    fs4::fs_std::FileExt::try_lock_exclusive(&lock).unwrap();
    let o = fedclip(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("being run by another process"),
        "{}",
        stderr(&o)
    );
    let md = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(md.contains("fedclip-photo-seed0: not started"), "{md}");
    let csv = std::fs::read_to_string(dir.join("table.csv")).unwrap();
    assert!(
        csv.contains("fedclip,photo,0,held_out_test_accuracy,,not started"),
        "{csv}"
    );
    drop(lock);
    let o = fedclip(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(!md.contains("without results"), "{md}");
}

fn refused(args: &[&str], wants: &[&str]) {
    let o = fedclip(args, &[]);
    assert!(!o.status.success(), "accepted {args:?}");
    for w in wants {
        assert!(
            stderr(&o).contains(w),
            "{args:?}: wanted {w:?} in {}",
            stderr(&o)
        );
    }
}

#[test]
fn bad_sweeps_are_refused_naming_the_thing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let out = out.to_str().unwrap();
    let base = ["sweep", "--device", "cpu", "--rounds", "1", "--out", out];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    refused(
        &with(&["--methods", "fedclip,nope"]),
        &["--methods: unknown method \"nope\"", "zeroshot"],
    );
    refused(
        &with(&["--methods", "zeroshot", "--test-domains", "photo,mars"]),
        &[
            "--test-domains: unknown domain \"mars\"",
            "art_painting, cartoon",
        ],
    );
    refused(
        &with(&["--methods", "zeroshot", "--seeds", "0,1,0"]),
        &["--seeds: seed 0 is given twice"],
    );
    refused(
        &with(&["--methods", "zeroshot", "--shard", "3/3"]),
        &["--shard 3/3", "below the count 3"],
    );
    refused(
        &with(&["--methods", "zeroshot", "--seed", "4"]),
        &["--seed is set per run by the sweep; use --seeds"],
    );
    refused(
        &["sweep", "--methods", "zeroshot"],
        &["fedclip sweep needs --out"],
    );
    assert!(!Path::new(out).exists(), "a refused sweep wrote its folder");

    // A sweep directory answers only to its own settings.
    let cache: &'static str = reference()
        .join("feature-cache")
        .to_str()
        .unwrap()
        .to_string()
        .leak();
    let one = |rounds: &'static str, seeds: &'static str| {
        with(&[
            "--methods",
            "zeroshot",
            "--test-domains",
            "photo",
            "--seeds",
            seeds,
            "--cache-dir",
            cache,
            "--lr",
            rounds,
        ])
    };
    let o = fedclip(&one("1e-3", "0"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    refused(
        &one("2e-3", "0"),
        &["--lr (lr): now 0.002, the sweep has 0.001"],
    );
    refused(&one("1e-3", "0,1"), &["--seeds: now 0,1, the sweep has 0"]);
    // A folder that is not a sweep is not taken over.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    refused(
        &[
            "sweep",
            "--methods",
            "zeroshot",
            "--cache-dir",
            cache,
            "--out",
            other.to_str().unwrap(),
        ],
        &["is not empty and holds no sweep.json"],
    );
}

/// Copies a run directory and rewrites one setting of its config.json.
fn copy_run_with(src: &Path, dst: &Path, key: &str, value: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "summary.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("config.json")).unwrap()).unwrap();
    cfg[key] = value.into();
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn table_refuses_mixed_datasets_or_models_and_lists_unfinished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = reference().join("fedclip-photo-seed0");
    let out = tmp.path().join("t");
    for (key, what) in [
        ("data", "different datasets"),
        ("model", "different models"),
    ] {
        let other = tmp.path().join(key);
        copy_run_with(&run, &other, key, "/elsewhere/x");
        refused(
            &[
                "table",
                run.to_str().unwrap(),
                other.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[what, "/elsewhere/x", run.to_str().unwrap()],
        );
    }
    refused(
        &[
            "table",
            tmp.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["neither a sweep directory", "nor a run directory"],
    );
    refused(&["table", run.to_str().unwrap()], &["give --out"]);

    // An unfinished run (no summary) is listed, and its cell counts one seed fewer.
    let unfinished = tmp.path().join("unfinished");
    copy_run_with(
        &reference().join("fedclip-photo-seed1"),
        &unfinished,
        "seed",
        "",
    );
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(unfinished.join("config.json")).unwrap())
            .unwrap();
    cfg["seed"] = 1.into();
    std::fs::write(unfinished.join("config.json"), cfg.to_string()).unwrap();
    std::fs::remove_file(unfinished.join("summary.json")).unwrap();
    let o = fedclip(
        &[
            "table",
            run.to_str().unwrap(),
            unfinished.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("(n = 1)"), "{md}");
    assert!(md.contains("unfinished (0 of 3 rounds)"), "{md}");
    let csv = std::fs::read_to_string(out.join("table.csv")).unwrap();
    assert!(csv.contains("fedclip,photo,1,held_out_test_accuracy,,unfinished (0 of 3 rounds)"));
}

/// A run that fails is recorded, the others go on, the sweep exits with an error naming it,
/// and the table lists it (fine-tuning needs a global model: zero-shot has none), while the
/// fine-tuned personalization row appears for the method that ran.
#[test]
fn a_failed_run_is_listed_and_the_rest_of_the_sweep_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let cache = reference().join("feature-cache");
    let o = fedclip(
        &[
            "sweep",
            "--device",
            "cpu",
            "--methods",
            "zeroshot,fedclip",
            "--test-domains",
            "photo",
            "--seeds",
            "0",
            "--rounds",
            "1",
            "--finetune-local-steps",
            "2",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("1 run(s) of the sweep failed") && err.contains("zeroshot-photo-seed0: "),
        "{err}"
    );
    assert!(
        dir.join("fedclip-photo-seed0/summary.json").is_file(),
        "{err}"
    );
    let md = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(
        md.contains("zeroshot-photo-seed0: failed: --finetune-local-steps needs a method"),
        "{md}"
    );
    assert!(md.contains("| fedclip (fine-tuned) |"), "{md}");
    let csv = std::fs::read_to_string(dir.join("table.csv")).unwrap();
    assert!(
        csv.contains("fedclip,photo,0,mean_finetuned_test_accuracy,"),
        "{csv}"
    );
    assert!(
        // The message holds commas, so the field is quoted.
        csv.contains("zeroshot,photo,0,held_out_test_accuracy,,\"failed: --finetune"),
        "{csv}"
    );
}
