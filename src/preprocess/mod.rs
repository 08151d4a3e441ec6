//! Image decoding and OpenAI CLIP's `_transform`, reproduced exactly:
//!
//! ```text
//! Compose([Resize(n, interpolation=BICUBIC), CenterCrop(n), _convert_image_to_rgb,
//!          ToTensor(), Normalize(mean, std)])
//! ```
//!
//! applied by torchvision 0.29 to a PIL (Pillow 13) image:
//!
//! 1. **Decode** ([`decode`], [`jpeg`]): JPEG or PNG into Pillow's mode for that file (`L`,
//!    `RGB`, `RGBA`, `LA`, `P`, `1`, `I;16`, `CMYK`), JPEG bit-identical to libjpeg-turbo.
//! 2. **Resize** ([`resize_shortest_edge`]): short side → `n`, long side →
//!    `int(n * long / short)` (skipped when the size already matches), with Pillow's
//!    mode-specific path: `P` and `1` always use nearest neighbour; `RGBA`/`LA` are
//!    premultiplied by alpha (`RGBa`/`La`) for the resample and un-premultiplied after;
//!    `L`/`RGB` are resampled directly; see [`resample`] for the convolution itself.
//! 3. **Center crop**: offsets `round((h - n) / 2)` with Python's half-to-even `round`; zero
//!    padding first if the image is smaller than the crop.
//! 4. **Convert to RGB** *after* the crop (alpha dropped without compositing, palette looked
//!    up, `I;16` clipped to 255, CMYK by Pillow's formula), then `x / 255`, then
//!    `(x - mean) / std`, in `f32`, CHW.
//!
//! Settings come from a Hugging Face `preprocessor_config.json` when the model has one
//! ([`PreprocessConfig::from_model_dir`]); only its numbers are used, the steps stay the
//! torchvision ones above.

pub mod augment;
pub mod decode;
pub mod jpeg;
pub mod resample;

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub use decode::{
    DEFAULT_MAX_IMAGE_PIXELS, Image, Mode, Pixels, decode_bytes, decode_bytes_limited,
    header_dimensions,
};
pub use resample::Resample;

/// OpenAI CLIP's normalisation mean (RGB).
#[allow(clippy::excessive_precision)] // the literals of clip/clip.py
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (RGB).
#[allow(clippy::excessive_precision)] // the literals of clip/clip.py
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Preprocessing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Target length of the shorter image side.
    pub resize_shortest: usize,
    /// Output height (center crop).
    pub crop_height: usize,
    /// Output width (center crop).
    pub crop_width: usize,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Resampling filter (Pillow numbering; CLIP uses bicubic).
    pub resample: Resample,
    /// Resize the short side to `resize_shortest`.
    pub do_resize: bool,
    /// Center-crop to `crop_height × crop_width`. When false, the (resized) image must
    /// already have that size.
    pub do_center_crop: bool,
    /// Multiply 8-bit values by `rescale_factor`.
    pub do_rescale: bool,
    /// Rescale factor; `1/255` is applied as torchvision does, as a division by 255.
    pub rescale_factor: f64,
    /// Apply `(x - mean) / std`.
    pub do_normalize: bool,
    /// Pixel limit checked from the file header before decoding (Pillow's
    /// `MAX_IMAGE_PIXELS`: warning above, error above twice). Not part of the
    /// [`fingerprint`](Self::fingerprint): it never changes a decoded pixel.
    pub max_image_pixels: u64,
}

impl PreprocessConfig {
    /// OpenAI CLIP's `_transform(image_size)`.
    pub fn openai(image_size: usize) -> Self {
        PreprocessConfig {
            resize_shortest: image_size,
            crop_height: image_size,
            crop_width: image_size,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            resample: Resample::Bicubic,
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }

    /// Reads `<dir>/preprocessor_config.json` if present, else the `preprocess_cfg` of an
    /// open_clip `<dir>/open_clip_config.json`, else `openai(image_size)`. `dir` may also be a
    /// model's `.safetensors` file (its folder is read). Absent fields keep the OpenAI values
    /// (size and crop default to `image_size`). Errors name the file and field.
    pub fn from_model_dir(dir: &Path, image_size: usize) -> Result<Self> {
        let dir = if dir.is_file() {
            dir.parent().unwrap_or(Path::new("."))
        } else {
            dir
        };
        let path = dir.join("preprocessor_config.json");
        let open_clip = dir.join("open_clip_config.json");
        if !path.exists() && open_clip.is_file() {
            let text = std::fs::read_to_string(&open_clip)
                .with_context(|| format!("cannot read {}", open_clip.display()))?;
            return match crate::weights::open_clip::preprocess_cfg(&text, &open_clip)? {
                None => Ok(Self::openai(image_size)),
                Some(cfg) => Self::from_open_clip(&cfg, image_size)
                    .with_context(|| format!("in {} `preprocess_cfg`", open_clip.display())),
            };
        }
        if !path.exists() {
            return Ok(Self::openai(image_size));
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json_str(&text, image_size).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the text of a Hugging Face `preprocessor_config.json` (see
    /// [`from_model_dir`](Self::from_model_dir)). Errors name the field.
    pub fn from_json_str(text: &str, image_size: usize) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let Some(obj) = v.as_object() else {
            bail!("expected a JSON object");
        };
        let mut cfg = Self::openai(image_size);
        if let Some(size) = obj.get("size") {
            cfg.resize_shortest = match size {
                Value::Object(m) if m.contains_key("shortest_edge") => {
                    positive(&m["shortest_edge"], "size.shortest_edge")?
                }
                Value::Object(_) => bail!(
                    "field `size`: only an integer or {{\"shortest_edge\": n}} is supported, got {size}"
                ),
                other => positive(other, "size")?,
            };
        }
        if let Some(crop) = obj.get("crop_size") {
            (cfg.crop_height, cfg.crop_width) = match crop {
                Value::Object(m) => {
                    let h = m
                        .get("height")
                        .context("field `crop_size.height` is missing")?;
                    let w = m
                        .get("width")
                        .context("field `crop_size.width` is missing")?;
                    (
                        positive(h, "crop_size.height")?,
                        positive(w, "crop_size.width")?,
                    )
                }
                other => {
                    let n = positive(other, "crop_size")?;
                    (n, n)
                }
            };
        }
        if let Some(m) = obj.get("image_mean") {
            cfg.mean = triple(m, "image_mean")?;
        }
        if let Some(s) = obj.get("image_std") {
            cfg.std = triple(s, "image_std")?;
            if cfg.std.contains(&0.0) {
                bail!("field `image_std`: must not contain 0");
            }
        }
        if let Some(r) = obj.get("resample") {
            cfg.resample = r.as_i64().and_then(Resample::from_pil).with_context(|| {
                format!(
                    "field `resample`: unsupported value {r} (expected a Pillow filter code: \
                         0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
                )
            })?;
        }
        if let Some(f) = obj.get("rescale_factor") {
            cfg.rescale_factor = f
                .as_f64()
                .filter(|x| x.is_finite())
                .with_context(|| format!("field `rescale_factor`: expected a number, got {f}"))?;
        }
        for (key, flag) in [
            ("do_resize", &mut cfg.do_resize),
            ("do_center_crop", &mut cfg.do_center_crop),
            ("do_rescale", &mut cfg.do_rescale),
            ("do_normalize", &mut cfg.do_normalize),
        ] {
            if let Some(b) = obj.get(key) {
                *flag = b
                    .as_bool()
                    .with_context(|| format!("field `{key}`: expected true or false, got {b}"))?;
            }
        }
        Ok(cfg)
    }

    /// open_clip's `PreprocessCfg` (`mean`, `std`, `interpolation`, `resize_mode`, `size`):
    /// its eval transform for `resize_mode = "shortest"` is OpenAI's (resize the short side,
    /// center-crop), which is the only mode read. Errors name the field.
    pub fn from_open_clip(cfg: &serde_json::Map<String, Value>, image_size: usize) -> Result<Self> {
        let mut out = Self::openai(image_size);
        if let Some(m) = cfg.get("mean") {
            out.mean = triple(m, "mean")?;
        }
        if let Some(s) = cfg.get("std") {
            out.std = triple(s, "std")?;
            if out.std.contains(&0.0) {
                bail!("field `std`: must not contain 0");
            }
        }
        if let Some(i) = cfg.get("interpolation") {
            out.resample = match i.as_str() {
                Some("bicubic") => Resample::Bicubic,
                Some("bilinear") => Resample::Bilinear,
                _ => bail!(
                    "field `interpolation`: unsupported value {i} (expected \"bicubic\" or \"bilinear\")"
                ),
            };
        }
        if let Some(r) = cfg.get("resize_mode")
            && r.as_str() != Some("shortest")
        {
            bail!(
                "field `resize_mode`: unsupported value {r} (only \"shortest\": resize the short side, then center-crop)"
            );
        }
        if let Some(size) = cfg.get("size") {
            let n = match size {
                Value::Array(hw) if hw.len() == 2 && hw[0] == hw[1] => positive(&hw[0], "size")?,
                Value::Array(_) => {
                    bail!("field `size`: only square sizes are supported, got {size}")
                }
                other => positive(other, "size")?,
            };
            (out.resize_shortest, out.crop_height, out.crop_width) = (n, n, n);
        }
        if let Some(mode) = cfg.get("mode")
            && mode.as_str() != Some("RGB")
        {
            bail!("field `mode`: unsupported value {mode} (only \"RGB\")");
        }
        Ok(out)
    }

    /// Stable string listing every setting, for cache keys.
    pub fn fingerprint(&self) -> String {
        format!(
            "clip-preprocess-v1;resize={}:{};resample={};crop={}:{}x{};rescale={}:{:?};\
             normalize={}:mean={:?}:std={:?}",
            self.do_resize,
            self.resize_shortest,
            self.resample.name(),
            self.do_center_crop,
            self.crop_height,
            self.crop_width,
            self.do_rescale,
            self.rescale_factor,
            self.do_normalize,
            self.mean,
            self.std,
        )
    }

    /// Refuses sizes no image could be preprocessed with, before any image is read: the
    /// model takes `image_size`² pixels, so the crop must be that square (a crop of 100000
    /// would otherwise be allocated before the mismatch is seen); and the smallest image the
    /// resize can make, `shortest_edge`² (a square source), must be within the pixel limit
    /// of [`check_resize_limit`], which would otherwise refuse every image.
    pub fn check_sizes(&self, image_size: usize) -> Result<()> {
        if (self.crop_height, self.crop_width) != (image_size, image_size) {
            bail!(
                "the crop size {}x{} (h x w) is not the model's image_size {image_size}x{image_size}: \
                 the model takes {image_size}x{image_size} pixels",
                self.crop_height,
                self.crop_width
            );
        }
        let edge = self.resize_shortest as u64;
        if self.do_resize && edge.saturating_mul(edge) > self.max_image_pixels.saturating_mul(2) {
            bail!(
                "the resize to {edge} pixels on the short side would make every image at least \
                 {edge}x{edge} pixels, over twice the limit of {} (--max-image-pixels)",
                self.max_image_pixels
            );
        }
        Ok(())
    }

    /// Number of `f32` values [`preprocess_bytes`] returns: `3 * crop_height * crop_width`.
    pub fn output_len(&self) -> usize {
        3 * self.crop_height * self.crop_width
    }
}

fn positive(v: &Value, field: &str) -> Result<usize> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n as usize),
        _ => bail!("field `{field}`: expected a positive integer, got {v}"),
    }
}

fn triple(v: &Value, field: &str) -> Result<[f32; 3]> {
    if let Some(x) = v.as_f64() {
        return Ok([x as f32; 3]);
    }
    let nums: Option<Vec<f32>> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
        .unwrap_or(None);
    match nums.as_deref() {
        Some(&[a, b, c]) => Ok([a, b, c]),
        _ => bail!("field `{field}`: expected 3 numbers, got {v}"),
    }
}

/// Decode + transform one file → CHW `f32`, length `3 * crop_height * crop_width`.
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let bytes = crate::walk::read_regular(path)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    preprocess_bytes(&bytes, &path.display().to_string(), cfg)
}

/// Same as [`preprocess_file`] from bytes already in memory; `name` is used in error messages.
pub fn preprocess_bytes(bytes: &[u8], name: &str, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let image = decode_checked(bytes, name, cfg)?;
    transform(&image, cfg).with_context(|| format!("cannot preprocess image {name}"))
}

/// Decodes `bytes` after checking, from the header, both the source size and what the resize
/// makes of it against the pixel limit ([`check_resize_limit`]); the decoded size is checked
/// again. What a run's image check (`--skip-bad`) and the encoder both call, so an image one
/// refuses the other never tries.
pub fn decode_checked(bytes: &[u8], name: &str, cfg: &PreprocessConfig) -> Result<Image> {
    if let Some((w, h)) = header_dimensions(bytes) {
        check_resize_limit(w, h, name, cfg)?;
    }
    let image = decode_bytes_limited(bytes, name, cfg.max_image_pixels)?;
    check_resize_limit(image.width as u64, image.height as u64, name, cfg)?;
    Ok(image)
}

/// The decompression-bomb rule applied to the resize's output: a thin source (1 x 100000
/// pixels, a few hundred bytes as PNG) is small, but resized to 224 on its short side it
/// would be 224 x 22400000. Refused when that is over twice `max_image_pixels`, before any
/// pixel is allocated. The resample's intermediate image lies between the source and the
/// output (both axes scale by the same factor), so this bounds it too.
pub fn check_resize_limit(
    width: u64,
    height: u64,
    name: &str,
    cfg: &PreprocessConfig,
) -> Result<()> {
    if !cfg.do_resize || width == 0 || height == 0 {
        return Ok(());
    }
    let (rw, rh) = resized_size_u64(width, height, cfg.resize_shortest as u64);
    let pixels = rw.saturating_mul(rh);
    if pixels > cfg.max_image_pixels.saturating_mul(2) {
        bail!(
            "image {name}{}is {width}x{height}; resized to {} on its short side it would be \
             {rw}x{rh} = {pixels} pixels, over twice the limit of {} (raise --max-image-pixels \
             if it is real)",
            if name.is_empty() { "" } else { " " },
            cfg.resize_shortest,
            cfg.max_image_pixels
        );
    }
    Ok(())
}

/// Steps 2-4 (resize, crop, RGB + normalise) on a decoded image.
pub fn transform(image: &Image, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    check_resize_limit(image.width as u64, image.height as u64, "", cfg)?;
    let resized;
    let image = if cfg.do_resize {
        resized = resize_shortest_edge(image, cfg.resize_shortest, cfg.resample);
        &resized
    } else {
        image
    };
    let (out_h, out_w) = (cfg.crop_height, cfg.crop_width);
    let (top, left) = if cfg.do_center_crop {
        center_crop_offsets(image.width, image.height, out_w, out_h)
    } else if (image.width, image.height) == (out_w, out_h) {
        (0, 0)
    } else {
        bail!(
            "image is {}x{} (w x h) and do_center_crop is off, but the output must be {out_w}x{out_h}",
            image.width,
            image.height
        );
    };
    Ok(to_tensor(
        image,
        top,
        left,
        out_h,
        out_w,
        &channel_luts(cfg),
    ))
}

/// torchvision's `_compute_resized_output_size` for `Resize(n)`: `(width, height)` with the
/// short side `n` and the long side `int(n * long / short)`.
pub fn resized_size(width: usize, height: usize, n: usize) -> (usize, usize) {
    let (w, h) = resized_size_u64(width as u64, height as u64, n as u64);
    (w as usize, h as usize)
}

/// [`resized_size`] on any sizes a header can claim: the product is taken in `u128`, so
/// it cannot overflow (the limit check runs on it before anything is allocated).
fn resized_size_u64(width: u64, height: u64, n: u64) -> (u64, u64) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python: int(n * long / short): exact integer product, correctly rounded true division,
    // truncation. f64 reproduces it for all realistic sizes (products below 2^53).
    let new_long = ((n as u128 * long as u128) as f64 / short.max(1) as f64) as u64;
    if width <= height {
        (n, new_long)
    } else {
        (new_long, n)
    }
}

/// torchvision `Resize(n)` on a PIL image: [`resized_size`], unchanged if that is the current
/// size, else Pillow's `Image.resize((w, h), resample)` with its mode-specific behaviour.
pub fn resize_shortest_edge(image: &Image, n: usize, filter: Resample) -> Image {
    let (w, h) = resized_size(image.width, image.height, n);
    resize(image, w, h, filter)
}

/// Pillow's `Image.resize((width, height), filter)` (no box, no `reducing_gap`).
pub fn resize(image: &Image, width: usize, height: usize, filter: Resample) -> Image {
    if (width, height) == (image.width, image.height) {
        return image.clone();
    }
    let (iw, ih) = (image.width, image.height);
    let pixels = match (&image.mode, &image.pixels) {
        (_, Pixels::U16(src)) => {
            Pixels::U16(resample::resample_u16(src, iw, ih, width, height, filter))
        }
        (mode, Pixels::U8(src)) => {
            let ch = mode.channels();
            Pixels::U8(match mode {
                // Image.resize: "If the image has mode "1" or "P", it is always set to NEAREST".
                Mode::Bilevel | Mode::P { .. } => {
                    resample::resample_u8(src, iw, ih, ch, width, height, Resample::Nearest)
                }
                // RGBA → RGBa, resize, RGBa → RGBA (same for LA / La).
                Mode::La | Mode::Rgba if filter != Resample::Nearest => {
                    let pre = premultiply(src, ch);
                    let mut out = resample::resample_u8(&pre, iw, ih, ch, width, height, filter);
                    unpremultiply(&mut out, ch);
                    out
                }
                _ => resample::resample_u8(src, iw, ih, ch, width, height, filter),
            })
        }
    };
    Image {
        mode: image.mode.clone(),
        width,
        height,
        pixels,
    }
}

/// Pillow's RGBA → RGBa: `c * a / 255` rounded with its `MULDIV255` trick (alpha last).
fn premultiply(src: &[u8], channels: usize) -> Vec<u8> {
    let mut out = src.to_vec();
    for px in out.chunks_exact_mut(channels) {
        let (color, alpha) = px.split_at_mut(channels - 1);
        let a = alpha[0] as u32;
        for c in color {
            let t = *c as u32 * a + 128;
            *c = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// Pillow's RGBa → RGBA: `min(255, 255 * c / a)` (integer division), unchanged where `a` is 0
/// or 255.
fn unpremultiply(px: &mut [u8], channels: usize) {
    for px in px.chunks_exact_mut(channels) {
        let (color, alpha) = px.split_at_mut(channels - 1);
        let a = alpha[0] as u32;
        if a == 0 || a == 255 {
            continue;
        }
        for c in color {
            *c = (255 * *c as u32 / a).min(255) as u8;
        }
    }
}

/// torchvision `center_crop` offsets `(top, left)` of the crop window in source coordinates;
/// negative when the image is padded (zero fill) because it is smaller than the crop.
fn center_crop_offsets(
    width: usize,
    height: usize,
    crop_w: usize,
    crop_h: usize,
) -> (isize, isize) {
    fn axis(size: usize, crop: usize) -> isize {
        if crop > size {
            // pad (crop - size) // 2 before; the padded size equals the crop: offset 0.
            -(((crop - size) / 2) as isize)
        } else {
            // int(round((size - crop) / 2.0)), Python's round: half to even.
            let d = size - crop;
            let half = d / 2;
            (if d % 2 == 1 && half % 2 == 1 {
                half + 1
            } else {
                half
            }) as isize
        }
    }
    (axis(height, crop_h), axis(width, crop_w))
}

/// Per channel, the output value for each 8-bit RGB value: `(x / 255 - mean) / std` in `f32`,
/// in torchvision's order of operations.
fn channel_luts(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut luts = [[0f32; 256]; 3];
    let divide_by_255 = (cfg.rescale_factor - 1.0 / 255.0).abs() < 1e-15;
    for (c, lut) in luts.iter_mut().enumerate() {
        for (v, out) in lut.iter_mut().enumerate() {
            let mut x = v as f32;
            if cfg.do_rescale {
                x = if divide_by_255 {
                    x / 255.0
                } else {
                    (v as f64 * cfg.rescale_factor) as f32
                };
            }
            if cfg.do_normalize {
                x = (x - cfg.mean[c]) / cfg.std[c];
            }
            *out = x;
        }
    }
    luts
}

/// Crop window `(top, left, out_h, out_w)` (zero outside the image), convert to RGB as
/// Pillow's `convert("RGB")` does, map through the per-channel tables, write CHW.
fn to_tensor(
    image: &Image,
    top: isize,
    left: isize,
    out_h: usize,
    out_w: usize,
    luts: &[[f32; 256]; 3],
) -> Vec<f32> {
    let plane = out_h * out_w;
    let mut out = vec![0f32; 3 * plane];
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    let ch = image.mode.channels();
    let zero_u8 = [0u8; 4];
    let black = [0u8; 3];
    // Pillow's RGB value of one source pixel (given as its samples).
    let rgb_u8 = |p: &[u8]| -> [u8; 3] {
        match &image.mode {
            Mode::Bilevel | Mode::L | Mode::La => [p[0]; 3],
            Mode::P { palette } => *palette.get(p[0] as usize).unwrap_or(&black),
            Mode::Rgb | Mode::Rgba => [p[0], p[1], p[2]],
            // Pillow's cmyk2rgb: (255 - k) - MULDIV255(c, 255 - k).
            Mode::Cmyk => {
                let nk = 255 - p[3] as u32;
                let f = |c: u8| {
                    let t = c as u32 * nk + 128;
                    (nk - (((t >> 8) + t) >> 8)) as u8
                };
                [f(p[0]), f(p[1]), f(p[2])]
            }
            Mode::I16 => unreachable!(),
        }
    };
    for oy in 0..out_h {
        let sy = oy as isize + top;
        let row_in = (0..image.height as isize).contains(&sy);
        for ox in 0..out_w {
            let sx = ox as isize + left;
            let inside = row_in && (0..image.width as isize).contains(&sx);
            let idx = if inside {
                Some(sy as usize * image.width + sx as usize)
            } else {
                None
            };
            let rgb = match &image.pixels {
                Pixels::U8(px) => {
                    let p = match idx {
                        Some(i) => &px[i * ch..(i + 1) * ch],
                        None => &zero_u8[..ch],
                    };
                    rgb_u8(p)
                }
                // I;16 → RGB clips at 255.
                Pixels::U16(px) => [idx.map_or(0, |i| px[i].min(255) as u8); 3],
            };
            let o = oy * out_w + ox;
            r_plane[o] = luts[0][rgb[0] as usize];
            g_plane[o] = luts[1][rgb[1] as usize];
            b_plane[o] = luts[2][rgb[2] as usize];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_matches_torchvision() {
        assert_eq!(resized_size(227, 227, 224), (224, 224));
        assert_eq!(resized_size(640, 90, 224), (1592, 224));
        assert_eq!(resized_size(120, 500, 224), (224, 933));
        assert_eq!(resized_size(301, 210, 224), (321, 224));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // (h - n) = 3 → round(1.5) = 2; (h - n) = 5 → round(2.5) = 2; 1 → round(0.5) = 0.
        assert_eq!(center_crop_offsets(227, 224, 224, 224), (0, 2));
        assert_eq!(center_crop_offsets(229, 224, 224, 224), (0, 2));
        assert_eq!(center_crop_offsets(225, 224, 224, 224), (0, 0));
        // Padding: 5 missing columns → 2 before, 3 after.
        assert_eq!(center_crop_offsets(219, 224, 224, 224), (0, -2));
    }

    #[test]
    fn premultiply_round_trip_matches_pillow_formulae() {
        let px = [200u8, 100, 50, 128];
        let pre = premultiply(&px, 4);
        assert_eq!(pre, [100, 50, 25, 128]);
        let mut back = pre.clone();
        unpremultiply(&mut back, 4);
        assert_eq!(back, [199, 99, 49, 128]);
    }
}
