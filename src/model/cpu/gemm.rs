//! The BLIS-style loops around a tile kernel, free of any ISA: threads split the rows (M) and
//! the weight panels (N), never the inner dimension (K), so every output is summed in the
//! same order whatever the thread count — 1 and 2 rayon threads give identical bits.

use super::pack::PackedLinear;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// The packed A block of the running task, grown once per thread and reused.
    static A_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The activation applied after the last K block, while the tile is still in L1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    QuickGelu,
    Gelu,
}

/// What happens at the store besides the bias (which the `PackedLinear` carries).
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    pub act: Act,
    /// Add the product to what `out` holds (the residual stream) instead of overwriting it.
    pub residual: bool,
}

impl Epilogue {
    pub const PLAIN: Epilogue = Epilogue {
        act: Act::None,
        residual: false,
    };
}

/// One call of a tile kernel: `c[m, n] = (load_c ? c : 0) + bias[n] + a[m, kc] · b[kc, nr]`
/// with `a` a packed micro-panel (`a[p·mr + r]`), `b` a packed panel slice and `bias` null
/// when absent. Never reads `c` when `load_c` is false.
pub(super) struct Tile {
    pub a: *const f32,
    pub b: *const f32,
    pub kc: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub m: usize,
    pub n: usize,
    pub load_c: bool,
    pub bias: *const f32,
}

/// One ISA's tile kernel and its blocking.
pub(super) struct Microkernel {
    /// Rows per tile.
    pub mr: usize,
    /// K block: a `kc × nr` panel slice stays in L1 while the tiles of a row block use it.
    pub kc: usize,
    /// # Safety: the pointers in `Tile` must cover `m` rows × `kc` (a), `kc × nr` (b),
    /// `m` rows × `n` columns (c) and `nr` floats (bias).
    pub tile: unsafe fn(&Tile),
    /// # Safety: `c` must cover `m` rows of `ldc` floats, `n` ≤ ldc used.
    pub act: unsafe fn(*mut f32, usize, usize, usize, Act),
}

/// Products smaller than this many multiply-adds run on the calling thread.
const SERIAL_FLOPS: usize = 1 << 18;
/// Tiles per row block at most: the packed A block (`mc × kc`, 192 KiB at 12 × 256) stays in
/// L2 while every panel of the task streams past it.
const TILES_PER_ROW_BLOCK: usize = 16;

/// `out[rows, n] (+)= x[rows, k] · Wᵀ + b`, then the activation.
pub(super) fn linear(
    uk: &Microkernel,
    w: &PackedLinear,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    ep: Epilogue,
) {
    let (k, n) = (w.in_features, w.out_features);
    assert_eq!(x.len(), rows * k, "linear: input is not [{rows}, {k}]");
    assert_eq!(out.len(), rows * n, "linear: output is not [{rows}, {n}]");
    assert!(k > 0, "linear: no input features");
    let panels = w.panels();
    let threads = rayon::current_num_threads();
    let (mc, row_blocks, per_task, panel_blocks) = task_grid(uk.mr, rows, panels, threads);
    let out_ptr = out.as_mut_ptr() as usize;
    let task = |t: usize| {
        // Row blocks vary fastest: the tasks a thread runs in a row share one panel block.
        let (rb, pb) = (t % row_blocks, t / row_blocks);
        let r = rb * mc..((rb + 1) * mc).min(rows);
        let p = pb * per_task..((pb + 1) * per_task).min(panels);
        // SAFETY: tasks write disjoint (row block, panel block) regions of `out`, whose size
        // was asserted above; reads stay inside `x` and the packed weight.
        unsafe { run_task(uk, w, x, out_ptr as *mut f32, r, p, ep) };
    };
    let tasks = row_blocks * panel_blocks;
    if rows * n * k < SERIAL_FLOPS || threads == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// `(mc, row_blocks, panels_per_task, panel_blocks)` of the task grid: tasks are (row block,
/// panel block) pairs. A task packs its A block once per K block and reuses it across all its
/// panels, so panel blocks are few (one per thread: packing A is a strided copy that cost a
/// fifth of the time when every 8 panels repacked it); row blocks are equal in whole tiles
/// so that tasks weigh the same, and a single row block is split into two panel blocks per
/// thread so that both cores stay busy at batch 1. The grid changes no bits: the sum order of
/// every output is fixed by the K blocks alone.
fn task_grid(
    mr: usize,
    rows: usize,
    panels: usize,
    threads: usize,
) -> (usize, usize, usize, usize) {
    let row_blocks = rows.div_ceil(mr * TILES_PER_ROW_BLOCK).max(1);
    let mc = (rows.div_ceil(row_blocks).div_ceil(mr) * mr).max(mr);
    let row_blocks = rows.div_ceil(mc);
    let wanted = if row_blocks >= 2 {
        threads
    } else {
        2 * threads
    };
    let per_task = panels.div_ceil(wanted.clamp(1, panels));
    (mc, row_blocks, per_task, panels.div_ceil(per_task))
}

/// One task's loops: K blocks outermost (so the sum order is fixed), then panels, then tiles.
///
/// # Safety
/// `out` must be `[rows, n]` with `rows ≥ r.end`; `x` is `[rows, k]`.
unsafe fn run_task(
    uk: &Microkernel,
    w: &PackedLinear,
    x: &[f32],
    out: *mut f32,
    r: std::ops::Range<usize>,
    p: std::ops::Range<usize>,
    ep: Epilogue,
) {
    let (k, n, nr) = (w.in_features, w.out_features, w.nr);
    let data = w.data.as_slice().as_ptr();
    let bias = w.bias.as_ref().map(|b| b.as_slice().as_ptr());
    A_BLOCK.with_borrow_mut(|a_block| {
        for pc in (0..k).step_by(uk.kc) {
            let kc = uk.kc.min(k - pc);
            let (first, last) = (pc == 0, pc + kc == k);
            pack_a(a_block, x, k, r.clone(), pc..pc + kc, uk.mr);
            for panel in p.clone() {
                let cols = nr.min(n - panel * nr);
                for i0 in r.clone().step_by(uk.mr) {
                    let m = uk.mr.min(r.end - i0);
                    // SAFETY: every offset below is inside the buffers the caller vouches for.
                    unsafe {
                        let tile = Tile {
                            a: a_block.as_ptr().add((i0 - r.start) * kc),
                            b: data.add(panel * nr * k + pc * nr),
                            kc,
                            c: out.add(i0 * n + panel * nr),
                            ldc: n,
                            m,
                            n: cols,
                            load_c: !first || ep.residual,
                            bias: match bias {
                                Some(b) if first => b.add(panel * nr),
                                _ => std::ptr::null(),
                            },
                        };
                        (uk.tile)(&tile);
                        if last && ep.act != Act::None {
                            (uk.act)(tile.c, n, m, cols, ep.act);
                        }
                    }
                }
            }
        }
    });
}

/// The most rows a tile kernel takes (`Microkernel::mr`).
const MAX_MR: usize = 16;

/// Copies rows `r`, columns `ks` of `x` (`[rows, k]`) into micro-panels of `mr` rows, each
/// k-major (`a[p·mr + i]`), so that the tile kernel reads A contiguously: unpacked rows
/// `k` floats apart alias in L1 when `4k` is a multiple of 4096 (fc2's k = 3072).
fn pack_a(
    a_block: &mut Vec<f32>,
    x: &[f32],
    k: usize,
    r: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    mr: usize,
) {
    let kc = ks.len();
    a_block.resize(r.len().div_ceil(mr) * mr * kc, 0.0);
    let mut src: [&[f32]; MAX_MR] = [&[]; MAX_MR];
    for (t, i0) in r.clone().step_by(mr).enumerate() {
        let panel = &mut a_block[t * mr * kc..(t + 1) * mr * kc];
        let m = mr.min(r.end - i0);
        for (i, s) in src[..m].iter_mut().enumerate() {
            *s = &x[(i0 + i) * k + ks.start..(i0 + i) * k + ks.end];
        }
        // Eight columns of each row per step: one contiguous load per row, stores that stay
        // inside eight packed k-steps (a few lines of L1).
        let mut p = 0;
        while p + 8 <= kc {
            let dst = &mut panel[p * mr..(p + 8) * mr];
            for (i, s) in src[..m].iter().enumerate() {
                let s: &[f32; 8] = s[p..p + 8].try_into().unwrap();
                for (j, &v) in s.iter().enumerate() {
                    dst[j * mr + i] = v;
                }
            }
            p += 8;
        }
        for p in p..kc {
            for (i, s) in src[..m].iter().enumerate() {
                panel[p * mr + i] = s[p];
            }
        }
    }
}
