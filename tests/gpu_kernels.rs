//! Every CUDA kernel against its CPU twin on fresh random inputs at awkward sizes, outputs
//! poisoned (NaN) before each launch so an element a kernel fails to write is caught.
//!
//! Without a GPU each test prints `skipped: no CUDA device` and passes. With
//! `FEDCLIP_EMULATE=1` they run the same kernels on the host emulator (kernels/emu/) at
//! smaller sizes (`FEDCLIP_SMALL_CASES=1` picks those on a GPU too). The random seed is
//! printed; `FEDCLIP_TEST_SEED=<n>` replays a run.

mod common;

use common::relative_error;
use fedclip::cuda::kernels::{
    self, Attention, AttentionKernel, Gemm, GemmTile, LayerNorm, rows_kernel_max_seq,
};
use fedclip::cuda::{Gpu, test_gpu, twins};
use fedclip::model::ops;
use fedclip::weights::Activation;
use half::f16;
use std::sync::Arc;

/// Tolerance of fp16 paths: relative error of the whole tensor, and per element
/// |got − want| ≤ TOL·(|want| + rms(want)). From the error model, in units of fp16's unit
/// roundoff u16 = 2⁻¹¹ = 4.9e-4 (inputs are rounded to fp16 before both sides see them, so
/// input rounding is common to both): the output's rounding to fp16 (≤ 1 u16 of |want|);
/// attention's probabilities rounded to fp16 before P·V (≤ 1 u16 of Σ|p·v| ≤ max|v|, within
/// |want| + rms for these inputs); f32 accumulation of K ≤ 4096 terms in any order, with or
/// without FMA contraction (≤ K·u32 = 2.4e-4 = 0.5 u16 in the worst case, far less for
/// random signs); `expf`/`rsqrtf` within 2 ulp of f32 (≈ 1e-7). Together ≤ 2.5 u16 = 1.2e-3,
/// so TOL = 4 u16 holds for any seed with margin. Each seed is fresh (printed; replay it
/// with FEDCLIP_TEST_SEED).
const TOL: f64 = 4.0 / 2048.0;

struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("FEDCLIP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{what}: seed {seed} (FEDCLIP_TEST_SEED={seed} replays it)");
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-scale, scale).
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad = got.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(
        bad, 0,
        "{what}: {bad} non-finite outputs (NaN = an element never written)"
    );
    let err = relative_error(got, want);
    let rms = (want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / want.len() as f64).sqrt();
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w as f64).abs() / (w.abs() as f64 + rms + 1e-30);
        if excess > worst {
            (worst, at) = (excess, i);
        }
    }
    println!("  {what}: relative error {err:.2e}, worst element {worst:.2e} at {at}");
    assert!(err <= TOL, "{what}: relative error {err:.2e} > {TOL:.2e}");
    assert!(
        worst <= TOL,
        "{what}: element {at} got {} want {} ({worst:.2e} > {TOL:.2e})",
        got[at],
        want[at]
    );
}

fn f16s(x: &[f32]) -> Vec<f16> {
    twins::to_f16(x)
}

fn gpu() -> Option<Arc<Gpu>> {
    test_gpu()
}

/// The emulator's small cases: on the emulator, and on a GPU with `FEDCLIP_SMALL_CASES=1`
/// (benches/device_check.sh runs compute-sanitizer that way, which slows kernels a lot).
fn small(gpu: &Gpu) -> bool {
    gpu.info.emulated || std::env::var("FEDCLIP_SMALL_CASES").is_ok_and(|v| v == "1")
}

struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    /// Extra row stride beyond K for A (0: packed).
    pad_a: usize,
    /// Start A one element into its buffer (a misaligned base address).
    shift_a: bool,
}

fn gemm_cases(emulated: bool) -> Vec<GemmCase> {
    let c = |m, n, k| GemmCase {
        m,
        n,
        k,
        pad_a: 0,
        shift_a: false,
    };
    let mut v = if emulated {
        vec![
            c(1, 1, 1),
            c(17, 5, 33),
            c(50, 64, 64),
            c(17, 17, 17),
            c(197, 130, 72),
            c(64, 257, 40),
            c(130, 50, 200),
            // K over many 64-wide steps: v2's three stages each refilled twice or more.
            c(40, 264, 456),
        ]
    } else {
        let sizes = [1usize, 17, 50, 197, 257, 1000, 3072];
        let mut v = Vec::new();
        for &m in &sizes {
            for &n in &sizes {
                for &k in &[1usize, 17, 50, 197, 768, 3072] {
                    // Keep the CPU reference affordable: skip the largest products.
                    if m * n * k <= 1000 * 3072 * 768 {
                        v.push(c(m, n, k));
                    }
                }
            }
        }
        v
    };
    v.push(GemmCase {
        pad_a: 3,
        ..c(33, 40, 64)
    });
    v.push(GemmCase {
        shift_a: true,
        ..c(20, 24, 32)
    });
    v
}

#[test]
fn gemm_matches_linear_with_every_epilogue() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm");
    let cases = gemm_cases(small(&gpu));
    let missing: Vec<GemmTile> = GemmTile::ALL
        .into_iter()
        .filter(|t| !t.available(&gpu))
        .collect();
    println!(
        "{} shapes × {} tiles (not on this device, too little shared memory: {missing:?})",
        cases.len(),
        GemmTile::ALL.len() - missing.len()
    );
    // The epilogue rotates through its four variants from a random start, so that every run
    // covers each of them at several shapes.
    let first_variant = rng.below(4);
    for (ci, case) in cases.iter().enumerate() {
        let (m, n, k) = (case.m, case.n, case.k);
        let lda = k + case.pad_a;
        let shift = case.shift_a as usize;
        let a = twins::round_f16(&rng.vec(shift + m * lda, 1.0));
        let w = twins::round_f16(&rng.vec(n * k, 1.0 / (k as f32).sqrt()));
        let bias = rng.vec(n, 0.5);
        let resid = rng.vec(m * n, 1.0);
        // The epilogue varies with the case: bias/act/residual on or off, both outputs.
        let variant = (first_variant + ci as u64) % 4;
        let act = match variant {
            0 => None,
            1 => Some(Activation::QuickGelu),
            2 => Some(Activation::Gelu),
            _ => Some(Activation::QuickGelu),
        };
        let with_bias = variant != 0 || ci % 2 == 0;
        let with_resid = variant >= 2;
        let a_packed: Vec<f32> = (0..m)
            .flat_map(|r| a[shift + r * lda..shift + r * lda + k].to_vec())
            .collect();
        let want = twins::gemm_epilogue(
            &a_packed,
            m,
            k,
            &w,
            n,
            with_bias.then_some(&bias[..]),
            act,
            with_resid.then_some(&resid[..]),
        );
        let a_dev = gpu.upload(&f16s(&a)).unwrap();
        let w_dev = gpu.upload(&f16s(&w)).unwrap();
        let b_dev = gpu.upload(&bias).unwrap();
        let r_dev = gpu.upload(&resid).unwrap();
        let out32 = gpu.alloc::<f32>(m * n).unwrap();
        let out16 = gpu.alloc::<f16>(m * n).unwrap();
        // Every tile the device can launch (v2's 128×256 needs 144 KiB of shared memory).
        for tile in GemmTile::ALL.into_iter().filter(|t| t.available(&gpu)) {
            gpu.poison(out32.view()).unwrap();
            gpu.poison(out16.view()).unwrap();
            Gemm {
                a: a_dev.view().offset(shift),
                lda,
                w: w_dev.view(),
                ldw: k,
                m,
                n,
                k,
                bias: with_bias.then(|| b_dev.view()),
                act,
                resid: with_resid.then(|| r_dev.view()),
                out32: Some(out32.view()),
                out16: Some(out16.view()),
            }
            .launch(&gpu, tile)
            .unwrap();
            let what = format!(
                "gemm {m}×{n}×{k} lda {lda}{} {tile:?} bias {with_bias} act {act:?} resid {with_resid}",
                if case.shift_a { " misaligned" } else { "" }
            );
            check(
                &format!("{what} f32"),
                &gpu.read(out32.view()).unwrap(),
                &want,
            );
            let got16 = twins::from_f16(&gpu.read(out16.view()).unwrap());
            check(&format!("{what} f16"), &got16, &want);
        }
    }
}

#[test]
fn gemm_residual_update_in_place() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm in place");
    let (m, n, k) = (70, 96, 48);
    let a = twins::round_f16(&rng.vec(m * k, 1.0));
    let w = twins::round_f16(&rng.vec(n * k, 0.2));
    let bias = rng.vec(n, 0.5);
    let h = rng.vec(m * n, 1.0);
    let want = twins::gemm_epilogue(&a, m, k, &w, n, Some(&bias), None, Some(&h));
    let (a_dev, w_dev, b_dev) = (
        gpu.upload(&f16s(&a)).unwrap(),
        gpu.upload(&f16s(&w)).unwrap(),
        gpu.upload(&bias).unwrap(),
    );
    let tiles = GemmTile::ALL.into_iter().filter(|t| t.available(&gpu));
    for tile in [GemmTile::Auto].into_iter().chain(tiles) {
        let h_dev = gpu.upload(&h).unwrap();
        Gemm {
            a: a_dev.view(),
            lda: k,
            w: w_dev.view(),
            ldw: k,
            m,
            n,
            k,
            bias: Some(b_dev.view()),
            act: None,
            resid: Some(h_dev.view()),
            out32: Some(h_dev.view()),
            out16: None,
        }
        .launch(&gpu, tile)
        .unwrap();
        check(
            &format!("h += x·wᵀ + b {tile:?}"),
            &gpu.read(h_dev.view()).unwrap(),
            &want,
        );
    }
}

/// ldmatrix (x4, x4.trans, x2, x2.trans) gives mma the same fragments as v1's 32-bit loads:
/// the four products of kernels/fragments.cu agree bit for bit (same fragments, same mma), and
/// the first matches the CPU within the GEMM's error model.
#[test]
fn ldmatrix_fragments_equal_the_32_bit_loads() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("ldmatrix");
    let a = twins::round_f16(&rng.vec(256, 1.0));
    let w = twins::round_f16(&rng.vec(256, 0.25));
    let bt: Vec<f32> = (0..256).map(|i| w[(i % 16) * 16 + i / 16]).collect();
    let want = twins::gemm_epilogue(&a, 16, 16, &w, 16, None, None, None);
    let (a_dev, w_dev, bt_dev) = (
        gpu.upload(&f16s(&a)).unwrap(),
        gpu.upload(&f16s(&w)).unwrap(),
        gpu.upload(&f16s(&bt)).unwrap(),
    );
    let out = gpu.alloc::<f32>(4 * 256).unwrap();
    gpu.poison(out.view()).unwrap();
    kernels::check_fragments(&gpu, a_dev.view(), w_dev.view(), bt_dev.view(), out.view()).unwrap();
    let got = gpu.read(out.view()).unwrap();
    check("fragments via 32-bit loads", &got[..256], &want);
    let paths = ["ldmatrix.x4", "ldmatrix.x4.trans", "ldmatrix.x2(.trans)"];
    for (p, name) in paths.iter().enumerate() {
        let path = &got[256 * (p + 1)..256 * (p + 2)];
        let differ = path
            .iter()
            .zip(&got[..256])
            .position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(
            differ, None,
            "{name}: element {differ:?} differs from the 32-bit-load path"
        );
    }
}

#[test]
fn layernorm_matches_ops_layer_norm() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("layernorm");
    let shapes: &[(usize, usize)] = if small(&gpu) {
        &[(1, 24), (17, 40), (50, 768), (9, 1024), (13, 772), (5, 17)]
    } else {
        &[
            (1, 24),
            (17, 40),
            (197, 768),
            (1000, 1024),
            (3072, 512),
            (257, 17),
            (13, 772),
        ]
    };
    for &(rows, dim) in shapes {
        let offset = rng.vec(1, 3.0)[0];
        let x: Vec<f32> = rng
            .vec(rows * dim, 2.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let gamma: Vec<f32> = rng.vec(dim, 0.2).iter().map(|v| v + 1.0).collect();
        let beta = rng.vec(dim, 0.1);
        let eps = 1e-5;
        let want = ops::layer_norm(&x, dim, &gamma, &beta, eps);
        let (x_dev, g_dev, b_dev) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&gamma).unwrap(),
            gpu.upload(&beta).unwrap(),
        );
        let out32 = gpu.alloc::<f32>(rows * dim).unwrap();
        let out16 = gpu.alloc::<f16>(rows * dim).unwrap();
        let ln = |x, index: Option<_>, rows, out32, out16| LayerNorm {
            x,
            row_index: index,
            rows,
            dim,
            gamma: g_dev.view(),
            beta: b_dev.view(),
            eps,
            out32,
            out16,
        };
        ln(
            x_dev.view(),
            None,
            rows,
            Some(out32.view()),
            Some(out16.view()),
        )
        .launch(&gpu, None)
        .unwrap();
        check(
            &format!("layernorm {rows}×{dim} f32"),
            &gpu.read(out32.view()).unwrap(),
            &want,
        );
        let got16 = twins::from_f16(&gpu.read(out16.view()).unwrap());
        check(&format!("layernorm {rows}×{dim} f16"), &got16, &want);

        // Gathered rows (pooling): every third row, last first.
        let index: Vec<i32> = (0..rows).rev().step_by(3).map(|r| r as i32).collect();
        let idx_dev = gpu.upload(&index).unwrap();
        gpu.poison(out32.view()).unwrap();
        ln(
            x_dev.view(),
            Some(idx_dev.view()),
            index.len(),
            Some(out32.slice(0, index.len() * dim)),
            None,
        )
        .launch(&gpu, Some(&index))
        .unwrap();
        let want_g: Vec<f32> = index
            .iter()
            .flat_map(|&r| want[r as usize * dim..(r as usize + 1) * dim].to_vec())
            .collect();
        check(
            &format!("layernorm {rows}×{dim} gathered"),
            &gpu.read(out32.slice(0, index.len() * dim)).unwrap(),
            &want_g,
        );

        // The same rows 4 bytes past a 16-byte boundary: the 32-bit path, whatever the width.
        let mut x_pad = vec![0.0f32];
        x_pad.extend_from_slice(&x);
        let x_off = gpu.upload(&x_pad).unwrap();
        gpu.poison(out32.view()).unwrap();
        ln(
            x_off.slice(1, rows * dim),
            None,
            rows,
            Some(out32.view()),
            None,
        )
        .launch(&gpu, None)
        .unwrap();
        check(
            &format!("layernorm {rows}×{dim} misaligned input"),
            &gpu.read(out32.view()).unwrap(),
            &want,
        );

        // In place on the residual stream.
        ln(x_dev.view(), None, rows, Some(x_dev.view()), None)
            .launch(&gpu, None)
            .unwrap();
        check(
            &format!("layernorm {rows}×{dim} in place"),
            &gpu.read(x_dev.view()).unwrap(),
            &want,
        );
    }
}

#[test]
fn attention_matches_ops_attention() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("attention");
    // (batch, seq, heads, head_dim, causal)
    let shapes: &[(usize, usize, usize, usize, bool)] = if small(&gpu) {
        &[
            (2, 50, 2, 64, false),
            (1, 77, 2, 64, true),
            (1, 197, 1, 64, false),
            (1, 130, 1, 64, true),
            (2, 17, 3, 10, true),
            (1, 20, 3, 8, false),
            (1, 50, 2, 16, false),
            // 51 KiB of scores: over the 48 KiB a kernel gets without opting in.
            (1, 1600, 1, 8, true),
        ]
    } else {
        &[
            (2, 50, 12, 64, false),
            (2, 197, 12, 64, false),
            (1, 257, 16, 64, false),
            (2, 577, 16, 64, false),
            (4, 77, 8, 64, true),
            (3, 7, 8, 64, true),
            (1, 1, 2, 64, false),
            (1, 1000, 2, 64, true),
            (2, 17, 4, 10, false),
            (2, 20, 3, 8, true),
            (2, 50, 4, 16, false),
            (1, 577, 2, 96, false),
            (1, 2000, 2, 32, false),
        ]
    };
    for &(batch, seq, heads, hd, causal) in shapes {
        let width = heads * hd;
        let rows = batch * seq;
        // One fused [rows, 3·width] buffer, as the towers use it.
        let qkv = twins::round_f16(&rng.vec(rows * 3 * width, 2.0));
        let split = |part: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| qkv[r * 3 * width + part * width..][..width].to_vec())
                .collect()
        };
        let want = ops::attention(
            &split(0),
            &split(1),
            &split(2),
            ops::AttentionShape {
                batch,
                seq,
                heads,
                head_dim: hd,
                causal,
            },
        );
        let qkv_dev = gpu.upload(&f16s(&qkv)).unwrap();
        let out = gpu.alloc::<f16>(rows * width).unwrap();
        let call = Attention {
            q: qkv_dev.view(),
            k: qkv_dev.view().offset(width),
            v: qkv_dev.view().offset(2 * width),
            ld_in: 3 * width,
            out: out.view(),
            ld_out: width,
            batch,
            seq,
            heads,
            head_dim: hd,
            causal,
        };
        let mut kinds = vec![];
        if seq <= rows_kernel_max_seq(hd, gpu.info.max_smem_optin as usize) {
            kinds.push(AttentionKernel::Rows);
        }
        if call.hd64_ok() {
            kinds.extend([AttentionKernel::Hd64, AttentionKernel::Hd64V2]);
        }
        for kind in kinds {
            gpu.poison(out.view()).unwrap();
            call.launch(&gpu, kind).unwrap();
            let got = twins::from_f16(&gpu.read(out.view()).unwrap());
            check(
                &format!("attention {kind:?} b{batch} s{seq} h{heads}×{hd} causal {causal}"),
                &got,
                &want,
            );
        }
    }
}

/// More (sequence, head) pairs than the grid has rows: the launch splits into several. On a
/// GPU at the real limit (65,535), on the emulator with its limit lowered to 7 rows.
#[test]
fn attention_splits_grids_over_the_row_limit() {
    let Some(gpu) = gpu() else { return };
    let gpu = if gpu.info.emulated {
        Gpu::emulator_with_grid_limit(7).unwrap()
    } else {
        gpu
    };
    let mut rng = Rng::new("attention grid split");
    let limit = gpu.info.max_grid_y as usize;
    let (heads, hd) = (if gpu.info.emulated { 3 } else { 16 }, 64);
    let seq = 3;
    let batch = limit / heads + 2;
    assert!(batch * heads > limit);
    let width = heads * hd;
    let rows = batch * seq;
    let [q, k, v] = [(); 3].map(|_| twins::round_f16(&rng.vec(rows * width, 2.0)));
    let shape = ops::AttentionShape {
        batch,
        seq,
        heads,
        head_dim: hd,
        causal: false,
    };
    let want = ops::attention(&q, &k, &v, shape);
    let (qd, kd, vd) = (
        gpu.upload(&f16s(&q)).unwrap(),
        gpu.upload(&f16s(&k)).unwrap(),
        gpu.upload(&f16s(&v)).unwrap(),
    );
    let out = gpu.alloc::<f16>(rows * width).unwrap();
    let call = Attention {
        q: qd.view(),
        k: kd.view(),
        v: vd.view(),
        ld_in: width,
        out: out.view(),
        ld_out: width,
        batch,
        seq,
        heads,
        head_dim: hd,
        causal: false,
    };
    for kind in [
        AttentionKernel::Rows,
        AttentionKernel::Hd64,
        AttentionKernel::Hd64V2,
    ] {
        gpu.poison(out.view()).unwrap();
        call.launch(&gpu, kind).unwrap();
        let got = twins::from_f16(&gpu.read(out.view()).unwrap());
        check(
            &format!("attention {kind:?} b{batch}×h{heads} over a grid limit of {limit}"),
            &got,
            &want,
        );
    }
}

/// Pixels with the values where fp16 rounding can go wrong mixed in (one in four): exact ties
/// between two fp16 neighbours and one f32 ulp either side of them (round to nearest *even*),
/// the overflow edge (65 519.996 → 65 504, 65 520 → inf), subnormals, the tie below the
/// smallest subnormal, and −0; the rest uniform in [−3, 3).
fn rounding_edge_pixels(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut px = rng.vec(n, 3.0);
    for v in px.iter_mut() {
        let pick = rng.below(16);
        if pick >= 4 {
            continue;
        }
        let sign = if rng.below(2) == 0 { 1.0f32 } else { -1.0 };
        // A random finite fp16 below the largest, and the exact midpoint to its successor.
        let h = f16::from_bits(rng.below(0x7BFF) as u16);
        let mid = (h.to_f32() + f16::from_bits(h.to_bits() + 1).to_f32()) / 2.0;
        *v = sign
            * match pick {
                0 => mid,
                1 => f32::from_bits(mid.to_bits() + 1),
                2 => f32::from_bits(mid.to_bits().saturating_sub(1)),
                _ => [
                    65519.996,
                    65520.0,
                    1e6,
                    3e-8,
                    2.9802322e-8,
                    1e-45,
                    0.0,
                    -0.0,
                ][rng.below(8) as usize],
            };
    }
    px
}

/// `fc_im2col_f16` (pixels rounded on the host, what `CudaVision::forward` uploads) against
/// `fc_im2col` (f32 pixels rounded on the device) and the CPU twin rounded to fp16, compared
/// as fp16 bits with zero tolerance. Exact by construction, so any difference is a bug: each
/// patch element is one pixel (or padding 0), and all three make it by one rounding of the
/// same f32 value to nearest even — `half::f16::from_f32` on the host (the twin and
/// `pixels_to_f16`), `cvt.rn.f16.f32` on the device — after which nothing but copies
/// happen. No accumulation, no order, so no error model and no tolerance.
#[test]
fn im2col_of_fp16_pixels_is_bit_identical() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("im2col fp16");
    // (batch, channels, size, patch): sizes not a multiple of the patch, K not a multiple of
    // 8, one channel, a patch of the whole image, and ViT-B/32's and /14's on a GPU.
    let shapes: &[(usize, usize, usize, usize)] = if small(&gpu) {
        &[(3, 3, 31, 7), (1, 1, 9, 9), (2, 3, 29, 14), (1, 2, 17, 5)]
    } else {
        &[
            (3, 3, 31, 7),
            (1, 1, 9, 9),
            (5, 3, 224, 32),
            (3, 3, 338, 14),
        ]
    };
    let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
    for &(batch, c, size, p) in shapes {
        let kp = (c * p * p).div_ceil(8) * 8;
        let what = format!("b{batch} c{c} s{size} p{p} kp{kp}");
        let pixels = rounding_edge_pixels(&mut rng, batch * c * size * size);
        let want = bits(&twins::to_f16(&twins::im2col_padded(
            &pixels, batch, c, size, p, kp,
        )));
        // The first index where two bit patterns differ (None: identical), so a failure
        // names one element rather than printing megabytes.
        let first_diff = |a: &[u16], b: &[u16]| {
            assert_eq!(a.len(), b.len(), "{what}: length");
            a.iter().zip(b).position(|(x, y)| x != y)
        };
        let host16 = fedclip::cuda::pixels_to_f16(&pixels);
        let at = first_diff(&bits(&host16), &bits(&twins::to_f16(&pixels)));
        assert_eq!(
            at,
            None,
            "{what}: pixels_to_f16 (pixel {:?})",
            at.map(|i| pixels[i])
        );
        let (px32, px16) = (gpu.upload(&pixels).unwrap(), gpu.upload(&host16).unwrap());
        let out = gpu.alloc::<f16>(want.len()).unwrap();
        kernels::im2col(&gpu, px16.view(), out.view(), batch, c, size, p, kp).unwrap();
        let from16 = bits(&gpu.read(out.view()).unwrap());
        gpu.poison(out.view()).unwrap();
        kernels::im2col(&gpu, px32.view(), out.view(), batch, c, size, p, kp).unwrap();
        let from32 = bits(&gpu.read(out.view()).unwrap());
        assert_eq!(
            first_diff(&from16, &want),
            None,
            "{what}: fp16 pixels vs the twin"
        );
        assert_eq!(
            first_diff(&from32, &want),
            None,
            "{what}: f32 pixels vs the twin"
        );
        println!("  im2col fp16 {what}: bit-identical to f32 im2col and the twin");
    }
    // The wrapper checks the pixel buffer's length for the fp16 kernel too.
    let short = gpu.alloc::<f16>(3 * 31 * 31 - 1).unwrap();
    let out = gpu.alloc::<f16>(16 * 152).unwrap();
    assert!(kernels::im2col(&gpu, short.view(), out.view(), 1, 3, 31, 7, 152).is_err());
}

#[test]
fn embedding_kernels_match_their_twins() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("embeddings");
    // im2col: (batch, channels, size, patch)
    let shapes: &[(usize, usize, usize, usize)] = if small(&gpu) {
        &[(2, 3, 30, 7), (1, 3, 64, 32), (1, 3, 28, 14)]
    } else {
        &[
            (2, 3, 30, 7),
            (3, 3, 224, 32),
            (2, 3, 224, 14),
            (1, 3, 336, 14),
        ]
    };
    for &(batch, c, size, p) in shapes {
        let kp = (c * p * p).div_ceil(8) * 8;
        let pixels = rng.vec(batch * c * size * size, 2.0);
        let want = twins::round_f16(&twins::im2col_padded(&pixels, batch, c, size, p, kp));
        let px = gpu.upload(&pixels).unwrap();
        let out = gpu.alloc::<f16>(want.len()).unwrap();
        kernels::im2col(&gpu, px.view(), out.view(), batch, c, size, p, kp).unwrap();
        let got = twins::from_f16(&gpu.read(out.view()).unwrap());
        assert_eq!(got, want, "im2col b{batch} c{c} s{size} p{p}: not exact");
        println!("  im2col b{batch} c{c} s{size} p{p} kp{kp}: exact");
    }

    for &(batch, tokens, dim) in &[(1usize, 17usize, 40usize), (3, 50, 768), (2, 5, 1)] {
        let patches = rng.vec(batch * (tokens - 1) * dim, 1.0);
        let cls = rng.vec(dim, 1.0);
        let pos = rng.vec(tokens * dim, 1.0);
        let want = twins::vision_embed(&patches, &cls, &pos, batch, tokens, dim);
        let (pa, cl, po) = (
            gpu.upload(&patches).unwrap(),
            gpu.upload(&cls).unwrap(),
            gpu.upload(&pos).unwrap(),
        );
        let h = gpu.alloc::<f32>(want.len()).unwrap();
        kernels::vision_embed(
            &gpu,
            pa.view(),
            cl.view(),
            po.view(),
            h.view(),
            batch,
            tokens,
            dim,
        )
        .unwrap();
        assert_eq!(gpu.read(h.view()).unwrap(), want, "vision_embed");
    }

    let (vocab, seq, dim, batch) = (1000usize, 13usize, 24usize, 3usize);
    let table = rng.vec(vocab * dim, 1.0);
    let pos = rng.vec(20 * dim, 1.0);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let ids_i32: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let want = twins::text_embed(&ids, &table, &pos, seq, dim);
    let (ta, po, id) = (
        gpu.upload(&table).unwrap(),
        gpu.upload(&pos).unwrap(),
        gpu.upload(&ids_i32).unwrap(),
    );
    let h = gpu.alloc::<f32>(want.len()).unwrap();
    kernels::text_embed(
        &gpu,
        id.view(),
        &ids_i32,
        ta.view(),
        po.slice(0, seq * dim),
        h.view(),
        seq,
        dim,
    )
    .unwrap();
    assert_eq!(gpu.read(h.view()).unwrap(), want, "text_embed");
    assert!(
        kernels::text_embed(
            &gpu,
            id.view(),
            &[vocab as i32; 39],
            ta.view(),
            po.slice(0, seq * dim),
            h.view(),
            seq,
            dim
        )
        .is_err(),
        "an out-of-vocabulary id is refused on the host"
    );

    for &(rows, dim) in &[(1usize, 512usize), (17, 24), (1000, 768)] {
        let mut x = rng.vec(rows * dim, 3.0);
        x[..dim].iter_mut().for_each(|v| *v = 0.0); // a zero row stays zero
        let want = twins::l2_normalize(&x, dim, 1e-12);
        let xd = gpu.upload(&x).unwrap();
        kernels::l2_normalize(&gpu, xd.view(), rows, dim, 1e-12).unwrap();
        let got = gpu.read(xd.view()).unwrap();
        assert!(got[..dim].iter().all(|&v| v == 0.0), "zero row");
        check(&format!("l2_normalize {rows}×{dim}"), &got, &want);
    }
}

#[test]
fn launch_wrappers_refuse_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.alloc::<f16>(10).unwrap();
    let out = gpu.alloc::<f32>(10).unwrap();
    let g = Gemm {
        a: a.view(),
        lda: 5,
        w: a.view(),
        ldw: 5,
        m: 3, // needs 15 elements of A
        n: 2,
        k: 5,
        bias: None,
        act: None,
        resid: None,
        out32: Some(out.view()),
        out16: None,
    };
    assert!(g.launch(&gpu, GemmTile::Auto).is_err());
    let g = Gemm {
        m: 2,
        out32: None,
        ..g
    };
    assert!(g.launch(&gpu, GemmTile::Auto).is_err(), "no output");
}

/// Attention shapes no launch can take: the row kernel's scores over the device's shared
/// memory, and more heads than the grid has rows (splitting by sequences cannot help).
#[test]
fn attention_refuses_what_no_grid_or_shared_memory_holds() {
    let Some(gpu) = gpu() else { return };
    let attention = |gpu: &Arc<Gpu>, seq: usize, heads: usize, hd: usize| {
        let buf = gpu.alloc::<f16>(seq * heads * hd).unwrap();
        let call = Attention {
            q: buf.view(),
            k: buf.view(),
            v: buf.view(),
            ld_in: heads * hd,
            out: buf.view(),
            ld_out: heads * hd,
            batch: 1,
            seq,
            heads,
            head_dim: hd,
            causal: false,
        };
        format!("{:#}", call.launch(gpu, AttentionKernel::Rows).unwrap_err())
    };
    let seq = gpu.info.max_smem_optin as usize / 32 + 1;
    let msg = attention(&gpu, seq, 1, 8);
    assert!(
        msg.contains(&format!(
            "{seq} tokens × head dim 8 exceed the row kernel's shared memory"
        )),
        "{msg}"
    );
    let gpu = if gpu.info.emulated {
        Gpu::emulator_with_grid_limit(7).unwrap()
    } else {
        gpu
    };
    let heads = gpu.info.max_grid_y as usize + 1;
    let msg = attention(&gpu, 1, heads, 8);
    assert!(
        msg.contains(&format!("{heads} heads exceed the grid's")),
        "{msg}"
    );
}
