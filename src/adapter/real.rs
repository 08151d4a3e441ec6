//! The float types the adapter math is written for: `f32` (training) and `f64` (gradient
//! checks). One generic implementation serves both, so the f64 checks test the f32 code.

pub(crate) use crate::math::exp_f32;
use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` or `f64`: what the adapter kernels and the `gemm` crate compute in.
pub trait Real:
    sealed::Sealed
    + Copy
    + Default
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Debug
    + Display
    + Sum
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
    fn max(self, other: Self) -> Self;
    /// `exp` for the kernels' hot loops: for `f32` a branch-free version the compiler
    /// vectorises (≤ 2 ulp, tested; arguments above 88 saturate at e⁸⁸ and below −87.3 at
    /// e^−87.3, NaN stays NaN); for `f64`
    /// the standard one.
    fn exp_fast(self) -> Self;
    /// `tanh` for the hot loops, like [`Real::exp_fast`] (f32: ≤ 3 ulp, tested).
    fn tanh_fast(self) -> Self;
}

macro_rules! impl_real {
    ($t:ty, $exp:expr, $tanh:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn tanh_fast(self) -> Self {
                $tanh(self)
            }
        }
    };
}

impl_real!(f32, exp_f32, tanh_f32);
impl_real!(f64, f64::exp, f64::tanh);

/// Branch-free `tanh` for f32: the odd Taylor series to x¹⁷ for |x| < 0.55 (truncation
/// < 1e-8 relative), `1 − 2 / (e^{2|x|} + 1)` with the sign of x above (|x| clamped at 10,
/// where tanh is 1 in f32).
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let ax = x.abs();
    let x2 = x * x;
    let p = 6_404_582.0 / 10_854_718_875.0f32;
    let p = p * x2 - 929_569.0 / 638_512_875.0;
    let p = p * x2 + 21_844.0 / 6_081_075.0;
    let p = p * x2 - 1_382.0 / 155_925.0;
    let p = p * x2 + 62.0 / 2_835.0;
    let p = p * x2 - 17.0 / 315.0;
    let p = p * x2 + 2.0 / 15.0;
    let p = p * x2 - 1.0 / 3.0;
    let small = x + x * x2 * p;
    let clamped = if ax > 10.0 { 10.0 } else { ax };
    let big = (1.0 - 2.0 / (exp_f32(2.0 * clamped) + 1.0)).copysign(x);
    if ax < 0.55 { small } else { big }
}

/// True when every value is finite. Branch-free over 16 lanes so it vectorises: `0 · x`
/// is 0 for finite `x` and NaN for ±inf and NaN.
pub(crate) fn all_finite<T: Real>(xs: &[T]) -> bool {
    let mut acc = [T::ZERO; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * T::ZERO;
        }
    }
    let tail: T = chunks.remainder().iter().map(|&x| x * T::ZERO).sum();
    (acc.iter().copied().sum::<T>() + tail).is_finite()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_and_tanh_are_accurate() {
        let (mut worst_exp, mut worst_tanh) = (0.0f64, 0.0f64);
        for i in -2_000_000..=2_000_000 {
            let x = i as f32 * 4.36e-5; // [-87.2, 87.2]
            worst_exp = worst_exp.max(ulps(exp_f32(x), (x as f64).exp()));
            let t = i as f32 * 5e-6; // [-10, 10]
            worst_tanh = worst_tanh.max(ulps(tanh_f32(t), (t as f64).tanh()));
        }
        println!("exp_f32 worst {worst_exp:.2} ulp, tanh_f32 worst {worst_tanh:.2} ulp");
        assert!(worst_exp <= 2.0, "exp: {worst_exp} ulp");
        assert!(worst_tanh <= 3.0, "tanh: {worst_tanh} ulp");
        assert!(exp_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.3));
        assert_eq!(tanh_f32(50.0), 1.0);
        assert_eq!(tanh_f32(-50.0), -1.0);
        assert_eq!(tanh_f32(0.0), 0.0);
    }
}
