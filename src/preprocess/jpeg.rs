//! A baseline/extended-sequential/progressive Huffman JPEG decoder whose output matches
//! libjpeg-turbo (the decoder inside Pillow) bit for bit, with Pillow's default settings:
//!
//! * "accurate integer" inverse DCT (`JDCT_ISLOW`: the Loeffler-Ligtenberg-Moschytz
//!   factorisation with 13-bit constants, 2 extra bits between passes, and libjpeg's
//!   wrap-around range-limit table);
//! * "fancy" (triangle-filter) chroma upsampling for 2:1 horizontal and/or vertical
//!   subsampling, with libjpeg's alternating rounding biases and edge replication; plain
//!   replication for other integral factors and for components at most 2 samples wide;
//! * YCbCr→RGB with libjpeg's 16-bit fixed-point tables; colour space guessed from JFIF /
//!   Adobe markers and component ids as libjpeg does; CMYK/YCCK as Pillow's `CMYK;I`.
//!
//! Written from the JPEG specification (ITU T.81) and a reading of the libjpeg-turbo
//! sources. Anything else (arithmetic coding, lossless, hierarchical, 12-bit) is reported
//! as [`JpegError::Unsupported`] so the caller can fall back to another decoder. Corrupt or
//! truncated data is an error (libjpeg would often only warn and paint the rest grey).
//!
//! Not reproduced: libjpeg's inter-block smoothing of progressive images whose scans leave
//! low-frequency coefficients incompletely coded (never the case for complete files made by
//! common encoders).

use std::fmt;

/// Why a JPEG could not be decoded.
#[derive(Debug)]
pub enum JpegError {
    /// A valid feature this decoder does not implement.
    Unsupported(String),
    /// Invalid or truncated data.
    Corrupt(String),
    /// Larger than this decoder allocates for; not handed to another decoder either.
    TooLarge(String),
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JpegError::Unsupported(m) => write!(f, "unsupported JPEG: {m}"),
            JpegError::Corrupt(m) => write!(f, "corrupt JPEG data: {m}"),
            JpegError::TooLarge(m) => write!(f, "JPEG too large: {m}"),
        }
    }
}

impl std::error::Error for JpegError {}

type Result<T> = std::result::Result<T, JpegError>;

fn corrupt<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Corrupt(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Colour layout of the decoded pixels (Pillow's mode for the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegColor {
    /// One component: `L`.
    Gray,
    /// Three components (YCbCr converted, or stored RGB): `RGB`.
    Rgb,
    /// Four components, as Pillow stores them (`CMYK;I`: inverted Adobe CMYK): `CMYK`.
    Cmyk,
}

/// Decoded JPEG: `width * height * channels` interleaved bytes.
pub struct JpegImage {
    pub width: usize,
    pub height: usize,
    pub color: JpegColor,
    pub data: Vec<u8>,
}

/// Zig-zag index → natural (row-major) index; 16 extra entries absorb corrupt run lengths
/// like libjpeg's `jpeg_natural_order`.
const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

// ------------------------------------------------------------------------------------------
// Huffman tables

#[derive(Clone)]
struct Huffman {
    /// For every 9-bit prefix: `(code length, symbol)`, length 0 if the code is longer.
    fast: Vec<(u8, u8)>,
    /// Canonical decoding, per code length 1..=16: largest code (or -1) and value offset.
    maxcode: [i32; 18],
    valoffset: [i32; 17],
    values: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8], is_dc: bool) -> Result<Self> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != values.len() {
            return corrupt("bad Huffman table");
        }
        if is_dc && values.iter().any(|&v| v > 15) {
            return corrupt("bad Huffman table (DC symbol > 15)");
        }
        let mut fast = vec![(0u8, 0u8); 1 << FAST_BITS];
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            if n > 0 {
                valoffset[len as usize] = k as i32 - code as i32;
                for _ in 0..n {
                    if len <= FAST_BITS {
                        let shift = FAST_BITS - len;
                        let base = (code << shift) as usize;
                        for e in &mut fast[base..base + (1 << shift)] {
                            *e = (len as u8, values[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len as usize] = code as i32 - 1;
            }
            // Codes of this length must fit in `len` bits (libjpeg: "bad Huffman table").
            if n > 0 && code >= (1u32 << len) {
                return corrupt("bad Huffman table (code space overflow)");
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX; // sentinel
        Ok(Huffman {
            fast,
            maxcode,
            valoffset,
            values: values.to_vec(),
        })
    }
}

/// The standard tables of ITU T.81 Annex K.3, which libjpeg installs for sequential JPEGs
/// that lack a DHT segment (Motion-JPEG frames).
fn standard_table(is_dc: bool, index: usize) -> (&'static [u8; 16], &'static [u8]) {
    const DC_LUM_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROM_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUM_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_LUM_VALUES: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHROM_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHROM_VALUES: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    match (is_dc, index) {
        (true, 0) => (&DC_LUM_BITS, &DC_VALUES),
        (true, _) => (&DC_CHROM_BITS, &DC_VALUES),
        (false, 0) => (&AC_LUM_BITS, &AC_LUM_VALUES),
        (false, _) => (&AC_CHROM_BITS, &AC_CHROM_VALUES),
    }
}

// ------------------------------------------------------------------------------------------
// Entropy-coded data reader

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    /// A marker (or the end of the data) stopped reading; zero bits are supplied from then on.
    stopped: bool,
    /// Zero bits appended after stopping (still in or already taken from the accumulator).
    fake_bits: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            stopped: false,
            fake_bits: 0,
        }
    }

    /// Top up the accumulator to at least 57 bits.
    #[inline]
    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.stopped {
                match self.data.get(self.pos) {
                    None => self.stopped = true,
                    Some(&0xFF) => {
                        // FF 00 is a data FF (libjpeg also accepts FF FF ... 00); FF xx a marker.
                        let mut p = self.pos + 1;
                        while self.data.get(p) == Some(&0xFF) {
                            p += 1;
                        }
                        match self.data.get(p) {
                            Some(0) => {
                                byte = 0xFF;
                                self.pos = p + 1;
                            }
                            _ => self.stopped = true, // marker at self.pos (or data ends)
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
                if self.stopped {
                    self.fake_bits += 8;
                }
            } else {
                self.fake_bits += 8;
            }
            self.acc |= (byte as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.nbits -= n;
        v
    }

    #[inline]
    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// `HUFF_EXTEND(bits(s), s)`.
    #[inline]
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v + (-1i32 << s) + 1
        } else {
            v
        }
    }

    #[inline]
    fn decode(&mut self, h: &Huffman) -> Result<u8> {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.acc >> (64 - FAST_BITS)) as usize;
        let (len, sym) = h.fast[peek];
        if len > 0 {
            self.acc <<= len;
            self.nbits -= len as u32;
            return Ok(sym);
        }
        let code16 = (self.acc >> 48) as i32;
        for len in FAST_BITS as usize + 1..=16 {
            let code = code16 >> (16 - len);
            if code <= h.maxcode[len] {
                self.acc <<= len;
                self.nbits -= len as u32;
                let idx = (code + h.valoffset[len]) as usize;
                return h
                    .values
                    .get(idx)
                    .copied()
                    .ok_or_else(|| JpegError::Corrupt("bad Huffman code".into()));
            }
        }
        corrupt("bad Huffman code")
    }

    /// Error if bits past the end of the segment were consumed (libjpeg: "premature end of
    /// data segment", after which it paints grey).
    fn check_overrun(&self) -> Result<()> {
        if self.fake_bits > self.nbits {
            if self.pos >= self.data.len() {
                return corrupt("image data is truncated");
            }
            return corrupt("premature end of entropy-coded segment");
        }
        Ok(())
    }

    /// Discard buffered bits (byte alignment before a marker) and return the position of the
    /// next marker, skipping stray bytes.
    fn finish(&mut self) -> usize {
        self.acc = 0;
        self.nbits = 0;
        self.fake_bits = 0;
        self.stopped = false;
        let mut p = self.pos;
        // Stop at FF xx with xx neither a stuffed 00 nor another fill FF.
        while p + 1 < self.data.len()
            && (self.data[p] != 0xFF || matches!(self.data[p + 1], 0 | 0xFF))
        {
            p += 1;
        }
        p
    }
}

// ------------------------------------------------------------------------------------------
// Frame and scans

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Sample dimensions of the component (`ceil(W * h / hmax)` etc).
    width: usize,
    height: usize,
    /// Blocks per row / column, padded to whole MCUs.
    bw: usize,
    bh: usize,
    coefs: Vec<i16>,
    /// Quantisation table latched at the component's first scan (natural order, as libjpeg's
    /// `ISLOW_MULT_TYPE`, a 16-bit signed integer).
    quant: Option<[i16; 64]>,
    dc_pred: i32,
    scanned: bool,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
    comps: Vec<Component>,
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    qt: [Option<[u16; 64]>; 4],
    dc_tables: [Option<Huffman>; 4],
    ac_tables: [Option<Huffman>; 4],
    restart_interval: usize,
    frame: Option<Frame>,
    jfif: bool,
    adobe_transform: Option<u8>,
}

fn be16(d: &[u8], p: usize) -> Result<usize> {
    match d.get(p..p + 2) {
        Some(b) => Ok(((b[0] as usize) << 8) | b[1] as usize),
        None => corrupt("image data is truncated"),
    }
}

/// Decode a JPEG file.
pub fn decode(data: &[u8]) -> Result<JpegImage> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return corrupt("missing SOI marker");
    }
    let mut d = Decoder {
        data,
        pos: 2,
        qt: [None; 4],
        dc_tables: [None, None, None, None],
        ac_tables: [None, None, None, None],
        restart_interval: 0,
        frame: None,
        jfif: false,
        adobe_transform: None,
    };
    let mut saw_eoi = false;
    loop {
        // Find the next marker: skip stray bytes (libjpeg warns), then FF fill bytes.
        while d.pos < data.len() && data[d.pos] != 0xFF {
            d.pos += 1;
        }
        while d.pos < data.len() && data[d.pos] == 0xFF {
            d.pos += 1;
        }
        let Some(&marker) = data.get(d.pos) else {
            break; // end of data without EOI
        };
        d.pos += 1;
        match marker {
            0xD8 => return corrupt("unexpected SOI marker"),
            0xD9 => {
                saw_eoi = true;
                break;
            }
            0x01 | 0xD0..=0xD7 => {} // TEM, stray RSTn: no payload
            0xC0..=0xC2 => d.read_sof(marker == 0xC2)?,
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return unsupported(format!(
                    "SOF{} (lossless, hierarchical or arithmetic coding)",
                    marker - 0xC0
                ));
            }
            0xC4 => d.read_dht()?,
            0xDB => d.read_dqt()?,
            0xDD => {
                let len = be16(data, d.pos)?;
                if len != 4 {
                    return corrupt("bad DRI length");
                }
                d.restart_interval = be16(data, d.pos + 2)?;
                d.pos += len;
            }
            0xDA => d.read_scan()?,
            0xDC => return unsupported("DNL marker"),
            _ => {
                let len = be16(data, d.pos)?;
                if len < 2 || d.pos + len > data.len() {
                    return corrupt("image data is truncated");
                }
                let payload = &data[d.pos + 2..d.pos + len];
                if marker == 0xE0 && payload.len() >= 14 && payload.starts_with(b"JFIF\0") {
                    d.jfif = true;
                }
                if marker == 0xEE && payload.len() >= 12 && payload.starts_with(b"Adobe") {
                    d.adobe_transform = Some(payload[11]);
                }
                d.pos += len;
            }
        }
    }
    let Some(frame) = d.frame.take() else {
        return corrupt("no image frame");
    };
    if frame.comps.iter().any(|c| !c.scanned) {
        return corrupt("image data is truncated (component without scan)");
    }
    // Pillow reports a file that ends before its EOI marker as truncated, even when every
    // row could be decoded.
    if !saw_eoi {
        return corrupt("image data is truncated (no EOI marker)");
    }
    d.output(frame)
}

impl<'a> Decoder<'a> {
    fn segment(&self) -> Result<&'a [u8]> {
        let len = be16(self.data, self.pos)?;
        if len < 2 || self.pos + len > self.data.len() {
            return corrupt("image data is truncated");
        }
        Ok(&self.data[self.pos + 2..self.pos + len])
    }

    fn read_sof(&mut self, progressive: bool) -> Result<()> {
        let s = self.segment()?;
        self.pos += s.len() + 2;
        if self.frame.is_some() {
            return corrupt("more than one SOF marker");
        }
        if s.len() < 6 {
            return corrupt("bad SOF length");
        }
        if s[0] != 8 {
            return unsupported(format!("{}-bit samples", s[0]));
        }
        let height = ((s[1] as usize) << 8) | s[2] as usize;
        let width = ((s[3] as usize) << 8) | s[4] as usize;
        let n = s[5] as usize;
        if height == 0 {
            return unsupported("height defined by DNL");
        }
        if width == 0 || n == 0 || s.len() != 6 + 3 * n {
            return corrupt("bad SOF segment");
        }
        if !matches!(n, 1 | 3 | 4) {
            return unsupported(format!("{n}-component image"));
        }
        let mut comps = Vec::with_capacity(n);
        for c in s[6..].chunks_exact(3) {
            let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return corrupt("bad component sampling factors or table");
            }
            comps.push(Component {
                id: c[0],
                h,
                v,
                tq: c[2] as usize,
                width: 0,
                height: 0,
                bw: 0,
                bh: 0,
                coefs: Vec::new(),
                quant: None,
                dc_pred: 0,
                scanned: false,
            });
        }
        let hmax = comps.iter().map(|c| c.h).max().unwrap();
        let vmax = comps.iter().map(|c| c.v).max().unwrap();
        let mcux = width.div_ceil(8 * hmax);
        let mcuy = height.div_ceil(8 * vmax);
        // A hard ceiling of this decoder, above any sensible `--max-image-pixels`; callers
        // refuse bombs from the header before this (see `decode::check_pixel_limit`).
        if width.saturating_mul(height) > 1 << 30 {
            return Err(JpegError::TooLarge(format!(
                "{width}x{height} is over 2^30 pixels"
            )));
        }
        for c in &mut comps {
            c.width = (width * c.h).div_ceil(hmax);
            c.height = (height * c.v).div_ceil(vmax);
            c.bw = mcux * c.h;
            c.bh = mcuy * c.v;
            c.coefs = vec![0i16; c.bw * c.bh * 64];
        }
        self.frame = Some(Frame {
            width,
            height,
            progressive,
            hmax,
            vmax,
            mcux,
            mcuy,
            comps,
        });
        Ok(())
    }

    fn read_dht(&mut self) -> Result<()> {
        let s = self.segment()?;
        self.pos += s.len() + 2;
        let mut p = 0;
        while p < s.len() {
            if p + 17 > s.len() {
                return corrupt("bad DHT segment");
            }
            let (class, index) = (s[p] >> 4, (s[p] & 15) as usize);
            if class > 1 || index > 3 {
                return corrupt("bad DHT table class or index");
            }
            let counts: [u8; 16] = s[p + 1..p + 17].try_into().unwrap();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if total > 256 || p + 17 + total > s.len() {
                return corrupt("bad DHT segment");
            }
            let table = Huffman::new(&counts, &s[p + 17..p + 17 + total], class == 0)?;
            if class == 0 {
                self.dc_tables[index] = Some(table);
            } else {
                self.ac_tables[index] = Some(table);
            }
            p += 17 + total;
        }
        Ok(())
    }

    fn read_dqt(&mut self) -> Result<()> {
        let s = self.segment()?;
        self.pos += s.len() + 2;
        let mut p = 0;
        while p < s.len() {
            let (precision, index) = (s[p] >> 4, (s[p] & 15) as usize);
            if precision > 1 || index > 3 {
                return corrupt("bad DQT segment");
            }
            let size = 64 << precision;
            if p + 1 + size > s.len() {
                return corrupt("bad DQT length");
            }
            let mut table = [0u16; 64];
            for (k, &nat) in NATURAL_ORDER[..64].iter().enumerate() {
                table[nat] = if precision == 0 {
                    s[p + 1 + k] as u16
                } else {
                    u16::from_be_bytes([s[p + 1 + 2 * k], s[p + 2 + 2 * k]])
                };
            }
            self.qt[index] = Some(table);
            p += 1 + size;
        }
        Ok(())
    }

    fn read_scan(&mut self) -> Result<()> {
        let s = self.segment()?;
        let scan_start = self.pos + s.len() + 2;
        let Some(frame) = self.frame.as_mut() else {
            return corrupt("SOS before SOF");
        };
        let scan = ScanHeader::parse(s, frame)?;
        let tables = ScanTables {
            dc: &self.dc_tables,
            ac: &self.ac_tables,
            qt: &self.qt,
        };
        let (dc, ac) = tables.for_scan(&scan, frame)?;
        let mut reader = BitReader::new(self.data, scan_start);
        let mut scan_state = ScanDecoder {
            data: self.data,
            restart: self.restart_interval,
            scan: &scan,
            dc: &dc,
            ac: &ac,
            eobrun: 0,
        };
        scan_state.decode_mcus(&mut reader, frame)?;
        reader.check_overrun()?;
        self.pos = reader.finish();
        Ok(())
    }

    fn output(&self, frame: Frame) -> Result<JpegImage> {
        let (w, h) = (frame.width, frame.height);
        // Inverse DCT into component planes (padded to whole blocks).
        let planes: Vec<Vec<u8>> = frame
            .comps
            .iter()
            .map(|c| {
                let stride = c.bw * 8;
                let mut plane = vec![0u8; stride * c.bh * 8];
                let q = c.quant.as_ref().unwrap();
                for by in 0..c.bh {
                    for bx in 0..c.bw {
                        let start = (by * c.bw + bx) * 64;
                        let coefs: &[i16; 64] = c.coefs[start..start + 64].try_into().unwrap();
                        idct_islow(coefs, q, &mut plane[by * 8 * stride + bx * 8..], stride);
                    }
                }
                plane
            })
            .collect();
        // Upsample every component to full resolution (`w` x `h`).
        let full: Vec<Vec<u8>> = frame
            .comps
            .iter()
            .zip(&planes)
            .map(|(c, p)| upsample(c, p, c.bw * 8, frame.hmax, frame.vmax, w, h))
            .collect::<Result<_>>()?;
        let n = frame.comps.len();
        let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
        let (color, data) = match n {
            1 => (JpegColor::Gray, full.into_iter().next().unwrap()),
            3 => {
                let ycc = if self.jfif {
                    true
                } else if let Some(t) = self.adobe_transform {
                    t != 0
                } else {
                    ids != [82, 71, 66] // 'R', 'G', 'B'
                };
                let mut out = vec![0u8; w * h * 3];
                if ycc {
                    let t = YccTables::new();
                    for (i, px) in out.chunks_exact_mut(3).enumerate() {
                        let [r, g, b] = t.rgb(full[0][i], full[1][i], full[2][i]);
                        px.copy_from_slice(&[r, g, b]);
                    }
                } else {
                    for (i, px) in out.chunks_exact_mut(3).enumerate() {
                        px.copy_from_slice(&[full[0][i], full[1][i], full[2][i]]);
                    }
                }
                (JpegColor::Rgb, out)
            }
            _ => {
                let ycck = self.adobe_transform.is_some_and(|t| t != 0);
                let t = YccTables::new();
                let mut out = vec![0u8; w * h * 4];
                for (i, px) in out.chunks_exact_mut(4).enumerate() {
                    let (c, m, y) = if ycck {
                        let [r, g, b] = t.rgb(full[0][i], full[1][i], full[2][i]);
                        (255 - r, 255 - g, 255 - b)
                    } else {
                        (full[0][i], full[1][i], full[2][i])
                    };
                    // Pillow's "CMYK;I" unpacking inverts every channel.
                    px.copy_from_slice(&[255 - c, 255 - m, 255 - y, 255 - full[3][i]]);
                }
                (JpegColor::Cmyk, out)
            }
        };
        Ok(JpegImage {
            width: w,
            height: h,
            color,
            data,
        })
    }
}

/// One SOS segment: its components (frame index, DC table, AC table) and the spectral
/// selection / successive approximation parameters.
struct ScanHeader {
    comps: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

impl ScanHeader {
    fn parse(s: &[u8], frame: &Frame) -> Result<Self> {
        let n = *s.first().unwrap_or(&0) as usize;
        if n == 0 || n > 4 || s.len() != 4 + 2 * n {
            return corrupt("bad SOS segment");
        }
        let mut comps = Vec::with_capacity(n);
        for c in s[1..1 + 2 * n].chunks_exact(2) {
            let Some(ci) = frame.comps.iter().position(|x| x.id == c[0]) else {
                return corrupt("SOS names an unknown component");
            };
            if comps.iter().any(|&(x, _, _)| x == ci) {
                return corrupt("SOS names a component twice");
            }
            comps.push((ci, (c[1] >> 4) as usize, (c[1] & 15) as usize));
        }
        let (ss, se) = (s[1 + 2 * n] as usize, s[2 + 2 * n] as usize);
        let (ah, al) = ((s[3 + 2 * n] >> 4) as u32, (s[3 + 2 * n] & 15) as u32);
        if frame.progressive {
            let bad = if ss == 0 {
                se != 0
            } else {
                ss > se || se > 63 || n != 1
            } || (ah != 0 && al != ah - 1)
                || al > 13;
            if bad {
                return corrupt("bad progressive scan parameters");
            }
        }
        // A sequential scan with other Ss/Se/Ah/Al: libjpeg only warns and decodes a full
        // sequential scan anyway.
        let blocks_in_mcu: usize = if n == 1 {
            1
        } else {
            (comps.iter())
                .map(|&(ci, _, _)| frame.comps[ci].h * frame.comps[ci].v)
                .sum()
        };
        if blocks_in_mcu > 10 {
            return corrupt("too many blocks per MCU");
        }
        Ok(ScanHeader {
            comps,
            ss,
            se,
            ah,
            al,
        })
    }
}

/// The tables defined so far, which a scan picks from.
struct ScanTables<'t> {
    dc: &'t [Option<Huffman>; 4],
    ac: &'t [Option<Huffman>; 4],
    qt: &'t [Option<[u16; 64]>; 4],
}

type ScanHuffman = Vec<Option<Huffman>>;

impl ScanTables<'_> {
    /// Each scan component's DC and AC tables (where the scan codes them); latches each
    /// component's quantisation table on its first scan and resets its DC predictor.
    fn for_scan(&self, scan: &ScanHeader, frame: &mut Frame) -> Result<(ScanHuffman, ScanHuffman)> {
        let progressive = frame.progressive;
        let mut dc = Vec::with_capacity(scan.comps.len());
        let mut ac = Vec::with_capacity(scan.comps.len());
        for &(ci, td, ta) in &scan.comps {
            if td > 3 || ta > 3 {
                return corrupt("bad Huffman table index");
            }
            // Sequential scans always code DC and AC (libjpeg ignores their Ss/Se/Ah/Al).
            let need_dc = !progressive || (scan.ss == 0 && scan.ah == 0);
            let need_ac = !progressive || scan.ss > 0;
            let get = |tables: &[Option<Huffman>; 4], idx: usize, is_dc: bool| -> Result<Huffman> {
                match &tables[idx] {
                    Some(t) => Ok(t.clone()),
                    None if !progressive => {
                        let (bits, vals) = standard_table(is_dc, idx);
                        Huffman::new(bits, vals, is_dc)
                    }
                    None => corrupt("missing Huffman table"),
                }
            };
            dc.push(need_dc.then(|| get(self.dc, td, true)).transpose()?);
            ac.push(need_ac.then(|| get(self.ac, ta, false)).transpose()?);
            let comp = &mut frame.comps[ci];
            if comp.quant.is_none() {
                let Some(q) = self.qt[comp.tq] else {
                    return corrupt("missing quantisation table");
                };
                let mut latched = [0i16; 64];
                for (l, &v) in latched.iter_mut().zip(&q) {
                    *l = v as i16;
                }
                comp.quant = Some(latched);
            }
            comp.scanned = true;
            comp.dc_pred = 0;
        }
        Ok((dc, ac))
    }
}

/// The entropy-coded data of one scan, MCU by MCU.
struct ScanDecoder<'s> {
    data: &'s [u8],
    restart: usize,
    scan: &'s ScanHeader,
    dc: &'s [Option<Huffman>],
    ac: &'s [Option<Huffman>],
    /// Progressive AC: bands left to skip as end-of-band.
    eobrun: u32,
}

impl<'s> ScanDecoder<'s> {
    fn decode_mcus(&mut self, reader: &mut BitReader<'s>, frame: &mut Frame) -> Result<()> {
        let comps = &self.scan.comps;
        let single = comps.len() == 1;
        let total_mcus = if single {
            let c = &frame.comps[comps[0].0];
            c.width.div_ceil(8) * c.height.div_ceil(8)
        } else {
            frame.mcux * frame.mcuy
        };
        let mut next_rst = 0u8;
        for mcu in 0..total_mcus {
            if self.restart > 0 && mcu > 0 && mcu % self.restart == 0 {
                self.restart_marker(reader, frame, next_rst)?;
                next_rst = (next_rst + 1) & 7;
            }
            for (k, &(ci, _, _)) in comps.iter().enumerate() {
                let comp = &mut frame.comps[ci];
                let (blocks_h, blocks_v) = if single { (1, 1) } else { (comp.h, comp.v) };
                for by in 0..blocks_v {
                    for bx in 0..blocks_h {
                        let (row, col) = if single {
                            let per_row = comp.width.div_ceil(8);
                            (mcu / per_row, mcu % per_row)
                        } else {
                            (
                                (mcu / frame.mcux) * comp.v + by,
                                (mcu % frame.mcux) * comp.h + bx,
                            )
                        };
                        let start = (row * comp.bw + col) * 64;
                        let block = &mut comp.coefs[start..start + 64];
                        self.decode_block(reader, k, block, &mut comp.dc_pred, frame.progressive)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The RSTn marker expected after every `restart` MCUs: checks it, restarts the bit
    /// reader after it and resets the DC predictors and the end-of-band run.
    fn restart_marker(
        &mut self,
        reader: &mut BitReader<'s>,
        frame: &mut Frame,
        next_rst: u8,
    ) -> Result<()> {
        reader.check_overrun()?;
        let p = reader.finish();
        if self.data.get(p) != Some(&0xFF) || self.data.get(p + 1) != Some(&(0xD0 + next_rst)) {
            return corrupt("missing or wrong restart marker");
        }
        *reader = BitReader::new(self.data, p + 2);
        for &(ci, _, _) in &self.scan.comps {
            frame.comps[ci].dc_pred = 0;
        }
        self.eobrun = 0;
        Ok(())
    }

    /// One block of scan component `k`: sequential, or one progressive pass (DC first or
    /// refine, AC first or refine).
    fn decode_block(
        &mut self,
        reader: &mut BitReader<'s>,
        k: usize,
        block: &mut [i16],
        dc_pred: &mut i32,
        progressive: bool,
    ) -> Result<()> {
        let ScanHeader { ss, se, ah, al, .. } = *self.scan;
        let (dc, ac) = (self.dc[k].as_ref(), self.ac[k].as_ref());
        if !progressive {
            return decode_block_sequential(reader, block, dc.unwrap(), ac.unwrap(), dc_pred);
        }
        if ss == 0 {
            if ah == 0 {
                let t = reader.decode(dc.unwrap())? as u32;
                let diff = reader.receive_extend(t);
                let Some(v) = dc_pred.checked_add(diff) else {
                    return corrupt("bad DC coefficient");
                };
                *dc_pred = v;
                block[0] = v.wrapping_shl(al) as i16;
            } else if reader.bit() {
                block[0] |= (1i32 << al) as i16;
            }
            Ok(())
        } else if ah == 0 {
            decode_ac_first(reader, block, ac.unwrap(), ss, se, al, &mut self.eobrun)
        } else {
            decode_ac_refine(reader, block, ac.unwrap(), ss, se, al, &mut self.eobrun)
        }
    }
}

fn decode_block_sequential(
    r: &mut BitReader,
    block: &mut [i16],
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
) -> Result<()> {
    let t = r.decode(dc)? as u32;
    let diff = r.receive_extend(t);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, size) = ((rs >> 4) as usize, (rs & 15) as u32);
        if size != 0 {
            k += run;
            let v = r.receive_extend(size);
            block[NATURAL_ORDER[k]] = v as i16;
        } else if run == 15 {
            k += 15;
        } else {
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_first(
    r: &mut BitReader,
    block: &mut [i16],
    ac: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<()> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        let rs = r.decode(ac)?;
        let (run, size) = ((rs >> 4) as u32, (rs & 15) as u32);
        if size != 0 {
            k += run as usize;
            let v = r.receive_extend(size);
            block[NATURAL_ORDER[k]] = v.wrapping_shl(al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            let mut e = 1u32 << run;
            if run > 0 {
                e += r.bits(run);
            }
            *eobrun = e - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_refine(
    r: &mut BitReader,
    block: &mut [i16],
    ac: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<()> {
    let p1 = (1i32 << al) as i16;
    let m1 = (-1i32 << al) as i16;
    let mut k = ss;
    // Append a correction bit to an already non-zero coefficient.
    let refine = |r: &mut BitReader, c: &mut i16| {
        if r.bit() && (*c & p1) == 0 {
            *c = if *c >= 0 {
                c.wrapping_add(p1)
            } else {
                c.wrapping_add(m1)
            };
        }
    };
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(ac)?;
            let (mut run, size) = ((rs >> 4) as i32, (rs & 15) as u32);
            let mut s = 0i16;
            if size != 0 {
                // Size of a newly non-zero coefficient is always 1 (libjpeg warns otherwise).
                s = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                let mut e = 1u32 << run;
                if run > 0 {
                    e += r.bits(run as u32);
                }
                *eobrun = e;
                break;
            }
            while k <= se {
                let c = &mut block[NATURAL_ORDER[k]];
                if *c != 0 {
                    refine(r, c);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if s != 0 {
                block[NATURAL_ORDER[k]] = s;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let c = &mut block[NATURAL_ORDER[k]];
            if *c != 0 {
                refine(r, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Inverse DCT (libjpeg's jpeg_idct_islow arithmetic)

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline(always)]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: `table[(x + 128) & 1023]` behaves as a clamp to
/// `0..=255` for `x` in `-512..=511` and wraps beyond.
#[inline(always)]
fn range_limit(x: i64) -> u8 {
    let i = (x & 1023) as i32;
    match i {
        0..=127 => (i + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (i - 896) as u8,
    }
}

/// The shared even/odd butterfly of both passes: outputs `(o0..o7)` as 64-bit sums before
/// descaling, from eight inputs in natural order.
#[inline(always)]
fn idct_1d(x: [i64; 8]) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << CONST_BITS;
    let tmp1 = (x[0] - x[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (x[7], x[5], x[3], x[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

fn idct_islow(coefs: &[i16; 64], quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    // Pass 1: columns.
    for col in 0..8 {
        let deq = |r: usize| (coefs[r * 8 + col] as i32 * quant[r * 8 + col] as i32) as i64;
        if (1..8).all(|r| coefs[r * 8 + col] == 0) {
            let dc = (deq(0) << PASS1_BITS) as i32;
            for r in 0..8 {
                ws[r * 8 + col] = dc;
            }
            continue;
        }
        let o = idct_1d(std::array::from_fn(deq));
        for r in 0..8 {
            ws[r * 8 + col] = descale(o[r], CONST_BITS - PASS1_BITS) as i32;
        }
    }
    // Pass 2: rows.
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let dst = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            let v = range_limit(descale(w[0] as i64, PASS1_BITS + 3));
            dst.fill(v);
            continue;
        }
        let o = idct_1d(std::array::from_fn(|i| w[i] as i64));
        for (d, &v) in dst.iter_mut().zip(&o) {
            *d = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Upsampling and colour conversion

/// Upsample one component plane (`stride` bytes per row) to `w` x `h` as libjpeg's
/// `jdsample.c` does with `do_fancy_upsampling`.
fn upsample(
    c: &Component,
    plane: &[u8],
    stride: usize,
    hmax: usize,
    vmax: usize,
    w: usize,
    h: usize,
) -> Result<Vec<u8>> {
    let (cw, ch) = (c.width, c.height);
    let at = |x: usize, y: usize| plane[y * stride + x] as i32;
    let mut out = vec![0u8; w * h];
    if c.h == hmax && c.v == vmax {
        for y in 0..h {
            out[y * w..(y + 1) * w].copy_from_slice(&plane[y * stride..y * stride + w]);
        }
    } else if c.h * 2 == hmax && c.v == vmax && cw > 2 {
        // h2v1 fancy.
        let mut row = vec![0u8; 2 * cw];
        for y in 0..h {
            h2v1_row(&plane[y * stride..y * stride + cw], &mut row);
            out[y * w..(y + 1) * w].copy_from_slice(&row[..w]);
        }
    } else if c.h == hmax && c.v * 2 == vmax {
        // h1v2 fancy (always fancy).
        for y in 0..h {
            let r = y / 2;
            let (far, bias) = if y % 2 == 0 {
                (r.saturating_sub(1), 1)
            } else {
                ((r + 1).min(ch - 1), 2)
            };
            for x in 0..w {
                out[y * w + x] = ((at(x, r) * 3 + at(x, far) + bias) >> 2) as u8;
            }
        }
    } else if c.h * 2 == hmax && c.v * 2 == vmax && cw > 2 {
        // h2v2 fancy: vertical 3:1 column sums, then horizontal 3:1 with biases 8 / 7.
        let mut sums = vec![0i32; cw];
        let mut row = vec![0u8; 2 * cw];
        for y in 0..h {
            let r = y / 2;
            let far = if y % 2 == 0 {
                r.saturating_sub(1)
            } else {
                (r + 1).min(ch - 1)
            };
            for (x, s) in sums.iter_mut().enumerate() {
                *s = at(x, r) * 3 + at(x, far);
            }
            row[0] = ((sums[0] * 4 + 8) >> 4) as u8;
            row[1] = ((sums[0] * 3 + sums[1] + 7) >> 4) as u8;
            for x in 1..cw - 1 {
                row[2 * x] = ((sums[x] * 3 + sums[x - 1] + 8) >> 4) as u8;
                row[2 * x + 1] = ((sums[x] * 3 + sums[x + 1] + 7) >> 4) as u8;
            }
            let l = cw - 1;
            row[2 * l] = ((sums[l] * 3 + sums[l - 1] + 8) >> 4) as u8;
            row[2 * l + 1] = ((sums[l] * 4 + 7) >> 4) as u8;
            out[y * w..(y + 1) * w].copy_from_slice(&row[..w]);
        }
    } else if hmax.is_multiple_of(c.h) && vmax.is_multiple_of(c.v) {
        // Integral factors (and 2:1 for components at most 2 samples wide): replication.
        let (fx, fy) = (hmax / c.h, vmax / c.v);
        for y in 0..h {
            for x in 0..w {
                out[y * w + x] = plane[(y / fy) * stride + x / fx];
            }
        }
    } else {
        return unsupported("fractional chroma sampling factors");
    }
    Ok(out)
}

fn h2v1_row(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    let v = |i: usize| input[i] as i32;
    out[0] = input[0];
    out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((v(i) * 3 + v(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v(i) * 3 + v(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((v(n - 1) * 3 + v(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// libjpeg's YCbCr→RGB fixed-point tables (`SCALEBITS = 16`).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64;
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    #[inline(always)]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let y = y as i32;
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        let g = ((self.cb_g[cb as usize] + self.cr_g[cr as usize]) >> 16) as i32;
        [
            clamp(y + self.cr_r[cr as usize]),
            clamp(y + g),
            clamp(y + self.cb_b[cb as usize]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_limit_is_a_clamp_near_range() {
        for x in -512..512i64 {
            assert_eq!(range_limit(x) as i64, (x + 128).clamp(0, 255), "{x}");
        }
    }

    #[test]
    fn dc_only_block_is_flat() {
        let mut coefs = [0i16; 64];
        coefs[0] = 10;
        let q = [8i16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coefs, &q, &mut out, 8);
        // 10 * 8 / 8 = 10 above the 128 centre.
        assert!(out.iter().all(|&v| v == 138));
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"not a jpeg").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
    }
}
