//! The server optimisers (`--server-opt`) against NumPy trajectories on fixed client deltas
//! (tests/reference/make_server_opt_fixtures.py), a checkpoint of their moments resuming bit
//! for bit, and their flag errors.

mod common;

use common::repo;
use fedclip::federated::config::Aggregate;
use fedclip::federated::strategy::{ClientUpdates, FedAvg, FedOpt, Strategy};
use fedclip::federated::{ServerOptConfig, ServerOptName};
use serde_json::Value;

struct Fixture {
    p: usize,
    train_sizes: Vec<usize>,
    slots: Vec<Vec<usize>>,
    x0: Vec<f32>,
    /// `[round][client][p]`.
    deltas: Vec<Vec<Vec<f32>>>,
    cases: Vec<Value>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn load() -> Fixture {
    let path = repo().join("tests/fixtures/server_opt/trajectories.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = |v: &Value| v.as_array().unwrap().clone();
    Fixture {
        p: v["p"].as_u64().unwrap() as usize,
        train_sizes: list(&v["train_sizes"])
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect(),
        slots: list(&v["slots"])
            .iter()
            .map(|r| {
                list(r)
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect()
            })
            .collect(),
        x0: floats(&v["x0"]),
        deltas: list(&v["deltas"])
            .iter()
            .map(|r| list(r).iter().map(floats).collect())
            .collect(),
        cases: list(&v["cases"]),
    }
}

fn config(case: &Value) -> ServerOptConfig {
    let opt = match case["opt"].as_str().unwrap() {
        "fedavg" => ServerOptName::Fedavg,
        "fedavgm" => ServerOptName::Fedavgm,
        "fedadam" => ServerOptName::Fedadam,
        "fedyogi" => ServerOptName::Fedyogi,
        other => panic!("unknown optimiser {other}"),
    };
    let f = |k: &str| case[k].as_f64().unwrap();
    ServerOptConfig {
        opt,
        lr: f("lr"),
        momentum: f("momentum"),
        beta1: f("beta1"),
        beta2: f("beta2"),
        tau: f("tau"),
    }
}

fn strategy(case: &Value) -> FedOpt {
    FedOpt::new(
        Box::new(FedAvg::new(Aggregate::Weighted, None)),
        config(case),
    )
}

/// Runs rounds `from..to` from `global` with client rows `rows`, returning each new global.
fn rounds(
    fx: &Fixture,
    s: &mut FedOpt,
    global: &mut Vec<f32>,
    rows: &mut [f32],
    range: std::ops::Range<usize>,
) -> Vec<Vec<f32>> {
    let p = fx.p;
    let mut out = Vec::new();
    for r in range {
        for &k in &fx.slots[r] {
            for i in 0..p {
                rows[k * p + i] = global[i] + fx.deltas[r][k][i];
            }
        }
        let updates = ClientUpdates {
            slots: &fx.slots[r],
            params: rows,
            param_count: p,
            train_sizes: &fx.train_sizes,
        };
        *global = s
            .aggregate_train(r as u32, global, &updates)
            .unwrap()
            .expect("FedOpt always returns new parameters");
        out.push(global.clone());
    }
    out
}

#[test]
fn server_optimisers_follow_the_numpy_reference() {
    let fx = load();
    let n = fx.deltas.len();
    for case in &fx.cases {
        let name = format!("{} lr {}", case["opt"], case["lr"]);
        let mut s = strategy(case);
        let (mut global, mut rows) = (fx.x0.clone(), fx.x0.repeat(fx.train_sizes.len()));
        let got = rounds(&fx, &mut s, &mut global, &mut rows, 0..n);
        for (r, (g, want)) in got
            .iter()
            .zip(case["globals"].as_array().unwrap())
            .enumerate()
        {
            let want = floats(want);
            let worst = g
                .iter()
                .zip(&want)
                .map(|(a, b)| ((a - b).abs() / b.abs().max(1e-3)) as f64)
                .fold(0.0, f64::max);
            println!("{name} round {r}: max relative error {worst:.1e}");
            assert!(worst <= 1e-5, "{name} round {r}: {worst:.2e}");
        }
        // Every optimiser moves the parameters away from plain averaging but FedAvg itself.
        assert!(got.last().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn a_checkpoint_of_the_moments_resumes_bit_for_bit() {
    let fx = load();
    let n = fx.deltas.len();
    for case in &fx.cases {
        let mut whole = strategy(case);
        let (mut g1, mut r1) = (fx.x0.clone(), fx.x0.repeat(fx.train_sizes.len()));
        let want = rounds(&fx, &mut whole, &mut g1, &mut r1, 0..n);

        let mut first = strategy(case);
        let (mut g2, mut r2) = (fx.x0.clone(), fx.x0.repeat(fx.train_sizes.len()));
        rounds(&fx, &mut first, &mut g2, &mut r2, 0..2);
        let saved = first.state();
        let mut resumed = strategy(case);
        resumed.load_state(&saved).unwrap();
        let got = rounds(&fx, &mut resumed, &mut g2, &mut r2, 2..n);
        assert_eq!(got, want[2..], "{}", case["opt"]);
    }
}

#[test]
fn a_damaged_server_state_is_refused() {
    let fx = load();
    let mut s = strategy(&fx.cases[3]);
    let err = s
        .load_state(&[("m".into(), vec![0.0; 3])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("server optimiser state"), "{err}");
}

fn fedclip_run(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args(["run", "--device", "cpu", "--rounds", "1", "--out"])
        .arg(tmp.path().join("run"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{extra:?} should fail");
    assert!(!tmp.path().join("run").exists(), "{extra:?} touched --out");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn server_optimiser_flags_are_checked_before_anything_runs() {
    let e = fedclip_run(&["--method", "local", "--server-opt", "fedadam"]);
    assert!(
        e.contains("--server-opt fedadam") && e.contains("--method local"),
        "{e}"
    );
    let e = fedclip_run(&["--server-opt", "fedyogi", "--server-beta2", "1"]);
    assert!(e.contains("--server-beta2"), "{e}");
    let e = fedclip_run(&["--server-opt", "fedavgm", "--server-momentum=-0.1"]);
    assert!(e.contains("--server-momentum"), "{e}");
    let e = fedclip_run(&["--server-opt", "fedadam", "--server-lr", "0"]);
    assert!(e.contains("--server-lr"), "{e}");
    let e = fedclip_run(&["--server-opt", "fedadam", "--server-tau", "0"]);
    assert!(e.contains("--server-tau"), "{e}");
}
