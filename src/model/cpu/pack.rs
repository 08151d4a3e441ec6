//! `PackedLinear`: an `nn.Linear` converted once at load into the layout its kernel reads.

use super::isa::Isa;

/// One cache line of floats, so that panels start on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// 64-byte-aligned f32 storage.
pub(super) struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        Aligned {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    pub(super) fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is 16 plain f32s with no padding; `len` ≤ 16·lines.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }
}

/// Panel width (output columns per panel) of each packed ISA's microkernel.
pub(super) fn panel_width(isa: Isa) -> usize {
    match isa {
        Isa::Reference => 0,
        Isa::Avx2 => 16,
        Isa::Avx512 => 32,
    }
}

/// `y = x · Wᵀ + b` with `W` `[out, in]`, stored for one ISA's kernels.
///
/// - Reference: `W` as safetensors holds it, split into `parts` row blocks multiplied
///   separately (Q, K and V were three `Linear`s, and the reference keeps their bits).
/// - Packed ISAs: `ceil(out / nr)` panels, each `[in, nr]` k-major (one row of `nr` weights
///   per input feature), zero-padded past `out`; the bias zero-padded to whole panels.
pub struct PackedLinear {
    pub in_features: usize,
    pub out_features: usize,
    /// The kernel family that packed it; others refuse it.
    pub(super) isa: Isa,
    pub(super) nr: usize,
    pub(super) parts: usize,
    pub(super) data: Aligned,
    pub(super) bias: Option<Aligned>,
}

impl PackedLinear {
    /// `weight` is `[out_f, in_f]`; `parts` equal row blocks keep separate reference products.
    pub fn new(
        isa: Isa,
        weight: &[f32],
        bias: Option<&[f32]>,
        (in_f, out_f): (usize, usize),
        parts: usize,
    ) -> Self {
        assert_eq!(
            weight.len(),
            in_f * out_f,
            "PackedLinear: weight is not [{out_f}, {in_f}]"
        );
        assert!(
            parts >= 1 && out_f % parts == 0,
            "PackedLinear: {parts} parts of {out_f}"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), out_f, "PackedLinear: bias is not [{out_f}]");
        }
        let nr = panel_width(isa);
        let copy = |src: &[f32], len: usize| {
            let mut a = Aligned::zeroed(len);
            a.as_mut_slice()[..src.len()].copy_from_slice(src);
            a
        };
        if nr == 0 {
            return PackedLinear {
                in_features: in_f,
                out_features: out_f,
                isa,
                nr,
                parts,
                data: copy(weight, weight.len()),
                bias: bias.map(|b| copy(b, b.len())),
            };
        }
        let panels = out_f.div_ceil(nr);
        let mut data = Aligned::zeroed(panels * nr * in_f);
        let packed = data.as_mut_slice();
        for (o, row) in weight.chunks_exact(in_f).enumerate() {
            let (panel, j) = (o / nr, o % nr);
            let base = panel * nr * in_f + j;
            for (p, &w) in row.iter().enumerate() {
                packed[base + p * nr] = w;
            }
        }
        PackedLinear {
            in_features: in_f,
            out_features: out_f,
            isa,
            nr,
            parts,
            data,
            bias: bias.map(|b| copy(b, panels * nr)),
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub(super) fn panels(&self) -> usize {
        self.out_features.div_ceil(self.nr)
    }
}
