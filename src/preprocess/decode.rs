//! Decoding JPEG/PNG into the pixel layout Pillow's `Image.open` would give (its "mode"),
//! so that the later resize follows the same mode-specific path as Pillow.
//!
//! PNG is decoded with the `png` crate without its expanding transformations, so that palette
//! images stay palette images (Pillow resizes them with nearest neighbour) and a `tRNS` chunk
//! does not turn `L`/`RGB` into images with alpha (Pillow keeps it as metadata only). JPEG is
//! decoded by [`super::jpeg`], which reproduces libjpeg-turbo's output exactly; the rare
//! flavours it does not implement fall back to the `image` crate (zune-jpeg, not identical).

use std::io::Cursor;

use anyhow::{Context, Result, anyhow, bail};

use super::jpeg::{self, JpegColor, JpegError};

/// Pixel layout of a decoded image, named after the Pillow mode it reproduces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `"1"`: bilevel; stored as one byte per pixel, 0 or 255. Resized with nearest neighbour.
    Bilevel,
    /// `"L"`: 8-bit greyscale.
    L,
    /// `"P"`: one palette index per pixel. Resized with nearest neighbour.
    P {
        /// RGB palette entries (indices past its end read as black).
        palette: Vec<[u8; 3]>,
    },
    /// `"RGB"`.
    Rgb,
    /// `"LA"`: greyscale + alpha, 2 bytes per pixel.
    La,
    /// `"RGBA"`.
    Rgba,
    /// `"I;16"`: 16-bit greyscale (16-bit greyscale PNGs), kept in [`Pixels::U16`].
    I16,
    /// `"CMYK"` (4-component JPEGs, stored as Pillow's inverted-Adobe `CMYK;I` reading).
    Cmyk,
}

impl Mode {
    /// Samples per pixel.
    pub fn channels(&self) -> usize {
        match self {
            Mode::Bilevel | Mode::L | Mode::P { .. } | Mode::I16 => 1,
            Mode::La => 2,
            Mode::Rgb => 3,
            Mode::Rgba | Mode::Cmyk => 4,
        }
    }

    /// Pillow's name for the mode.
    pub fn pil_name(&self) -> &'static str {
        match self {
            Mode::Bilevel => "1",
            Mode::L => "L",
            Mode::P { .. } => "P",
            Mode::Rgb => "RGB",
            Mode::La => "LA",
            Mode::Rgba => "RGBA",
            Mode::I16 => "I;16",
            Mode::Cmyk => "CMYK",
        }
    }
}

/// Interleaved samples, row-major, no row padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pixels {
    /// 8-bit samples (every mode except [`Mode::I16`]).
    U8(Vec<u8>),
    /// 16-bit samples ([`Mode::I16`]).
    U16(Vec<u16>),
}

/// A decoded image in its source mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Pillow mode of the pixels.
    pub mode: Mode,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * mode.channels()` samples.
    pub pixels: Pixels,
}

/// Pillow's `Image.MAX_IMAGE_PIXELS`: above it an image is decoded with a warning, above twice
/// it refused as a possible decompression bomb. `--max-image-pixels` changes it.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Decode JPEG or PNG bytes (recognised by their signature, as Pillow does, not by the name),
/// with Pillow's default pixel limit. `name` only labels errors.
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<Image> {
    decode_bytes_limited(bytes, name, DEFAULT_MAX_IMAGE_PIXELS)
}

/// [`decode_bytes`] with a pixel limit: the size the header claims is checked before
/// anything is allocated for the pixels (see [`check_pixel_limit`]).
pub fn decode_bytes_limited(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Image> {
    let is_png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    if let Some((w, h)) = header_dimensions(bytes) {
        check_pixel_limit(w, h, name, max_pixels)?;
    }
    let decoded = if is_png {
        decode_png(bytes)
    } else if is_jpeg {
        decode_jpeg(bytes)
    } else {
        Err(anyhow!("not a JPEG or PNG file (unrecognised signature)"))
    };
    let image = decoded.with_context(|| format!("cannot decode image {name}"))?;
    if image.width == 0 || image.height == 0 {
        bail!("cannot decode image {name}: empty image");
    }
    Ok(image)
}

/// Pillow's decompression-bomb rule: a warning above `max_pixels`, an error above twice it.
pub fn check_pixel_limit(width: u64, height: u64, name: &str, max_pixels: u64) -> Result<()> {
    let pixels = width.saturating_mul(height);
    if pixels > max_pixels.saturating_mul(2) {
        bail!(
            "image {name} claims {width}x{height} = {pixels} pixels, over twice the limit of \
             {max_pixels} (a possible decompression bomb; raise --max-image-pixels if it is real)"
        );
    }
    if pixels > max_pixels {
        eprintln!(
            "warning: image {name} has {width}x{height} = {pixels} pixels, over --max-image-pixels \
             {max_pixels} (images over twice that are refused)"
        );
    }
    Ok(())
}

/// Width and height as the PNG `IHDR` or the JPEG frame header states them, read without
/// decoding anything; `None` when the header is not there (the decoder then reports why).
pub fn header_dimensions(bytes: &[u8]) -> Option<(u64, u64)> {
    let be32 = |p: usize| {
        bytes
            .get(p..p + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be16 = |p: usize| {
        bytes
            .get(p..p + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        if bytes.get(12..16) != Some(b"IHDR") {
            return None;
        }
        return Some((be32(16)? as u64, be32(20)? as u64));
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    // Walk the marker segments up to the first start-of-frame (any SOFn: the fallback
    // decoder handles the flavours ours does not).
    let mut pos = 2;
    loop {
        while *bytes.get(pos)? != 0xFF {
            pos += 1;
        }
        while *bytes.get(pos)? == 0xFF {
            pos += 1;
        }
        let marker = *bytes.get(pos)?;
        pos += 1;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD8..=0xDA => return None,
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let height = be16(pos + 3)? as u64;
                let width = be16(pos + 5)? as u64;
                return Some((width, height));
            }
            _ => pos += be16(pos)? as usize,
        }
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<Image> {
    match jpeg::decode(bytes) {
        Ok(j) => Ok(Image {
            mode: match j.color {
                JpegColor::Gray => Mode::L,
                JpegColor::Rgb => Mode::Rgb,
                JpegColor::Cmyk => Mode::Cmyk,
            },
            width: j.width,
            height: j.height,
            pixels: Pixels::U8(j.data),
        }),
        Err(JpegError::Unsupported(_)) => decode_jpeg_fallback(bytes),
        Err(e) => Err(e.into()),
    }
}

/// JPEG flavours our libjpeg-compatible decoder does not implement (12-bit, arithmetic
/// coding, lossless...) go to the `image` crate (zune-jpeg): decoded, but not bit-identical
/// to Pillow.
fn decode_jpeg_fallback(bytes: &[u8]) -> Result<Image> {
    use image::ImageDecoder;
    use image::codecs::jpeg::JpegDecoder;

    let decoder = JpegDecoder::new(Cursor::new(bytes))?;
    let (w, h) = decoder.dimensions();
    let color = decoder.color_type();
    let mut buf = vec![0u8; usize::try_from(decoder.total_bytes())?];
    decoder.read_image(&mut buf)?;
    let mode = match color {
        image::ColorType::L8 => Mode::L,
        image::ColorType::Rgb8 => Mode::Rgb,
        other => bail!("unsupported JPEG colour type {other:?}"),
    };
    Ok(Image {
        mode,
        width: w as usize,
        height: h as usize,
        pixels: Pixels::U8(buf),
    })
}

fn decode_png(bytes: &[u8]) -> Result<Image> {
    use png::{BitDepth, ColorType, Transformations};

    // The default 64 MiB allocation limit would refuse large photos; allow up to 2 GiB.
    let limits = png::Limits { bytes: 1 << 31 };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    decoder.set_transformations(Transformations::IDENTITY);
    let mut reader = decoder.read_info()?;
    let size = reader
        .output_buffer_size()
        .context("PNG dimensions too large")?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf)?;
    buf.truncate(frame.buffer_size());
    let (w, h) = (frame.width as usize, frame.height as usize);
    let line = frame.line_size;
    let info = reader.info();
    let depth = info.bit_depth;
    let ct = info.color_type;

    // Unpack 1/2/4-bit samples (rows are byte-aligned) to one byte each, scaled by `scale`.
    let unpack = |bits: usize, scale: u8| -> Vec<u8> {
        let mut out = Vec::with_capacity(w * h);
        let mask = ((1u16 << bits) - 1) as u8;
        for row in buf.chunks_exact(line) {
            for x in 0..w {
                let bit = x * bits;
                let v = (row[bit / 8] >> (8 - bits - bit % 8)) & mask;
                out.push(v * scale);
            }
        }
        out
    };
    // 16-bit big-endian samples → their most significant byte (Pillow's "RGB;16B" etc.).
    let high_bytes = || -> Vec<u8> { buf.iter().step_by(2).copied().collect() };

    let (mode, pixels) = match (ct, depth) {
        (ColorType::Grayscale, BitDepth::One) => (Mode::Bilevel, Pixels::U8(unpack(1, 255))),
        (ColorType::Grayscale, BitDepth::Two) => (Mode::L, Pixels::U8(unpack(2, 85))),
        (ColorType::Grayscale, BitDepth::Four) => (Mode::L, Pixels::U8(unpack(4, 17))),
        (ColorType::Grayscale, BitDepth::Eight) => (Mode::L, Pixels::U8(buf)),
        (ColorType::Grayscale, BitDepth::Sixteen) => {
            let v = buf
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            (Mode::I16, Pixels::U16(v))
        }
        (ColorType::Indexed, d) => {
            let palette = info
                .palette
                .as_deref()
                .context("palette PNG without PLTE chunk")?
                .chunks_exact(3)
                .map(|c| [c[0], c[1], c[2]])
                .collect();
            let indices = if d == BitDepth::Eight {
                buf
            } else {
                unpack(d as usize, 1)
            };
            (Mode::P { palette }, Pixels::U8(indices))
        }
        (ColorType::Rgb, BitDepth::Eight) => (Mode::Rgb, Pixels::U8(buf)),
        (ColorType::Rgb, BitDepth::Sixteen) => (Mode::Rgb, Pixels::U8(high_bytes())),
        // Pillow opens 16-bit LA as RGBA (rawmode "LA;16B"); resampling R=G=B=L with the same
        // alpha gives the same grey values as resampling LA, so LA is kept.
        (ColorType::GrayscaleAlpha, BitDepth::Eight) => (Mode::La, Pixels::U8(buf)),
        (ColorType::GrayscaleAlpha, BitDepth::Sixteen) => (Mode::La, Pixels::U8(high_bytes())),
        (ColorType::Rgba, BitDepth::Eight) => (Mode::Rgba, Pixels::U8(buf)),
        (ColorType::Rgba, BitDepth::Sixteen) => (Mode::Rgba, Pixels::U8(high_bytes())),
        (ct, d) => bail!("unsupported PNG colour type {ct:?} at bit depth {d:?}"),
    };
    Ok(Image {
        mode,
        width: w,
        height: h,
        pixels,
    })
}
