//! Pillow-compatible image resampling (a re-implementation of the algorithm in Pillow's
//! `libImaging/Resample.c` and the nearest-neighbour scale of `libImaging/Geometry.c`).
//!
//! Behaviour reproduced, bit for bit:
//! * separable convolution, **horizontal pass first**, then vertical; a pass is skipped when that
//!   dimension keeps its size;
//! * the filter support is widened by the down-scaling factor (antialiasing when shrinking);
//! * each output pixel's taps are normalised to sum to 1 (in `f64`), then, for 8-bit images,
//!   converted to 22-bit fixed point (`PRECISION_BITS = 32 - 8 - 2`) and rounded half away from
//!   zero; accumulators start at `1 << 21` (rounding) and results are clipped to `0..=255`
//!   after *each* pass;
//! * the horizontal pass only computes the source rows that the vertical pass will read;
//! * 16-bit greyscale (`I;16`) uses `f64` coefficients, rounds half away from zero and clips
//!   to `0..=65535` after each pass;
//! * [`Resample::Nearest`] follows Pillow's affine nearest-neighbour scale, including its
//!   accumulated (`x += step`) source coordinates for 8-bit images.
//!
//! Nothing here allocates per pixel or runs in parallel; callers parallelise across images.

/// Resampling filter, numbered as Pillow's `Image.Resampling` (and Hugging Face's `resample`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resample {
    /// `0`: nearest neighbour.
    Nearest,
    /// `1`: Lanczos (a = 3).
    Lanczos,
    /// `2`: bilinear (triangle).
    Bilinear,
    /// `3`: bicubic, a = -0.5 (CLIP's choice).
    Bicubic,
    /// `4`: box.
    Box,
    /// `5`: Hamming-windowed sinc.
    Hamming,
}

impl Resample {
    /// The filter for a Pillow resampling code (`0..=5`), `None` for any other value.
    pub fn from_pil(code: i64) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }

    /// Pillow's code for this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }

    /// Lower-case name (`"bicubic"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Resample::Nearest => "nearest",
            Resample::Lanczos => "lanczos",
            Resample::Bilinear => "bilinear",
            Resample::Bicubic => "bicubic",
            Resample::Box => "box",
            Resample::Hamming => "hamming",
        }
    }

    /// Half-width of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            Resample::Nearest => 0.0,
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// Kernel value at `x` (same expressions, same evaluation order as Pillow).
    fn eval(self, x: f64) -> f64 {
        match self {
            Resample::Nearest => 0.0,
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes `0.54f + 0.46f * cos(x)`: single-precision constants.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point precision of 8-bit coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel taps along one axis: `bounds[i] = (first source index, tap count)`,
/// weights in rows of `ksize`.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<f64>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` for the full box `[0, in_size)`.
    fn new(in_size: usize, out_size: usize, filter: Resample) -> Self {
        // Pillow passes the box as C `float`s: `(double)(in1 - in0)`.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0.0f64; out_size * ksize];
        let ss = 1.0 / filterscale;
        for (xx, k) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0f64;
            for (x, kx) in k[..count].iter_mut().enumerate() {
                let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            if ww != 0.0 {
                for kx in &mut k[..count] {
                    *kx /= ww;
                }
            }
            bounds.push((xmin as usize, count));
        }
        Coeffs {
            ksize,
            bounds,
            weights,
        }
    }

    /// Pillow's `normalize_coeffs_8bpc`: round half away from zero to 22-bit fixed point.
    fn fixed_point(&self) -> Vec<i32> {
        let one = (1u32 << PRECISION_BITS) as f64;
        self.weights
            .iter()
            .map(|&w| {
                if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                }
            })
            .collect()
    }

    /// First and one-past-last source index used by any output pixel.
    fn used_range(&self) -> (usize, usize) {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        (first, last.max(first))
    }
}

#[inline(always)]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resample an interleaved 8-bit image (`channels` = 1..=4 samples per pixel, row-major,
/// no padding) to `out_width × out_height`, exactly as Pillow's `Image.resize` does for
/// modes `L`, `RGB`, `RGBA`/`RGBa`, `LA`/`La` and, with [`Resample::Nearest`], `P` and `1`.
///
/// This function treats every channel independently: alpha premultiplication (which
/// `Image.resize` applies to `RGBA`/`LA` with non-nearest filters) is the caller's job.
///
/// # Panics
/// If `src.len() != width * height * channels`, `channels` is not in `1..=4`, or any
/// dimension is zero.
pub fn resample_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u8> {
    assert!((1..=4).contains(&channels), "channels must be 1..=4");
    assert_eq!(src.len(), width * height * channels, "buffer size");
    assert!(width > 0 && height > 0 && out_width > 0 && out_height > 0);
    if width == out_width && height == out_height {
        return src.to_vec();
    }
    if filter == Resample::Nearest {
        return nearest_u8(src, width, height, channels, out_width, out_height);
    }
    match channels {
        1 => convolve_u8::<1>(src, width, height, out_width, out_height, filter),
        2 => convolve_u8::<2>(src, width, height, out_width, out_height, filter),
        3 => convolve_u8::<3>(src, width, height, out_width, out_height, filter),
        _ => convolve_u8::<4>(src, width, height, out_width, out_height, filter),
    }
}

fn convolve_u8<const C: usize>(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u8> {
    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    let vert = Coeffs::new(height, out_height, filter);
    let (y_first, y_last) = vert.used_range();

    // Horizontal pass over the rows the vertical pass needs.
    let horizontal;
    let (img, img_width, row_offset): (&[u8], usize, usize) = if need_horizontal {
        let horiz = Coeffs::new(width, out_width, filter);
        let kk = horiz.fixed_point();
        let rows = y_last - y_first;
        let mut out = vec![0u8; rows * out_width * C];
        let in_stride = width * C;
        for (row_out, row_in) in out
            .chunks_exact_mut(out_width * C)
            .zip(src[y_first * in_stride..y_last * in_stride].chunks_exact(in_stride))
        {
            for ((px_out, &(xmin, count)), k) in row_out
                .chunks_exact_mut(C)
                .zip(&horiz.bounds)
                .zip(kk.chunks_exact(horiz.ksize))
            {
                let mut ss = [1i32 << (PRECISION_BITS - 1); C];
                let taps = &row_in[xmin * C..(xmin + count) * C];
                for (px, &w) in taps.chunks_exact(C).zip(&k[..count]) {
                    for c in 0..C {
                        ss[c] += px[c] as i32 * w;
                    }
                }
                for c in 0..C {
                    px_out[c] = clip8(ss[c]);
                }
            }
        }
        horizontal = out;
        (&horizontal, out_width, y_first)
    } else {
        (src, width, 0)
    };

    if !need_vertical {
        return img.to_vec();
    }

    // Vertical pass: accumulate whole rows, tap by tap (integer sums, order-independent).
    let kk = vert.fixed_point();
    let stride = img_width * C;
    let mut out = vec![0u8; out_height * stride];
    let mut acc = vec![0i32; stride];
    for ((row_out, &(ymin, count)), k) in out
        .chunks_exact_mut(stride)
        .zip(&vert.bounds)
        .zip(kk.chunks_exact(vert.ksize))
    {
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &w) in k[..count].iter().enumerate() {
            let row = &img[(ymin - row_offset + y) * stride..][..stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as i32 * w;
            }
        }
        for (o, &a) in row_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Source index for each output index of Pillow's `ImagingScaleAffine` (nearest neighbour on
/// 8-bit/32-bit images): the coordinate is accumulated by repeated addition; an index falling
/// outside the source gives `None` (Pillow leaves such pixels 0).
fn nearest_table_accumulated(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
    let step = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
    let mut pos = 0.0f32 as f64 + step * 0.5;
    let mut table = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        let i = coord(pos);
        table.push((i >= 0 && (i as usize) < in_size).then_some(i as usize));
        pos += step;
    }
    table
}

/// Pillow's `COORD(v)`: `-1` for negative values, else truncation.
#[inline]
fn coord(v: f64) -> i64 {
    if v < 0.0 { -1 } else { v as i64 }
}

fn nearest_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let xs = nearest_table_accumulated(width, out_width);
    let ys = nearest_table_accumulated(height, out_height);
    let mut out = vec![0u8; out_width * out_height * channels];
    for (row_out, sy) in out.chunks_exact_mut(out_width * channels).zip(ys) {
        let Some(sy) = sy else { continue };
        let row_in = &src[sy * width * channels..(sy + 1) * width * channels];
        for (px, sx) in row_out.chunks_exact_mut(channels).zip(&xs) {
            if let Some(sx) = *sx {
                px.copy_from_slice(&row_in[sx * channels..(sx + 1) * channels]);
            }
        }
    }
    out
}

/// Resample a 16-bit greyscale image as Pillow (>= 12.3) does for mode `I;16`: `f64`
/// coefficients, round half away from zero, clip to `0..=65535` after each pass.
/// [`Resample::Nearest`] uses Pillow's generic affine transform (`(x + 0.5) * step`).
///
/// # Panics
/// If `src.len() != width * height` or any dimension is zero.
pub fn resample_u16(
    src: &[u16],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u16> {
    assert_eq!(src.len(), width * height, "buffer size");
    assert!(width > 0 && height > 0 && out_width > 0 && out_height > 0);
    if width == out_width && height == out_height {
        return src.to_vec();
    }
    if filter == Resample::Nearest {
        let table = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
            let step = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
            (0..out_size)
                .map(|i| {
                    let c = coord(step * (i as f64 + 0.5) + 0.0);
                    (c >= 0 && (c as usize) < in_size).then_some(c as usize)
                })
                .collect()
        };
        let (xs, ys) = (table(width, out_width), table(height, out_height));
        let mut out = vec![0u16; out_width * out_height];
        for (row_out, sy) in out.chunks_exact_mut(out_width).zip(ys) {
            let Some(sy) = sy else { continue };
            for (o, sx) in row_out.iter_mut().zip(&xs) {
                if let Some(sx) = *sx {
                    *o = src[sy * width + sx];
                }
            }
        }
        return out;
    }

    fn store(ss: f64) -> u16 {
        // ROUND_UP (half away from zero), then CLIP16.
        let v = if ss >= 0.0 { ss + 0.5 } else { ss - 0.5 } as i32;
        v.clamp(0, 65535) as u16
    }

    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    let vert = Coeffs::new(height, out_height, filter);
    let (y_first, y_last) = vert.used_range();
    let horizontal;
    let (img, img_width, row_offset): (&[u16], usize, usize) = if need_horizontal {
        let horiz = Coeffs::new(width, out_width, filter);
        let rows = y_last - y_first;
        let mut out = vec![0u16; rows * out_width];
        for (row_out, row_in) in out
            .chunks_exact_mut(out_width)
            .zip(src[y_first * width..y_last * width].chunks_exact(width))
        {
            for ((o, &(xmin, count)), k) in row_out
                .iter_mut()
                .zip(&horiz.bounds)
                .zip(horiz.weights.chunks_exact(horiz.ksize))
            {
                let mut ss = 0.0f64;
                for (&v, &w) in row_in[xmin..xmin + count].iter().zip(&k[..count]) {
                    ss += v as f64 * w;
                }
                *o = store(ss);
            }
        }
        horizontal = out;
        (&horizontal, out_width, y_first)
    } else {
        (src, width, 0)
    };
    if !need_vertical {
        return img.to_vec();
    }
    let mut out = vec![0u16; out_height * img_width];
    let mut acc = vec![0f64; img_width];
    for ((row_out, &(ymin, count)), k) in out
        .chunks_exact_mut(img_width)
        .zip(&vert.bounds)
        .zip(vert.weights.chunks_exact(vert.ksize))
    {
        acc.fill(0.0);
        // Row-by-row accumulation keeps Pillow's per-pixel summation order (tap 0 first).
        for (y, &w) in k[..count].iter().enumerate() {
            let row = &img[(ymin - row_offset + y) * img_width..][..img_width];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64 * w;
            }
        }
        for (o, &a) in row_out.iter_mut().zip(&acc) {
            *o = store(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..60).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resample_u8(&src, 5, 4, 3, 5, 4, Resample::Bicubic), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        for &(w, h, ow, oh) in &[(10, 7, 3, 5), (3, 2, 17, 9), (227, 227, 224, 224)] {
            let src = vec![137u8; w * h * 3];
            for f in [
                Resample::Bicubic,
                Resample::Bilinear,
                Resample::Lanczos,
                Resample::Box,
                Resample::Hamming,
                Resample::Nearest,
            ] {
                let out = resample_u8(&src, w, h, 3, ow, oh, f);
                assert_eq!(out.len(), ow * oh * 3);
                assert!(out.iter().all(|&v| v == 137), "{f:?} {w}x{h}->{ow}x{oh}");
            }
        }
    }

    #[test]
    fn bicubic_coefficients_sum_to_one_in_fixed_point() {
        let c = Coeffs::new(227, 224, Resample::Bicubic);
        let kk = c.fixed_point();
        for (k, &(_, n)) in kk.chunks_exact(c.ksize).zip(&c.bounds) {
            let s: i32 = k[..n].iter().sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= n as i32);
        }
    }

    #[test]
    fn known_pillow_values() {
        // Expected values printed by Pillow 13.0.0, e.g.
        // Image.frombytes("L", (5, 2), bytes(src)).resize((7, 3), Image.BICUBIC).tobytes()
        let row = [0u8, 255, 255, 0];
        assert_eq!(
            resample_u8(&row, 4, 1, 1, 3, 1, Resample::Bicubic),
            [63, 255, 63]
        );
        let src = [0u8, 50, 255, 200, 10, 30, 60, 90, 120, 250];
        let up = [
            0, 12, 107, 255, 241, 109, 0, 14, 30, 87, 173, 169, 146, 128, 30, 47, 67, 79, 96, 183,
            255,
        ];
        assert_eq!(resample_u8(&src, 5, 2, 1, 7, 3, Resample::Bicubic), up);
        assert_eq!(
            resample_u8(&src, 5, 2, 1, 3, 1, Resample::Bilinear),
            [32, 144, 143]
        );
        let lanczos = [3, 242, 77, 16, 187, 119, 34, 114, 175, 47, 59, 217];
        assert_eq!(resample_u8(&src, 5, 2, 1, 3, 4, Resample::Lanczos), lanczos);
        let nearest = [0, 255, 10, 0, 255, 10, 30, 90, 250, 30, 90, 250];
        assert_eq!(resample_u8(&src, 5, 2, 1, 3, 4, Resample::Nearest), nearest);
    }

    #[test]
    fn u16_ringing_is_clipped() {
        // Pillow 13.0.0: Image.fromarray(np.array([[0, 0, 60000, 60000, 0, 0]], np.uint16))
        //   .resize((12, 1), Image.BICUBIC)
        let src = [0u16, 0, 60000, 60000, 0, 0];
        let out = resample_u16(&src, 6, 1, 12, 1, Resample::Bicubic);
        let expected = [0, 0, 0, 12188, 47813, 65535, 65535, 47813, 12188, 0, 0, 0];
        assert_eq!(out, expected);
    }
}
