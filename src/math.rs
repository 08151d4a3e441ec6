//! Scalar math shared by the adapter and the CPU encoder kernels: one `exp` with one ulp test
//! (in `adapter::real`), written branch-free so that loops over it vectorise.

/// Branch-free `exp` for f32: Cody–Waite reduction `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-7
/// Taylor polynomial for `e^r` (truncation < 1e-8 relative), and `2^n` built from its bits.
/// Clamped to [−87.3, 88] so that `2^n` stays a normal float; the comparisons are written
/// so that NaN passes through.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let n = (x * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}
