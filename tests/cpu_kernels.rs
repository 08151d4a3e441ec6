//! The packed CPU kernels (AVX-512, AVX2) against the plain reference on awkward sizes, with
//! tolerances from an error model: a sum of k products in f32 is within k·u·Σ|a||b| of the
//! exact value (u = 2⁻²⁴), whatever the order, so two such sums differ by at most twice that.
//! Families this CPU lacks print "skipped: no <feature>".

use fedclip::model::cpu::{Act, AttentionShape, Epilogue, Isa, Kernels};
use fedclip::model::ops;

const U: f64 = 1.0 / (1u64 << 24) as f64;
const ROWS: [usize; 5] = [1, 7, 50, 197, 257];

fn packed_isas() -> Vec<&'static Kernels> {
    [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter_map(|isa| match Kernels::for_isa(isa) {
            Ok(k) => Some(k),
            Err(_) => {
                println!(
                    "{}: skipped: no {}",
                    isa.name(),
                    isa.missing_feature().unwrap()
                );
                None
            }
        })
        .collect()
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn act_f64(act: Act, y: f64) -> f64 {
    match act {
        Act::None => y,
        Act::QuickGelu => y / (1.0 + (-1.702 * y).exp()),
        Act::Gelu => ops::gelu(y as f32) as f64,
    }
}

/// Checks one product against f64 sums. Bound per output: 2·(k+2)·u·(Σ|x||w| + |b| + |r|)
/// before the activation, whose slope is below 1.13 for both GELUs, plus 8 ulps of its own.
#[allow(clippy::too_many_arguments)]
fn check_linear(kern: &Kernels, m: usize, k: usize, n: usize, bias: bool, ep: Epilogue) {
    let x = pseudo_random(m * k, 1 + m as u32);
    let w = pseudo_random(n * k, 2 + k as u32);
    let b = pseudo_random(n, 3);
    let resid = pseudo_random(m * n, 4);
    let packed = kern.pack(&w, bias.then_some(&b[..]), (k, n), 1);
    // NaN where the product overwrites: the kernel must never read it.
    let mut out = if ep.residual {
        resid.clone()
    } else {
        vec![f32::NAN; m * n]
    };
    kern.linear(&packed, &x, m, &mut out, ep);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = x[i * k + p] as f64 * w[j * k + p] as f64;
                exact += t;
                mag += t.abs();
            }
            if bias {
                exact += b[j] as f64;
                mag += (b[j] as f64).abs();
            }
            if ep.residual {
                exact += resid[i * n + j] as f64;
                mag += (resid[i * n + j] as f64).abs();
            }
            let want = act_f64(ep.act, exact);
            let bound = 1.13 * 2.0 * (k + 2) as f64 * U * mag + 8.0 * U * want.abs() + 1e-30;
            let got = out[i * n + j] as f64;
            assert!(
                (got - want).abs() <= bound,
                "{} linear m={m} k={k} n={n} {ep:?} bias={bias} at ({i},{j}): {got} vs {want} (bound {bound:.2e})",
                kern.isa.name()
            );
        }
    }
}

#[test]
fn linear_matches_f64_at_awkward_sizes() {
    let eps = [
        Epilogue::PLAIN,
        Epilogue {
            act: Act::None,
            residual: true,
        },
        Epilogue {
            act: Act::QuickGelu,
            residual: false,
        },
        Epilogue {
            act: Act::Gelu,
            residual: false,
        },
    ];
    for kern in packed_isas()
        .into_iter()
        .chain([Kernels::for_isa(Isa::Reference).unwrap()])
    {
        for &m in &ROWS {
            // k past one K block (256) and not a multiple of it; n not a multiple of 8/16/32.
            for &(k, n) in &[(37, 45), (300, 33), (513, 97), (64, 7)] {
                for (e, &ep) in eps.iter().enumerate() {
                    check_linear(kern, m, k, n, e != 0, ep);
                }
            }
        }
        check_linear(kern, 3, 1, 1, false, Epilogue::PLAIN);
    }
}

#[test]
fn linear_bits_do_not_depend_on_the_thread_count() {
    // 50 rows: one row block split into panel blocks; 197 and 450: several row blocks.
    for (kern, m) in packed_isas()
        .into_iter()
        .flat_map(|kern| [50, 197, 450].map(|m| (kern, m)))
    {
        let (k, n) = (700, 300);
        let x = pseudo_random(m * k, 5);
        let w = pseudo_random(n * k, 6);
        let packed = kern.pack(&w, Some(&w[..n]), (k, n), 1);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0f32; m * n];
            pool.install(|| kern.linear(&packed, &x, m, &mut out, Epilogue::PLAIN));
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let name = kern.isa.name();
        assert_eq!(run(1), run(2), "{name}: 1 vs 2 threads at {m} rows");
        assert_eq!(run(1), run(3), "{name}: 1 vs 3 threads at {m} rows");
    }
}

/// Against `ops::layer_norm` (f64 statistics). Bound: the f32 two-pass statistics are within
/// (d/16 + 8)·u relative (see `rows::layer_norm`), which moves x̂ by that much of |x̂| + 1,
/// then γ·x̂ + β adds 2 ulps.
#[test]
fn layer_norm_matches_the_reference() {
    for kern in packed_isas() {
        for &rows in &ROWS {
            for &dim in &[5usize, 37, 100, 768] {
                let x: Vec<f32> = pseudo_random(rows * dim, 7)
                    .iter()
                    .map(|v| v * 3.0 + 0.5)
                    .collect();
                let g = pseudo_random(dim, 8);
                let b = pseudo_random(dim, 9);
                let want = ops::layer_norm(&x, dim, &g, &b, 1e-5);
                let mut got = vec![f32::NAN; x.len()];
                kern.layer_norm(&x, &mut got, &g, &b, 1e-5);
                for (i, (&o, &r)) in got.iter().zip(&want).enumerate() {
                    let j = i % dim;
                    let xhat = ((r - b[j]) / g[j]).abs() as f64;
                    let bound =
                        4.0 * (dim as f64 / 16.0 + 8.0) * U * (xhat + 1.0) * g[j].abs() as f64
                            + 4.0 * U * (r.abs() as f64 + b[j].abs() as f64);
                    assert!(
                        ((o - r) as f64).abs() <= bound,
                        "{} layer_norm rows={rows} dim={dim} at {i}: {o} vs {r} (bound {bound:.2e})",
                        kern.isa.name()
                    );
                }
            }
        }
    }
}

/// Against `ops::attention` (the `gemm` crate and `f32::exp`). Bound: the scores carry
/// ≤ 2·hd·u·Σ|q||k|·scale each (≤ 2·hd·u·max|q|·max|k|·hd·scale), which moves each softmax
/// weight by at most that relative; exp_f32 adds 2 ulps, the normalisation and the
/// seq-term value sum 2·(seq + 4)·u; all scaled by max|v|.
#[test]
fn attention_matches_the_reference() {
    let reference = Kernels::for_isa(Isa::Reference).unwrap();
    for kern in packed_isas() {
        for &(batch, seq, heads, hd) in
            &[(1, 1, 1, 8), (2, 7, 3, 20), (1, 50, 12, 64), (2, 77, 2, 33)]
        {
            for causal in [false, true] {
                let width = heads * hd;
                let qkv: Vec<f32> = pseudo_random(batch * seq * 3 * width, 10)
                    .iter()
                    .map(|v| v * 2.0)
                    .collect();
                let shape = AttentionShape {
                    batch,
                    seq,
                    heads,
                    head_dim: hd,
                    causal,
                };
                let mut want = vec![0.0f32; batch * seq * width];
                reference.attention(&qkv, &mut want, shape);
                let mut got = vec![f32::NAN; want.len()];
                kern.attention(&qkv, &mut got, shape);
                let score_err = 2.0 * hd as f64 * U * 4.0 * hd as f64 / (hd as f64).sqrt();
                let bound = 2.0 * (2.0 * score_err + 2.0 * (seq as f64 + 6.0) * U) * 2.0;
                for (i, (&o, &r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        ((o - r) as f64).abs() <= bound,
                        "{} attention {shape:?} at {i}: {o} vs {r} (bound {bound:.2e})",
                        kern.isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn a_bad_isa_override_is_refused_by_name() {
    let err = Isa::parse_override("avx9").unwrap_err().to_string();
    assert!(
        err.contains("FEDCLIP_ISA=avx9") && err.contains("not one of reference, avx2, avx512"),
        "{err}"
    );
    for isa in Isa::ALL {
        match isa.missing_feature() {
            None => assert_eq!(Isa::parse_override(isa.name()).unwrap(), isa),
            Some(f) => {
                let err = Isa::parse_override(isa.name()).unwrap_err().to_string();
                assert!(err.contains(f) && err.contains(isa.name()), "{err}");
                let err = Kernels::for_isa(isa).err().unwrap().to_string();
                assert!(err.contains(f), "{err}");
            }
        }
    }
    assert!(Isa::detect().available());
}
