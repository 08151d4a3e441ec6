//! `fedclip run` end to end on the bundled PACS-mini and tiny model: reproducible, resumable
//! after a kill, extracting features only once, and clear about bad datasets.

mod common;

use common::repo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// A run of the default protocol with a few rounds and a learning rate that moves things.
fn run_args<'a>(out: &'a str, cache: &'a str, rounds: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--device",
        "cpu",
        "--rounds",
        rounds,
        "--lr",
        "5e-3",
        "--out",
        out,
        "--cache-dir",
        cache,
    ]
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tmp_paths(tmp: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    (tmp.path().join("run"), tmp.path().join("cache"))
}

#[test]
fn rerun_with_same_seed_is_identical_and_uses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let out2 = tmp.path().join("run2");
    let first = fedclip(
        &run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "3"),
        &[],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let second = fedclip(
        &run_args(out2.to_str().unwrap(), cache.to_str().unwrap(), "3"),
        &[],
    );
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("0 extracted, 560 from cache"),
        "{}",
        stderr(&second)
    );
    let metrics = read(&out.join("metrics.csv"));
    assert_eq!(metrics, read(&out2.join("metrics.csv")));
    // 3 rounds × (held-out test + 3 clients × train/val/test) rows and a header.
    assert_eq!(metrics.lines().count(), 1 + 3 * 10);
    assert_eq!(
        read(&out.join("splits.json")),
        read(&out2.join("splits.json"))
    );
    for f in [
        "config.json",
        "summary.json",
        "accuracy.svg",
        "adapter-best.safetensors",
        "adapter-last.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    assert_eq!(summary["images_extracted"], 560);
    assert_eq!(summary["model_weights_random"], true);
    assert!(summary["held_out_test_accuracy"]["art_painting"].is_number());
    // Training losses are recorded and move.
    let losses: Vec<f64> = metrics
        .lines()
        .filter(|l| l.contains(",photo,train,"))
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[0] != losses[2], "loss did not change: {losses:?}");
}

#[test]
fn splits_json_lists_each_domain_as_numpy_splits_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let o = fedclip(
        &run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "1"),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let splits: serde_json::Value = serde_json::from_str(&read(&out.join("splits.json"))).unwrap();
    let photo = &splits["clients"]["photo"];
    // 140 files: int(140·0.6) = 84 train, 28 val, 28 test.
    assert_eq!(photo["train"].as_array().unwrap().len(), 84);
    assert_eq!(photo["val"].as_array().unwrap().len(), 28);
    assert_eq!(photo["test"].as_array().unwrap().len(), 28);
    assert_eq!(
        splits["clients"]["art_painting"]["test"]
            .as_array()
            .unwrap()
            .len(),
        140
    );
    assert!(photo["train"][0].as_str().unwrap().starts_with("photo/"));
}

fn resume_equals_uninterrupted(point: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let whole = tmp.path().join("whole");
    let whole_args = [
        &run_args(whole.to_str().unwrap(), cache.to_str().unwrap(), "5")[..],
        extra,
    ]
    .concat();
    let o = fedclip(&whole_args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let args = [
        &run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "5")[..],
        extra,
    ]
    .concat();
    let spec = format!("2:{point}");
    let killed = fedclip(&args, &[("FEDCLIP_ABORT_AT", &spec)]);
    assert!(!killed.status.success(), "the abort hook did not fire");
    // Rerunning without --resume refuses to overwrite the interrupted run.
    let again = fedclip(&args, &[]);
    assert!(
        !again.status.success() && stderr(&again).contains("--resume"),
        "{}",
        stderr(&again)
    );
    let resumed = fedclip(&[&args[..], &["--resume"]].concat(), &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let after = if point == "state" { 3 } else { 2 };
    assert!(
        stderr(&resumed).contains(&format!("resumed after round {after}")),
        "{}",
        stderr(&resumed)
    );
    for f in ["metrics.csv", "summary.json"] {
        let (a, b) = (read(&whole.join(f)), read(&out.join(f)));
        if f == "summary.json" {
            // Timings differ; everything learned must not.
            let strip = |s: &str| -> serde_json::Value {
                let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
                for k in [
                    "seconds_extracting",
                    "seconds_training",
                    "images_extracted",
                    "images_from_cache",
                ] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            };
            assert_eq!(strip(&a), strip(&b), "{f}");
        } else {
            assert_eq!(a, b, "{f} differs after resume");
        }
    }
    assert_eq!(
        std::fs::read(whole.join("adapter-last.safetensors")).unwrap(),
        std::fs::read(out.join("adapter-last.safetensors")).unwrap()
    );
}

#[test]
fn resume_after_a_kill_between_rounds_matches_an_uninterrupted_run() {
    resume_equals_uninterrupted("state", &[]);
}

#[test]
fn resume_keeps_optimiser_moments_and_fedprox_anchor() {
    resume_equals_uninterrupted(
        "state",
        &[
            "--keep-optimizer-state",
            "--method",
            "fedprox",
            "--mu",
            "0.5",
        ],
    );
}

#[test]
fn resume_keeps_the_server_optimisers_moments() {
    resume_equals_uninterrupted("state", &["--server-opt", "fedadam", "--server-lr", "0.01"]);
}

#[test]
fn resume_after_a_kill_mid_checkpoint_matches_an_uninterrupted_run() {
    resume_equals_uninterrupted("metrics", &[]);
}

#[test]
fn resume_keeps_sgds_momentum_under_a_cosine_schedule_with_warmup() {
    resume_equals_uninterrupted(
        "state",
        &[
            "--optimizer",
            "sgd",
            "--momentum",
            "0.8",
            "--keep-optimizer-state",
            "--lr-schedule",
            "cosine",
            "--warmup-rounds",
            "1",
            "--warmup-lr",
            "1e-3",
        ],
    );
}

#[test]
fn resume_of_linear_probe_with_sgd_mid_checkpoint_matches() {
    resume_equals_uninterrupted(
        "metrics",
        &[
            "--method",
            "linear-probe",
            "--optimizer",
            "sgd",
            "--keep-optimizer-state",
            "--lr-schedule",
            "cosine",
        ],
    );
}

#[test]
fn resume_under_a_cosine_schedule_refuses_other_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let (o, c) = (out.to_str().unwrap(), cache.to_str().unwrap());
    let cosine = ["--optimizer", "sgd", "--lr-schedule", "cosine"];
    let killed = fedclip(
        &[&run_args(o, c, "4")[..], &cosine].concat(),
        &[("FEDCLIP_ABORT_AT", "1:state")],
    );
    assert!(!killed.status.success(), "the abort hook did not fire");
    let refused = fedclip(
        &[&run_args(o, c, "6")[..], &cosine, &["--resume"]].concat(),
        &[],
    );
    let err = stderr(&refused);
    assert!(
        !refused.status.success()
            && err.contains("rounds: now 6, saved 4")
            && err.contains("--lr-schedule"),
        "{err}"
    );
    let resumed = fedclip(
        &[&run_args(o, c, "4")[..], &cosine, &["--resume"]].concat(),
        &[],
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
}

#[test]
fn resume_of_a_run_saved_before_the_optimiser_settings_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let args = run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "3");
    let killed = fedclip(&args, &[("FEDCLIP_ABORT_AT", "1:state")]);
    assert!(!killed.status.success(), "the abort hook did not fire");
    // Its config.json as written before momentum and the schedule existed.
    let config_path = out.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&read(&config_path)).unwrap();
    for key in ["momentum", "lr_schedule", "warmup_rounds", "warmup_lr"] {
        assert!(
            config.as_object_mut().unwrap().remove(key).is_some(),
            "{key}"
        );
    }
    std::fs::write(&config_path, config.to_string()).unwrap();
    let resumed = fedclip(&[&args[..], &["--resume"]].concat(), &[]);
    assert!(
        resumed.status.success() && stderr(&resumed).contains("resumed after round 2"),
        "{}",
        stderr(&resumed)
    );
}

#[test]
fn resume_of_a_run_saved_before_the_tokenizer_choice_needs_tokenizer_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let args = run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "3");
    let killed = fedclip(
        &[&args[..], &["--tokenizer", "hf"]].concat(),
        &[("FEDCLIP_ABORT_AT", "2:state")],
    );
    assert!(!killed.status.success(), "the abort hook did not fire");
    // Make its config.json one written before `tokenizer` existed (prompts were then
    // tokenized as `hf` is now).
    let config_path = out.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&read(&config_path)).unwrap();
    assert_eq!(config["tokenizer"], "hf");
    config.as_object_mut().unwrap().remove("tokenizer");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let refused = fedclip(&[&args[..], &["--resume"]].concat(), &[]);
    let err = stderr(&refused);
    assert!(
        !refused.status.success() && err.contains("--resume") && err.contains("tokenizer"),
        "{err}"
    );
    let resumed = fedclip(
        &[&args[..], &["--resume", "--tokenizer", "hf"]].concat(),
        &[],
    );
    assert!(
        resumed.status.success() && stderr(&resumed).contains("resumed after round"),
        "{}",
        stderr(&resumed)
    );
}

#[test]
fn an_unknown_tokenizer_is_named() {
    let o = fedclip(&["run", "--tokenizer", "bert"], &[]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("--tokenizer") && err.contains("openai"),
        "{err}"
    );
}

/// A tiny dataset: two domains, two classes, a few copies of one bundled image.
fn small_dataset(root: &Path) {
    let img = repo().join("data/pacs-mini/photo/dog/056_0001.jpg");
    for d in ["d1", "d2"] {
        for c in ["cat", "dog"] {
            let dir = root.join(d).join(c);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                std::fs::copy(&img, dir.join(format!("{i}.jpg"))).unwrap();
            }
        }
    }
}

fn run_on(root: &Path, extra: &[&str]) -> Output {
    let cache = root.parent().unwrap().join("cache");
    let out = root.parent().unwrap().join("out");
    let args = [
        &[
            "run",
            "--device",
            "cpu",
            "--rounds",
            "1",
            "--data",
            root.to_str().unwrap(),
        ][..],
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        extra,
    ]
    .concat();
    fedclip(&args, &[])
}

#[test]
fn bad_dataset_layouts_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_dataset(&root);
    assert!(run_on(&root, &[]).status.success());

    let o = run_on(&root, &["--test-domain", "nowhere"]);
    assert!(
        !o.status.success() && stderr(&o).contains("nowhere") && stderr(&o).contains("d1"),
        "{}",
        stderr(&o)
    );

    let empty = root.join("d2/dog");
    for f in std::fs::read_dir(&empty).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let o = run_on(&root, &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("d2/dog"),
        "{}",
        stderr(&o)
    );

    let tmp2 = tempfile::tempdir().unwrap();
    let root2 = tmp2.path().join("data");
    small_dataset(&root2);
    std::fs::write(root2.join("d2/cat/broken.jpg"), b"not a jpeg").unwrap();
    let o = run_on(&root2, &["--test-domain", "d1"]);
    assert!(
        !o.status.success() && stderr(&o).contains("broken.jpg"),
        "{}",
        stderr(&o)
    );

    let o = run_on(&tmp.path().join("missing"), &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn methods_run_on_the_same_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    small_dataset(&root);
    for method in ["zeroshot", "local", "fedclip", "fedprox"] {
        let out = tmp.path().join(method);
        let cache = tmp.path().join("cache");
        let o = fedclip(
            &[
                "run",
                "--device",
                "cpu",
                "--rounds",
                "2",
                "--method",
                method,
                "--data",
                root.to_str().unwrap(),
                "--test-domain",
                "d1",
                "--cache-dir",
                cache.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let summary: serde_json::Value =
            serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
        let comm = summary["bytes_communicated"].as_u64().unwrap();
        assert_eq!(
            comm > 0,
            method.starts_with("fed"),
            "{method} communicated {comm} bytes"
        );
        // With one training client, local and fedclip coincide; zero-shot trains nothing.
        let metrics = read(&out.join("metrics.csv"));
        let has_loss = metrics.lines().skip(1).any(|l| !l.ends_with(','));
        assert_eq!(has_loss, method != "zeroshot", "{method}: {metrics}");
    }
}

#[test]
fn resume_of_tip_adapter_f_keeps_every_clients_keys() {
    // The global parameters (the union of the caches) are longer than one client's row, and
    // with sampling the server's record of which caches it holds must survive the kill.
    resume_equals_uninterrupted(
        "state",
        &[
            "--method",
            "tip-adapter-f",
            "--clients-per-domain",
            "2",
            "--sample-fraction",
            "0.5",
        ],
    );
}

#[test]
fn resume_of_clip_adapter_keeps_its_moments_and_the_server_optimisers() {
    resume_equals_uninterrupted(
        "state",
        &[
            "--method",
            "clip-adapter",
            "--keep-optimizer-state",
            "--server-opt",
            "fedadam",
            "--server-lr",
            "0.01",
        ],
    );
}

/// `--dp client` with z = 0 and a C above every update's norm is FedAvg: the same bytes.
#[test]
fn dp_client_without_noise_or_clipping_equals_the_run_without_dp() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, cache) = tmp_paths(&tmp);
    let dp = tmp.path().join("dp");
    let cache = cache.to_str().unwrap();
    let o = fedclip(&run_args(plain.to_str().unwrap(), cache, "3"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dp_flags = ["--dp", "client", "--dp-clip", "1e6", "--dp-noise", "0"];
    let o = fedclip(
        &[&run_args(dp.to_str().unwrap(), cache, "3")[..], &dp_flags].concat(),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // metrics.csv is the same but for the ε column a DP run adds (inf: z = 0).
    let dp_metrics = read(&dp.join("metrics.csv"));
    let stripped: String = (dp_metrics.lines())
        .map(|l| {
            let cut = l
                .strip_suffix(",epsilon")
                .or_else(|| l.strip_suffix(",inf"));
            format!("{}\n", cut.unwrap_or_else(|| panic!("no ε column: {l}")))
        })
        .collect();
    assert_eq!(stripped, read(&plain.join("metrics.csv")));
    for f in ["adapter-last.safetensors", "adapter-best.safetensors"] {
        assert!(
            std::fs::read(plain.join(f)).unwrap() == std::fs::read(dp.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(&read(&dp.join("summary.json"))).unwrap();
    assert_eq!(summary["dp"]["clip"], 1e6);
    assert_eq!(summary["dp"]["noise_multiplier"], 0.0);
    assert!(
        summary["dp"]["epsilon"].is_null(),
        "z = 0 gives no privacy: ε is infinite"
    );
    let plain_summary: serde_json::Value =
        serde_json::from_str(&read(&plain.join("summary.json"))).unwrap();
    assert!(plain_summary.get("dp").is_none());
    assert!(!read(&plain.join("config.json")).contains("\"dp\""));
}

#[test]
fn resume_of_a_dp_run_with_dp_seed_matches_an_uninterrupted_run() {
    let dp = [
        "--dp",
        "client",
        "--dp-clip",
        "0.05",
        "--dp-noise",
        "0.8",
        "--dp-seed",
        "7",
        "--sample-fraction",
        "0.6",
    ];
    resume_equals_uninterrupted("state", &dp);
    let with_server_opt = [&dp[..], &["--server-opt", "fedadam", "--server-lr", "0.01"]].concat();
    resume_equals_uninterrupted("metrics", &with_server_opt);
}

/// A DP run's metrics.csv carries the accountant's cumulative ε after each round, and
/// summary.json the final one with the mechanism's parameters.
#[test]
fn dp_run_reports_the_accountants_epsilon_per_round() {
    use fedclip::privacy::rdp;
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let args = [
        &run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "3")[..],
        &["--dp", "client", "--dp-clip", "0.1", "--dp-noise", "0.9"],
        &["--sample-fraction", "0.5", "--dp-delta", "1e-4"],
    ]
    .concat();
    let o = fedclip(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = read(&out.join("metrics.csv"));
    assert!(metrics.starts_with("round,client,split,accuracy,samples,loss,epsilon\n"));
    for line in metrics.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let round: u64 = f[0].parse().unwrap();
        let expected = format!("{:.6}", rdp::epsilon(0.5, 0.9, round, 1e-4));
        assert_eq!(f[6], expected, "{line}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    let dp = &summary["dp"];
    // serde_json's default float parser may miss the last bit.
    let final_eps = rdp::epsilon(0.5, 0.9, 3, 1e-4);
    assert!((dp["epsilon"].as_f64().unwrap() - final_eps).abs() <= 1e-14 * final_eps);
    assert_eq!(
        (dp["clip"].as_f64(), dp["noise_multiplier"].as_f64()),
        (Some(0.1), Some(0.9))
    );
    assert_eq!(
        (dp["sampling_rate"].as_f64(), dp["delta"].as_f64()),
        (Some(0.5), Some(1e-4))
    );
    assert!(dp["accountant"].as_str().unwrap().contains("RdpAccountant"));
    assert!(dp["mechanism"].as_str().unwrap().contains("client-level"));
}

/// Poisson sampling may sample no client: the round adds the noise alone (divided by qK) and
/// moves no bytes up, and the run goes on.
#[test]
fn dp_round_that_samples_no_client_still_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = tmp_paths(&tmp);
    let args = [
        &run_args(out.to_str().unwrap(), cache.to_str().unwrap(), "4")[..],
        &["--dp", "client", "--dp-clip", "0.05", "--dp-noise", "1"],
        &["--sample-fraction", "0.05", "--dp-seed", "1"],
    ]
    .concat();
    let o = fedclip(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    let up: Vec<u64> = serde_json::from_value(summary["bytes_up_per_round"].clone()).unwrap();
    assert_eq!(up.len(), 4);
    assert!(up.contains(&0), "every round sampled a client: {up:?}");
    assert!(
        up.iter().any(|&b| b > 0),
        "no round sampled a client: {up:?}"
    );
}
