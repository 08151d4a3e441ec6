//! Augmented training views (`fedclip run --augment-views N`): torchvision's
//! `RandomResizedCrop(n, scale=(0.08, 1), ratio=(3/4, 4/3), interpolation=BICUBIC)` followed by
//! `RandomHorizontalFlip(0.5)`, on a PIL image, reproduced exactly given the same draws.
//!
//! * **Parameters** ([`random_resized_crop`]): `RandomResizedCrop.get_params` step by step,
//!   with torch's number types: the log-ratio bounds are `float32` logs, each draw is a
//!   `float32` `uniform_(from, to)`, the aspect ratio a `float32` `exp`, the area and square
//!   roots Python `float`s, sizes rounded half to even; up to 10 attempts, then the centre
//!   fallback that clamps the ratio to `[3/4, 4/3]`.
//! * **Pixels** ([`view_pixels`]): torchvision's `resized_crop` on a PIL image is
//!   `img.crop(box)` (a new image) then `img.resize(size, filter)` on that image, so the
//!   filter taps never reach outside the crop; then `hflip` (`transpose(FLIP_LEFT_RIGHT)`).
//!   The rest is the centre-crop path's: convert to RGB after the geometry (as CLIP's
//!   `_transform` does), `x / 255`, normalise. The filter is the model's
//!   [`PreprocessConfig::resample`] (bicubic for every CLIP). Known gap: Pillow 13 runs the
//!   vertical pass first for some shapes (its rule is not reproduced here; a Pillow change
//!   of 2026 introduced it), fedclip always the horizontal one first, as Pillow 12 did; with
//!   8-bit rounding between the passes such a view can differ by one level in some pixels
//!   (2 of the 176 boxes of tests/augment.rs, which shows both equal the vertical-first result).
//! * **Draws** ([`ViewStream`]): not torch's generator but fedclip's keyed MT19937 stream
//!   `RandomState::from_key([seed, 16, d0, …, d7, view])`, where `d0…d7` are the BLAKE3 digest
//!   of the file's bytes as eight little-endian words. A view therefore depends only on the
//!   run seed, the file's content and the view index: not on paths, order or threads, and
//!   the cache can key it without decoding the file. A `float32` uniform draw uses the low
//!   24 bits of one 32-bit word, `u = (w & 0xFFFFFF) · 2⁻²⁴`, then `u·(to − from) + from` in
//!   `float32` (torch's CPU formula); an integer in `0..n` is numpy's masked-rejection
//!   `random_interval(n − 1)` (torch's `randint` takes a modulo instead). The draws in
//!   order: per attempt the scale then the log-ratio, on success the top then the left
//!   offset, then the flip (`u < 0.5` flips).

use super::{
    Image, Pixels, PreprocessConfig, channel_luts, decode_bytes_limited, resize, to_tensor,
};
use crate::data::rng::RandomState;
use anyhow::{Context, Result};

/// `RandomResizedCrop`'s default `scale`, as the `float32` bounds its `uniform_` uses.
pub const SCALE: (f32, f32) = (0.08, 1.0);
/// `RandomResizedCrop`'s default `ratio` (Python floats).
pub const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// `get_params`' attempts before the centre fallback.
pub const ATTEMPTS: usize = 10;
/// Second word of a view stream's key (the data module uses 1 and 2, the rounds 3 and 4).
pub const TAG_VIEWS: u32 = 16;
/// Describes the view algorithm in cache keys; change it whenever a view's pixels would.
pub const VIEW_ALGORITHM: &str =
    "torchvision-randomresizedcrop(0.08,1;3/4,4/3)+hflip(0.5);mt19937-key(seed,16,blake3,view)/1";

/// Which view of a file: the run seed and the view index (`0..N` of `--augment-views N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViewId {
    pub seed: u32,
    pub index: u32,
}

/// A crop window in source pixels (`i, j, h, w` of `get_params`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// One view's geometry: the crop, and whether it is mirrored after the resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flip: bool,
}

/// The random numbers `get_params` and the flip consume, in torch's types.
pub trait Draws {
    /// `torch.empty(1).uniform_(from, to).item()` on a `float32` tensor.
    fn uniform(&mut self, from: f32, to: f32) -> f32;
    /// `torch.randint(0, n, (1,)).item()`, `n ≥ 1`.
    fn below(&mut self, n: usize) -> usize;
}

/// `log(ratio)` as `torch.log(torch.tensor(ratio))` computes it, in `float32`: torch's
/// vectorised log gives `log(0.75)` one ulp above the correctly rounded value (which
/// `f32::ln` returns), so both bounds are torch's bits (checked by tests/augment.rs).
pub fn log_ratio_bounds() -> (f32, f32) {
    (f32::from_bits(0xbe93_4b10), f32::from_bits(0x3e93_4b12))
}

/// Python's `int(round(x))` for a float: half to even.
fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// `RandomResizedCrop.get_params(img, (0.08, 1), (3/4, 4/3))` for a `width × height` image.
pub fn random_resized_crop(width: usize, height: usize, draws: &mut dyn Draws) -> CropBox {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = log_ratio_bounds();
    for _ in 0..ATTEMPTS {
        let target_area = area * draws.uniform(SCALE.0, SCALE.1) as f64;
        let aspect_ratio = draws.uniform(log_lo, log_hi).exp() as f64;
        let w = round_half_even((target_area * aspect_ratio).sqrt());
        let h = round_half_even((target_area / aspect_ratio).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (w, h) = (w as usize, h as usize);
            let top = draws.below(height - h + 1);
            let left = draws.below(width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    centre_fallback(width, height)
}

/// `get_params`' fallback: the whole image, its ratio clamped to `[3/4, 4/3]`, centred.
fn centre_fallback(width: usize, height: usize) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < RATIO.0 {
        (width, round_half_even(width as f64 / RATIO.0) as usize)
    } else if in_ratio > RATIO.1 {
        (round_half_even(height as f64 * RATIO.1) as usize, height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// The crop, then `RandomHorizontalFlip(0.5)`: `torch.rand(1) < 0.5`.
pub fn random_view(width: usize, height: usize, draws: &mut dyn Draws) -> ViewParams {
    let crop = random_resized_crop(width, height, draws);
    let flip = draws.uniform(0.0, 1.0) < 0.5;
    ViewParams { crop, flip }
}

/// The documented draw stream of one view of one file (see the module docs).
pub struct ViewStream(RandomState);

impl ViewStream {
    /// The stream of view `view` of the file whose bytes have BLAKE3 digest `content`.
    pub fn new(seed: u32, content: &[u8; 32], view: u32) -> Self {
        let mut key = vec![seed, TAG_VIEWS];
        key.extend(
            content
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        );
        key.push(view);
        ViewStream(RandomState::from_key(&key))
    }
}

impl Draws for ViewStream {
    fn uniform(&mut self, from: f32, to: f32) -> f32 {
        let u = (self.0.mt().next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0);
        u * (to - from) + from
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_interval(n.saturating_sub(1) as u64) as usize
    }
}

/// Pillow's `Image.crop(box)`: a new image of the window; pixels outside the source are 0.
pub fn crop(image: &Image, b: &CropBox) -> Image {
    let ch = image.mode.channels();
    let inside = |y: usize, x: usize| y < image.height && x < image.width;
    let pixels = match &image.pixels {
        Pixels::U8(src) => {
            let mut out = vec![0u8; b.width * b.height * ch];
            for (oy, row) in out.chunks_exact_mut(b.width * ch).enumerate() {
                for (ox, px) in row.chunks_exact_mut(ch).enumerate() {
                    let (y, x) = (b.top + oy, b.left + ox);
                    if inside(y, x) {
                        let at = (y * image.width + x) * ch;
                        px.copy_from_slice(&src[at..at + ch]);
                    }
                }
            }
            Pixels::U8(out)
        }
        Pixels::U16(src) => {
            let mut out = vec![0u16; b.width * b.height];
            for (oy, row) in out.chunks_exact_mut(b.width).enumerate() {
                for (ox, px) in row.iter_mut().enumerate() {
                    let (y, x) = (b.top + oy, b.left + ox);
                    if inside(y, x) {
                        *px = src[y * image.width + x];
                    }
                }
            }
            Pixels::U16(out)
        }
    };
    Image {
        mode: image.mode.clone(),
        width: b.width,
        height: b.height,
        pixels,
    }
}

/// The view's CHW `f32` pixels: crop, resize to the crop size with the model's filter,
/// mirror if drawn, then RGB and normalisation as [`transform`](super::transform) does.
pub fn view_pixels(image: &Image, view: &ViewParams, cfg: &PreprocessConfig) -> Vec<f32> {
    let (out_h, out_w) = (cfg.crop_height, cfg.crop_width);
    let resized = resize(&crop(image, &view.crop), out_w, out_h, cfg.resample);
    let mut out = to_tensor(&resized, 0, 0, out_h, out_w, &channel_luts(cfg));
    if view.flip {
        for row in out.chunks_exact_mut(out_w) {
            row.reverse();
        }
    }
    out
}

/// Decodes `bytes` and returns view `view` of it for run seed `seed` (the stream keyed by the
/// bytes' BLAKE3 digest); `name` is used in error messages.
pub fn preprocess_view_bytes(
    bytes: &[u8],
    name: &str,
    cfg: &PreprocessConfig,
    seed: u32,
    view: u32,
) -> Result<Vec<f32>> {
    let image = decode_bytes_limited(bytes, name, cfg.max_image_pixels)?;
    let digest = *blake3::hash(bytes).as_bytes();
    let params = random_view(
        image.width,
        image.height,
        &mut ViewStream::new(seed, &digest, view),
    );
    Ok(view_pixels(&image, &params, cfg))
}

/// [`preprocess_view_bytes`] of a file.
pub fn preprocess_view_file(
    path: &std::path::Path,
    cfg: &PreprocessConfig,
    seed: u32,
    view: u32,
) -> Result<Vec<f32>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    preprocess_view_bytes(&bytes, &path.display().to_string(), cfg, seed, view)
        .with_context(|| format!("cannot make view {view} of image {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws replayed from lists (what the fixtures record).
    struct Replay {
        uniforms: Vec<f32>,
        ints: Vec<usize>,
    }

    impl Draws for Replay {
        fn uniform(&mut self, _: f32, _: f32) -> f32 {
            self.uniforms.remove(0)
        }
        fn below(&mut self, n: usize) -> usize {
            let v = self.ints.remove(0);
            assert!(v < n);
            v
        }
    }

    #[test]
    fn fallback_clamps_the_ratio_and_centres() {
        // Draws that never fit: scale 1 and ratio e^±large make w or h exceed the image.
        assert_eq!(
            centre_fallback(500, 3),
            CropBox {
                top: 0,
                left: 248,
                height: 3,
                width: 4
            }
        );
        // 3 wide, 500 high: h = round(3 / 0.75) = 4, top (500 - 4) // 2 = 248.
        assert_eq!(
            centre_fallback(3, 500),
            CropBox {
                top: 248,
                left: 0,
                height: 4,
                width: 3
            }
        );
        assert_eq!(
            centre_fallback(1, 1),
            CropBox {
                top: 0,
                left: 0,
                height: 1,
                width: 1
            }
        );
    }

    #[test]
    fn a_fitting_first_attempt_takes_two_offsets() {
        // scale 0.25 of 100x100 at ratio 1: 50x50, offsets drawn in 0..=50.
        let mut r = Replay {
            uniforms: vec![0.25, 0.0, 0.7],
            ints: vec![50, 0],
        };
        let v = random_view(100, 100, &mut r);
        assert_eq!(
            v.crop,
            CropBox {
                top: 50,
                left: 0,
                height: 50,
                width: 50
            }
        );
        assert!(!v.flip);
        assert!(r.uniforms.is_empty() && r.ints.is_empty());
    }

    #[test]
    fn view_streams_are_keyed_by_seed_content_and_view() {
        let d = [7u8; 32];
        let params =
            |seed, d: &[u8; 32], view| random_view(640, 480, &mut ViewStream::new(seed, d, view));
        assert_eq!(params(0, &d, 1), params(0, &d, 1));
        let others = [params(1, &d, 1), params(0, &[8u8; 32], 1), params(0, &d, 2)];
        assert!(others.iter().all(|o| *o != params(0, &d, 1)));
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut s = ViewStream::new(3, &[1u8; 32], 0);
        let (lo, hi) = log_ratio_bounds();
        for _ in 0..10_000 {
            let u = s.uniform(lo, hi);
            assert!((lo..=hi).contains(&u));
            assert!(s.below(7) < 7);
        }
        assert_eq!(s.below(1), 0);
    }
}
