//! The privacy accountant against dp-accounting (tests/reference/make_dp_fixtures.py) and the
//! noise-multiplier search for a target ε.

use fedclip::privacy::{self, Budget, rdp};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    q: f64,
    z: f64,
    steps: u64,
    delta: f64,
    epsilon: f64,
}

#[derive(Deserialize)]
struct Fixture {
    orders: Vec<f64>,
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/privacy/rdp_epsilons.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn default_orders_are_dp_accountings() {
    // Bit-equal: an order computed as 1 + x/10 differently would change which are integers.
    let ours = rdp::default_orders();
    let theirs = fixture().orders;
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.to_bits(), b.to_bits(), "order {a} vs {b}");
    }
}

#[test]
fn epsilon_equals_dp_accounting_on_the_grid() {
    let cases = fixture().cases;
    assert_eq!(cases.len(), 432);
    let mut worst = 0.0f64;
    for c in &cases {
        let ours = rdp::epsilon(c.q, c.z, c.steps, c.delta);
        let rel = if c.epsilon == 0.0 {
            ours.abs()
        } else {
            ((ours - c.epsilon) / c.epsilon).abs()
        };
        assert!(
            rel <= 1e-6,
            "q {} z {} T {} δ {:e}: ε {ours} vs dp-accounting {} (relative {rel:e})",
            c.q,
            c.z,
            c.steps,
            c.delta,
            c.epsilon
        );
        worst = worst.max(rel);
    }
    eprintln!(
        "largest relative difference over {} cases: {worst:e}",
        cases.len()
    );
}

#[test]
fn epsilon_is_zero_without_sampling_and_infinite_without_noise() {
    assert_eq!(rdp::epsilon(0.0, 1.0, 10, 1e-5), 0.0);
    assert_eq!(rdp::epsilon(0.1, 0.0, 10, 1e-5), f64::INFINITY);
}

fn budget(q: f64, steps: u64, delta: f64) -> Budget {
    Budget {
        sampling_rate: q,
        steps,
        delta,
    }
}

#[test]
fn target_epsilon_gives_a_noise_multiplier_just_below_it() {
    for (q, steps, delta, target) in [
        (0.01, 1000, 1e-5, 1.0),
        (1.0, 37, 1e-5, 8.0),
        (0.3, 200, 1e-3, 3.3),
        (1e-4, 100_000, 1e-9, 0.5),
    ] {
        let b = budget(q, steps, delta);
        let z = privacy::noise_multiplier_for(target, &b, "--target-epsilon").unwrap();
        let eps = b.epsilon(z);
        assert!(
            eps <= target,
            "q {q}: z {z} gives ε {eps} above the target {target}"
        );
        assert!(
            target - eps <= privacy::EPSILON_TOLERANCE,
            "q {q}: z {z} gives ε {eps}, target {target}"
        );
    }
}

#[test]
fn unreachable_or_invalid_target_epsilon_is_a_clear_error() {
    let b = budget(1.0, 100_000, 1e-9);
    let err = privacy::noise_multiplier_for(1e-7, &b, "--target-epsilon")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--target-epsilon 0.0000001") && err.contains("no noise multiplier"),
        "{err}"
    );
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = privacy::noise_multiplier_for(bad, &b, "--dp-target-epsilon")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--dp-target-epsilon") && err.contains("positive and finite"),
            "{err}"
        );
    }
}

#[test]
fn bad_budget_values_name_their_flag() {
    let flags = ["--sampling-rate", "--steps", "--delta"];
    let cases = [
        (budget(0.0, 1, 1e-5), "--sampling-rate 0"),
        (budget(1.5, 1, 1e-5), "--sampling-rate 1.5"),
        (budget(f64::NAN, 1, 1e-5), "--sampling-rate NaN"),
        (budget(0.1, 0, 1e-5), "--steps 0"),
        (budget(0.1, 1, 0.0), "--delta 0"),
        (budget(0.1, 1, 1.0), "--delta 1"),
        (budget(0.1, 1, f64::NAN), "--delta NaN"),
    ];
    for (b, start) in cases {
        let err = b.check(flags).unwrap_err().to_string();
        assert!(err.starts_with(start), "{err}");
    }
    budget(0.1, 1, 1e-5).check(flags).unwrap();
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        let err = privacy::check_noise_multiplier(bad, "--dp-noise")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--dp-noise") && err.contains("noise multiplier"),
            "{err}"
        );
    }
}

fn fedclip_privacy(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .arg("privacy")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the CLI panicked: {stderr}");
    out
}

#[test]
fn privacy_command_prints_epsilon_and_noise_multiplier() {
    let base = [
        "--sampling-rate",
        "0.0137",
        "--steps",
        "37",
        "--delta",
        "1e-5",
    ];
    let out = fedclip_privacy(&[&base[..], &["--noise-multiplier", "1.13", "--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = rdp::epsilon(0.0137, 1.13, 37, 1e-5);
    // serde_json's default float parser may miss the last bit: compare to 1e-14 relative.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-14 * b.abs();
    assert!(close(plan["epsilon"].as_f64().unwrap(), expected), "{plan}");
    assert_eq!(plan["noise_multiplier"].as_f64().unwrap(), 1.13);
    assert!(
        plan["accountant"]
            .as_str()
            .unwrap()
            .contains("RdpAccountant")
    );
    assert!(plan["target_epsilon"].is_null());

    let out = fedclip_privacy(&[&base[..], &["--target-epsilon", "0.7", "--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let z = plan["noise_multiplier"].as_f64().unwrap();
    let eps = rdp::epsilon(0.0137, z, 37, 1e-5);
    assert!(
        eps <= 0.7 && 0.7 - eps <= privacy::EPSILON_TOLERANCE,
        "z {z}: ε {eps}"
    );
    assert!(close(plan["epsilon"].as_f64().unwrap(), eps), "{plan}");

    let out = fedclip_privacy(&[&base[..], &["--noise-multiplier", "1.13"]].concat());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("ε = {expected} at δ = 1e-5")),
        "{text}"
    );
}

#[test]
fn privacy_command_refuses_bad_input_naming_the_flag() {
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "--sampling-rate",
                "0",
                "--noise-multiplier",
                "1",
                "--steps",
                "5",
                "--delta",
                "1e-5",
            ],
            "--sampling-rate 0",
        ),
        (
            &[
                "--sampling-rate",
                "1.01",
                "--noise-multiplier",
                "1",
                "--steps",
                "5",
                "--delta",
                "1e-5",
            ],
            "--sampling-rate 1.01",
        ),
        (
            &[
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "-1",
                "--steps",
                "5",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier -1",
        ),
        (
            &[
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "NaN",
                "--steps",
                "5",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier NaN",
        ),
        (
            &[
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "0",
                "--delta",
                "1e-5",
            ],
            "--steps 0",
        ),
        (
            &[
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "5",
                "--delta",
                "1",
            ],
            "--delta 1",
        ),
        (
            &[
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "5",
                "--delta",
                "-1e-5",
            ],
            "--delta -0.00001",
        ),
        (
            &[
                "--sampling-rate",
                "1",
                "--target-epsilon",
                "1e-7",
                "--steps",
                "100000",
                "--delta",
                "1e-9",
            ],
            "--target-epsilon 0.0000001: no noise multiplier",
        ),
    ];
    for (args, start) in cases {
        let out = fedclip_privacy(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("error: {start}")),
            "{args:?}: {stderr}"
        );
    }
    // Neither or both of --noise-multiplier / --target-epsilon: clap names them.
    let out = fedclip_privacy(&["--sampling-rate", "0.1", "--steps", "5", "--delta", "1e-5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--noise-multiplier"));
    let both = [
        "--sampling-rate",
        "0.1",
        "--steps",
        "5",
        "--delta",
        "1e-5",
        "--noise-multiplier",
        "1",
        "--target-epsilon",
        "2",
    ];
    let out = fedclip_privacy(&both);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[derive(Deserialize)]
struct MeanCase {
    global: Vec<f32>,
    params: Vec<f32>,
    param_count: usize,
    slots: Vec<usize>,
    clip: f64,
    noise: Vec<f64>,
    expected: f64,
    norms: Vec<f64>,
    mean: Vec<f32>,
}

#[test]
fn clipping_noise_and_division_equal_numpy_given_the_same_noise() {
    use fedclip::federated::strategy::{clip_factor, clipped_noised_mean};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/privacy/clipped_mean.json"
    );
    #[derive(Deserialize)]
    struct Doc {
        cases: Vec<MeanCase>,
    }
    let doc: Doc = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut clipped, mut kept) = (0, 0);
    for (n, c) in doc.cases.iter().enumerate() {
        assert_eq!(c.global.len(), c.param_count);
        for &norm in &c.norms {
            if clip_factor(norm, c.clip) < 1.0 {
                clipped += 1
            } else {
                kept += 1
            }
        }
        let ours =
            clipped_noised_mean(&c.global, &c.params, &c.slots, c.clip, &c.noise, c.expected);
        // Both sum in f64 (in another order: ~1e-15 relative), then round to f32 once: the
        // results may differ by the f32 rounding of a value on a tie, one ulp at most.
        for (i, (&a, &b)) in ours.iter().zip(&c.mean).enumerate() {
            let ulp = f32::EPSILON * b.abs().max(f32::MIN_POSITIVE);
            assert!(
                (a - b).abs() <= ulp,
                "case {n}, parameter {i}: {a} vs NumPy {b}"
            );
        }
    }
    assert!(
        clipped >= 3 && kept >= 2,
        "the cases must clip some clients and not others"
    );
}

/// Φ(x / σ) of the normal distribution.
fn normal_cdf(x: f64, sigma: f64) -> f64 {
    0.5 * libm::erfc(-x / (sigma * std::f64::consts::SQRT_2))
}

#[test]
fn gaussian_noise_passes_kolmogorov_smirnov_at_its_sigma() {
    use fedclip::privacy::noise::NoiseSource;
    let n = 1_000_000;
    let sigma = 0.37;
    let mut source = NoiseSource::from_seed(2012);
    let mut draws: Vec<f64> = (0..n).map(|_| source.gaussian(sigma)).collect();
    draws.sort_by(f64::total_cmp);
    let d = (draws.iter().enumerate())
        .map(|(i, &x)| {
            let f = normal_cdf(x, sigma);
            (f - i as f64 / n as f64).max((i + 1) as f64 / n as f64 - f)
        })
        .fold(0.0, f64::max);
    // The 0.1% critical value of the one-sample KS statistic is 1.949/√n.
    let critical = 1.949 / (n as f64).sqrt();
    assert!(d < critical, "KS statistic {d} ≥ {critical}");
    // The same draws against a σ 1% off are refused: the test has the power to see it.
    let d_off = (draws.iter().enumerate())
        .map(|(i, &x)| (normal_cdf(x, sigma * 1.01) - i as f64 / n as f64).abs())
        .fold(0.0, f64::max);
    assert!(d_off > critical, "KS cannot tell σ from 1.01σ: {d_off}");
}

fn fedclip_run(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedclip"))
        .args([
            "run",
            "--device",
            "cpu",
            "--out",
            "/nonexistent/dp-never-written",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

#[test]
fn dp_run_flags_refuse_bad_values_naming_the_flag() {
    let dp = ["--dp", "client", "--dp-clip", "0.1", "--dp-noise", "1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--dp", "client", "--dp-clip", "0", "--dp-noise", "1"],
            "--dp-clip 0: the clipping norm must be positive",
        ),
        (
            vec!["--dp", "client", "--dp-clip", "-2", "--dp-noise", "1"],
            "--dp-clip -2",
        ),
        (
            vec!["--dp", "client", "--dp-clip", "NaN", "--dp-noise", "1"],
            "--dp-clip NaN",
        ),
        (
            vec!["--dp", "client", "--dp-noise", "1"],
            "--dp-clip NaN: the clipping norm",
        ),
        (
            vec!["--dp", "client", "--dp-clip", "0.1", "--dp-noise", "-0.5"],
            "--dp-noise -0.5",
        ),
        (
            [&dp[..], &["--dp-delta", "0"]].concat(),
            "--dp-delta 0: δ must be in (0, 1)",
        ),
        (
            [&dp[..], &["--dp-delta", "1"]].concat(),
            "--dp-delta 1: δ must be in (0, 1)",
        ),
        (
            [&dp[..], &["--aggregate", "weighted"]].concat(),
            "--aggregate weighted cannot be used with --dp client",
        ),
        (
            [&dp[..], &["--method", "local"]].concat(),
            "--dp client needs a method whose server averages",
        ),
        (
            [&dp[..], &["--method", "tip-adapter"]].concat(),
            "--dp client needs a method whose server averages",
        ),
        (
            vec!["--dp", "client", "--dp-clip", "0.1"],
            "--dp client needs --dp-noise z or --dp-target-epsilon",
        ),
        (
            vec!["--dp-clip", "0.1"],
            "--dp-clip, --dp-noise, --dp-target-epsilon and --dp-seed need --dp client",
        ),
        (
            vec!["--dp-seed", "3"],
            "--dp-clip, --dp-noise, --dp-target-epsilon and --dp-seed need --dp client",
        ),
        (
            vec![
                "--dp",
                "client",
                "--dp-clip",
                "1",
                "--dp-target-epsilon",
                "1e-7",
                "--dp-delta",
                "1e-9",
                "--rounds",
                "100000",
            ],
            "--dp-target-epsilon 0.0000001: no noise multiplier",
        ),
        (
            vec![
                "--dp",
                "client",
                "--dp-clip",
                "1",
                "--dp-target-epsilon",
                "-1",
            ],
            "--dp-target-epsilon -1: the target ε must be positive",
        ),
    ];
    for (args, start) in cases {
        let out = fedclip_run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {start}")),
            "{args:?}: {stderr}"
        );
    }
    let both = [&dp[..], &["--dp-target-epsilon", "2"]].concat();
    let out = fedclip_run(&both);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
