//! [`CudaAdapters`]: the FedCLIP adapter's [`AdapterBackend`] on the GPU, with the semantics of
//! [`crate::adapter::CpuAdapters`] (same parameter layout, per-client Adam step counts,
//! FedProx, both losses, `min_batch` skipping, the same error messages).
//!
//! One [`AdapterBackend::step`] issues the same short sequence of launches whatever the number
//! of clients (kernels/adapter.cu): the batches of all stepping clients are concatenated into
//! one upload, described by per-client row offsets and a list of row tiles, and every kernel's
//! grid covers all clients at once:
//!
//! | launch | grid |
//! |---|---|
//! | `fc_adapter_prox` (FedProx only) | clients × parameter chunks |
//! | `fc_adapter_forward_m{32,64}` ×2 (H, then Z) | row tiles × ⌈d/64⌉ |
//! | `fc_adapter_rows_fwd` (softmax, N, G) | ⌈rows/8⌉ |
//! | `fc_adapter_loss` | clients |
//! | `fc_adapter_rows_bwd` (∂Z) | ⌈rows/8⌉ |
//! | `fc_adapter_dhidden_m{32,64}` (∂U) | row tiles × ⌈d/64⌉ |
//! | `fc_adapter_wgrad` (∂W1, ∂b1, ∂W2, ∂b2) | clients × 2 × ⌈d/64⌉ × ⌈(d+1)/64⌉ |
//! | `fc_adapter_adam` | clients × parameter chunks |
//!
//! so 8 launches (9 with FedProx), two host→device copies (features and Adam scalars; labels,
//! offsets and tiles; a batch of ≥ 1 MiB of features is copied on its own, straight from the
//! caller's slice) and one device→host copy (each client's loss and status) per step. Very
//! large steps are split into groups of clients (bounded work buffers, see
//! [`CudaAdapters::set_group_limits`]), each group one such sequence.
//!
//! The GEMMs are plain f32 SIMT tiles (64 columns × 32 or 64 rows, K in steps of 16 through
//! shared memory, the next slice prefetched into registers); the weight gradients come out of
//! one launch for both layers, the bias gradients from a virtual column of ones. Gradients go
//! to a work buffer, and the optimiser kernel skips a client whose loss or gradient tiles were
//! not finite, so a diverged client is left exactly as it was.
//!
//! Features are checked on the host (shape, labels, NaN/inf, all-zero rows) before anything is
//! uploaded; a non-finite loss or gradient is detected on the device and that client is left
//! unchanged, as on the CPU.

use super::driver::{Arg, DevBuf, Gpu, View};
use crate::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, Loss, OptimizerConfig, OptimizerKind,
    OptimizerState, TextFeatures, TrainConfig, check_features, check_setup, check_step,
    param_count,
};
use anyhow::{Context, Result, ensure};
use bytemuck::Pod;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Threads per block of every adapter kernel.
const THREADS: u32 = 256;
/// Parameters per block of the element-wise kernels (AD_CHUNK).
const CHUNK: usize = 4096;
/// Columns of a GEMM tile (AD_BN) and its K step (AD_BK).
const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// Rows × d of one group's row buffers (six of them, f32): 256 MiB each at most, unless a
/// single client's batch is larger.
const GROUP_ROW_ELEMS: usize = 1 << 26;
/// Gradient buffer of one group: clients × param_count(d) floats (2 GiB).
const GROUP_GRAD_ELEMS: usize = 1 << 29;
/// Batches of at least this many floats are copied to the GPU straight from the caller's
/// slice; smaller ones are gathered into one copy.
const DIRECT_WRITE: usize = 1 << 18;
/// Dynamic shared memory a kernel may use without opting in.
const SMEM_LIMIT: usize = 48 * 1024;

/// Shared memory of a GEMM kernel with `bm`-row tiles (AdTileSmem<BM>::BYTES).
fn tile_smem(bm: usize) -> usize {
    TILE_K * ((bm + 4) + (TILE_N + 4)) * 4
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} = {v} exceeds the kernels' 32-bit sizes"))
}

fn ptr<T>(v: View<'_, T>) -> Arg {
    v.arg()
}

/// A device buffer that only grows (work space reused across steps).
struct Grow<T>(Option<DevBuf<T>>);

impl<T> Default for Grow<T> {
    fn default() -> Self {
        Grow(None)
    }
}

impl<T: Pod> Grow<T> {
    fn reserve(&mut self, gpu: &Arc<Gpu>, len: usize) -> Result<()> {
        let have = self.0.as_ref().map_or(0, |b| b.len());
        if have < len.max(1) {
            self.0 = None; // free before allocating the larger one
            self.0 = Some(gpu.alloc(len.max(have + have / 2).max(1))?);
        }
        Ok(())
    }
    fn view(&self, len: usize) -> View<'_, T> {
        self.0.as_ref().expect("reserved").slice(0, len)
    }
}

/// Work buffers of one group of clients, reused across steps.
#[derive(Default)]
struct Work {
    /// Features [rows, d], then Adam scalars [A, 2].
    floats: Grow<f32>,
    /// Labels [rows], slot_client, slot_row0, slot_rows [A] each, tiles [T, 3].
    ints: Grow<i32>,
    h: Grow<f32>,
    za: Grow<f32>,
    n: Grow<f32>,
    dz: Grow<f32>,
    du: Grow<f32>,
    rnorm: Grow<f32>,
    g: Grow<f32>,
    grad: Grow<f32>,
    flags: Grow<i32>,
    /// Per client: loss, status.
    out: Grow<f32>,
    prox: Grow<f32>,
    /// Host staging for small batches' features.
    staging: Vec<f32>,
}

/// The FedProx term of one step: μ, the anchor and each slot's partial sums.
#[derive(Clone, Copy)]
struct Proximal<'a> {
    mu: f32,
    anchor: View<'a, f32>,
    partials: View<'a, f32>,
}

/// One group's device buffers, as views sized by its layout (what the launches read).
struct GroupViews<'a> {
    slots: usize,
    x: View<'a, f32>,
    adam_steps: View<'a, f32>,
    labels: View<'a, i32>,
    slot_client: View<'a, i32>,
    slot_row0: View<'a, i32>,
    slot_rows: View<'a, i32>,
    tiles: View<'a, i32>,
    h: View<'a, f32>,
    za: View<'a, f32>,
    n: View<'a, f32>,
    dz: View<'a, f32>,
    du: View<'a, f32>,
    rnorm: View<'a, f32>,
    g: View<'a, f32>,
    grad: View<'a, f32>,
    flags: View<'a, i32>,
    out: View<'a, f32>,
}

impl<'a> GroupViews<'a> {
    fn new(w: &'a Work, layout: &Layout, d: usize, c: usize) -> Self {
        let (rows, a) = (layout.rows, layout.slots());
        let fv = w.floats.view(rows * d + 2 * a);
        let iv = w.ints.view(rows + 3 * a + layout.tiles.len());
        GroupViews {
            slots: a,
            x: fv.slice(0, rows * d),
            adam_steps: fv.slice(rows * d, 2 * a),
            labels: iv.slice(0, rows),
            slot_client: iv.slice(rows, a),
            slot_row0: iv.slice(rows + a, a),
            slot_rows: iv.slice(rows + 2 * a, a),
            tiles: iv.slice(rows + 3 * a, layout.tiles.len()),
            h: w.h.view(rows * d),
            za: w.za.view(rows * d),
            n: w.n.view(rows * d),
            dz: w.dz.view(rows * d),
            du: w.du.view(rows * d),
            rnorm: w.rnorm.view(rows),
            g: w.g.view(rows * c),
            grad: w.grad.view(a * param_count(d)),
            flags: w.flags.view(a * flag_count(d)),
            out: w.out.view(2 * a),
        }
    }
}

/// The host-side description of one group: its clients' rows in one buffer.
struct Layout {
    rows: usize,
    /// Per slot: client, first row, rows.
    slot_client: Vec<i32>,
    slot_row0: Vec<i32>,
    slot_rows: Vec<i32>,
    /// Row tiles of `bm` rows: (slot, first row, rows).
    tiles: Vec<i32>,
    bm: usize,
}

impl Layout {
    /// `clients[s]` = (client index, rows).
    fn new(clients: &[(usize, usize)]) -> Result<Layout> {
        let max_rows = clients.iter().map(|c| c.1).max().unwrap_or(0);
        let bm = if max_rows <= 32 { 32 } else { 64 };
        let mut l = Layout {
            rows: 0,
            slot_client: Vec::with_capacity(clients.len()),
            slot_row0: Vec::with_capacity(clients.len()),
            slot_rows: Vec::with_capacity(clients.len()),
            tiles: Vec::new(),
            bm,
        };
        for (s, &(k, b)) in clients.iter().enumerate() {
            l.slot_client.push(int(k, "client index")?);
            l.slot_row0.push(int(l.rows, "rows of a step")?);
            l.slot_rows.push(int(b, "batch size")?);
            for t0 in (0..b).step_by(bm) {
                l.tiles.push(s as i32);
                l.tiles.push(int(l.rows + t0, "rows of a step")?);
                l.tiles.push((b - t0).min(bm) as i32);
            }
            l.rows += b;
        }
        int(l.rows, "rows of a step")?;
        Ok(l)
    }
    fn slots(&self) -> usize {
        self.slot_client.len()
    }
    fn tile_count(&self) -> usize {
        self.tiles.len() / 3
    }
}

/// K client adapters of width d on one GPU (or the host emulator), trained together. The
/// same contract as [`crate::adapter::CpuAdapters`]: parameters and Adam moments
/// `[K, param_count(d)]` (here in device memory), each client's own optimiser step count, a
/// client's result independent of which other clients step with it.
pub struct CudaAdapters {
    gpu: Arc<Gpu>,
    dim: usize,
    clients: usize,
    texts: TextFeatures<f32>,
    texts_dev: DevBuf<f32>,
    config: TrainConfig,
    scale: f32,
    params: DevBuf<f32>,
    m: DevBuf<f32>,
    v: DevBuf<f32>,
    optimizer_steps: Vec<u64>,
    steps: u64,
    /// FedProx: μ and the anchor on the device.
    proximal: Option<(f32, DevBuf<f32>)>,
    work: Mutex<Work>,
    profile: Mutex<StepProfile>,
    /// Most rows and clients one group of a step takes.
    group_rows: usize,
    group_clients: usize,
}

/// Where the host's wall-clock time of the last [`AdapterBackend::step`] went (see
/// [`CudaAdapters::last_step_profile`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepProfile {
    /// Gathering and copying features, labels and the step's tables to the GPU.
    pub upload: Duration,
    /// Launching the kernels and waiting for their results (the losses' copy back).
    pub device: Duration,
    /// Groups of clients the step was split into (1 unless the step was very large).
    pub groups: usize,
    /// Kernel launches.
    pub launches: usize,
}

impl CudaAdapters {
    /// `num_clients` adapters on `gpu`, all starting from `init`, with fresh optimiser state.
    pub fn new(
        gpu: &Arc<Gpu>,
        num_clients: usize,
        init: &AdapterParams<f32>,
        texts: TextFeatures<f32>,
        config: TrainConfig,
    ) -> Result<Self> {
        let dim = init.dim();
        let scale = check_setup(num_clients, dim, &texts, &config)?;
        check_optimizer(&config.optimizer)?;
        let classes = texts.classes();
        ensure!(
            (3 * classes + 8) * 4 <= SMEM_LIMIT,
            "{classes} classes exceed the CUDA loss kernel's shared memory (at most {})",
            (SMEM_LIMIT / 4 - 8) / 3
        );
        let p = param_count(dim);
        int(p, "parameters per client")?;
        let total = num_clients
            .checked_mul(p)
            .ok_or_else(|| anyhow::anyhow!("{num_clients} clients × {p} parameters overflow"))?;
        let params = gpu.alloc::<f32>(total)?;
        let m = gpu.alloc::<f32>(total)?;
        let v = gpu.alloc::<f32>(total)?;
        let texts_dev = gpu.upload(texts.as_slice())?;
        let this = CudaAdapters {
            gpu: gpu.clone(),
            dim,
            clients: num_clients,
            texts,
            texts_dev,
            config,
            scale,
            params,
            m,
            v,
            optimizer_steps: vec![0; num_clients],
            steps: 0,
            proximal: None,
            work: Mutex::new(Work::default()),
            profile: Mutex::new(StepProfile::default()),
            group_rows: (GROUP_ROW_ELEMS / dim).max(1),
            group_clients: (GROUP_GRAD_ELEMS / p).max(1),
        };
        let init_dev = gpu.upload(init.as_slice())?;
        this.fill(this.params.view(), Some(init_dev.view()), num_clients)?;
        this.fill(this.m.view(), None, num_clients)?;
        this.fill(this.v.view(), None, num_clients)?;
        Ok(this)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    pub fn texts(&self) -> &TextFeatures<f32> {
        &self.texts
    }
    /// Bounds the work of one launch sequence: a step whose clients have more than `rows`
    /// samples in all, or more than `clients` clients, is run as several sequences (a single
    /// client larger than `rows` still runs alone). The defaults keep each row buffer under
    /// 256 MiB and the gradient buffer under 2 GiB. Results do not depend on the grouping.
    pub fn set_group_limits(&mut self, rows: usize, clients: usize) {
        self.group_rows = rows.max(1);
        self.group_clients = clients.max(1);
    }
    /// Timing of the last step (zero before the first, or when no client stepped).
    pub fn last_step_profile(&self) -> StepProfile {
        self.profile.lock().map(|p| *p).unwrap_or_default()
    }
    /// How many optimiser steps client `k` has taken since the last reset.
    pub fn optimizer_steps(&self, k: usize) -> Option<u64> {
        self.optimizer_steps.get(k).copied()
    }

    fn launch(
        &self,
        name: &'static str,
        grid: (usize, usize),
        smem: usize,
        args: &[Arg],
    ) -> Result<()> {
        let gx = u32::try_from(int(grid.0, "grid size")?)?;
        let gy = u32::try_from(grid.1)?;
        debug_assert!(smem <= SMEM_LIMIT);
        self.gpu
            .launch(name, (gx, gy, 1), (THREADS, 1, 1), smem as u32, args)
    }

    /// `dst[r, :] = src` (or 0) for the `rows` rows of `param_count(d)` of `dst`.
    fn fill(&self, dst: View<'_, f32>, src: Option<View<'_, f32>>, rows: usize) -> Result<()> {
        let p = param_count(self.dim);
        debug_assert!(dst.len() >= rows * p);
        self.launch(
            "fc_adapter_fill",
            (rows * p.div_ceil(CHUNK), 1),
            0,
            &[
                ptr(dst),
                src.map_or(Arg::Ptr(0), |s| s.arg()),
                Arg::I32(int(p, "parameters")?),
                Arg::I32(int(rows, "clients")?),
            ],
        )
    }

    fn client_range(&self, k: usize) -> Result<(usize, usize)> {
        ensure!(
            k < self.clients,
            "client {k} does not exist ({} clients)",
            self.clients
        );
        let p = param_count(self.dim);
        Ok((k * p, p))
    }

    /// Forward pass of `layout`'s rows (features already in `work.floats`) up to G (scaled by
    /// `scale`) in `work.g`; leaves H, A, N and r in the work buffers.
    fn forward(&self, w: &Work, layout: &Layout, scale: f32) -> Result<()> {
        let (d, c) = (self.dim, self.texts.classes());
        let p = param_count(d);
        let (rows, a) = (layout.rows, layout.slots());
        let x = w.floats.view(rows * d);
        let ints = w.ints.view(rows + 3 * a + layout.tiles.len());
        let slot_client = ints.slice(rows, a);
        let tiles = ints.slice(rows + 3 * a, layout.tiles.len());
        let (h, za) = (w.h.view(rows * d), w.za.view(rows * d));
        let fwd = if layout.bm == 32 {
            "fc_adapter_forward_m32"
        } else {
            "fc_adapter_forward_m64"
        };
        let grid = (layout.tile_count(), d.div_ceil(TILE_N));
        for (layer, input, output) in [(0, x, h), (1, h, za)] {
            self.launch(
                fwd,
                grid,
                tile_smem(layout.bm),
                &[
                    ptr(input),
                    ptr(output),
                    ptr(self.params.view()),
                    ptr(slot_client),
                    ptr(tiles),
                    Arg::I32(d as i32),
                    Arg::I32(p as i32),
                    Arg::I32(layer),
                ],
            )?;
        }
        self.launch(
            "fc_adapter_rows_fwd",
            (rows.div_ceil(8), 1),
            0,
            &[
                ptr(za),
                ptr(x),
                ptr(w.n.view(rows * d)),
                ptr(w.rnorm.view(rows)),
                ptr(self.texts_dev.view()),
                ptr(w.g.view(rows * c)),
                Arg::I32(rows as i32),
                Arg::I32(d as i32),
                Arg::I32(c as i32),
                Arg::F32(scale),
            ],
        )
    }

    /// Sizes every work buffer for `layout` (and `train`: the backward and optimiser ones).
    fn reserve(&self, w: &mut Work, layout: &Layout, train: bool) -> Result<()> {
        let (d, c, g) = (self.dim, self.texts.classes(), &self.gpu);
        let (rows, a) = (layout.rows, layout.slots());
        w.floats.reserve(g, rows * d + 2 * a)?;
        w.ints.reserve(g, rows + 3 * a + layout.tiles.len())?;
        for buf in [&mut w.h, &mut w.za, &mut w.n] {
            buf.reserve(g, rows * d)?;
        }
        w.rnorm.reserve(g, rows)?;
        w.g.reserve(g, rows * c)?;
        if train {
            let p = param_count(d);
            w.dz.reserve(g, rows * d)?;
            w.du.reserve(g, rows * d)?;
            w.grad.reserve(g, a * p)?;
            w.flags.reserve(g, a * flag_count(d))?;
            w.out.reserve(g, 2 * a)?;
            if self.proximal.is_some() {
                w.prox.reserve(g, a * p.div_ceil(CHUNK))?;
            }
        }
        Ok(())
    }

    /// One training step of the clients `group` = (client, batch): uploads, the launch
    /// sequence, and each client's (loss, status) back (status 0 stepped, 1 loss not finite,
    /// 2 gradient not finite).
    fn step_group(&self, group: &[(usize, &ClientBatch<'_>)]) -> Result<Vec<(f32, u32)>> {
        let sizes: Vec<(usize, usize)> = group.iter().map(|(k, b)| (*k, b.len())).collect();
        let layout = Layout::new(&sizes)?;
        let mut guard = self
            .work
            .lock()
            .map_err(|_| anyhow::anyhow!("work buffers poisoned"))?;
        let w = &mut *guard;
        self.reserve(w, &layout, true)?;
        let t0 = Instant::now();
        self.upload_group(w, group, &layout)?;
        let t1 = Instant::now();
        let v = GroupViews::new(w, &layout, self.dim, self.texts.classes());
        let prox = self.launch_proximal(w, &v)?;
        self.forward(w, &layout, self.scale)?;
        self.launch_backward(&layout, &v, prox)?;
        self.launch_adam(&v, prox)?;
        let result = self.gpu.read(v.out)?;
        let mut profile = self
            .profile
            .lock()
            .map_err(|_| anyhow::anyhow!("profile poisoned"))?;
        profile.upload += t1 - t0;
        profile.device += t1.elapsed();
        profile.groups += 1;
        profile.launches += if prox.is_some() { 9 } else { 8 };
        Ok(result
            .chunks_exact(2)
            .map(|r| (r[0], r[1] as u32))
            .collect())
    }

    /// Host → device for one group: features and Adam scalars (small batches gathered into
    /// runs, large ones copied straight from the caller's slice); labels, slot table, tiles.
    fn upload_group(
        &self,
        w: &mut Work,
        group: &[(usize, &ClientBatch<'_>)],
        layout: &Layout,
    ) -> Result<()> {
        let d = self.dim;
        let (rows, a) = (layout.rows, layout.slots());
        let cfg = &self.config.optimizer;
        let fv = w.floats.view(rows * d + 2 * a);
        let run = &mut w.staging;
        run.clear();
        let (mut run_start, mut offset) = (0, 0);
        for (_, b) in group {
            let n = b.features.len();
            if n >= DIRECT_WRITE {
                if !run.is_empty() {
                    self.gpu.write(fv.slice(run_start, run.len()), run)?;
                    run.clear();
                }
                self.gpu.write(fv.slice(offset, n), b.features)?;
            } else {
                if run.is_empty() {
                    run_start = offset;
                }
                run.extend_from_slice(b.features);
            }
            offset += n;
        }
        if run.is_empty() {
            run_start = offset;
        }
        for (k, _) in group {
            // As src/adapter/optim.rs: scalars in f64, then f32.
            let t = (self.optimizer_steps[*k] + 1) as f64;
            let bias_correction1 = 1.0 - cfg.beta1.powf(t);
            let bias_correction2 = 1.0 - cfg.beta2.powf(t);
            run.push(-(cfg.lr / bias_correction1) as f32);
            run.push(bias_correction2.sqrt() as f32);
        }
        self.gpu.write(fv.slice(run_start, run.len()), run)?;
        let mut ints = Vec::with_capacity(rows + 3 * a + layout.tiles.len());
        for (_, b) in group {
            ints.extend(b.labels.iter().map(|&y| y as i32));
        }
        ints.extend_from_slice(&layout.slot_client);
        ints.extend_from_slice(&layout.slot_row0);
        ints.extend_from_slice(&layout.slot_rows);
        ints.extend_from_slice(&layout.tiles);
        self.gpu.write(w.ints.view(ints.len()), &ints)
    }

    /// FedProx: each slot's partial sums of ‖θ − anchor‖², when a proximal term is set.
    /// Returns (μ, anchor, partials) for the loss and Adam launches.
    fn launch_proximal<'w>(
        &'w self,
        w: &'w Work,
        v: &GroupViews<'w>,
    ) -> Result<Option<Proximal<'w>>> {
        let Some((mu, anchor)) = &self.proximal else {
            return Ok(None);
        };
        let p = param_count(self.dim);
        let chunks = p.div_ceil(CHUNK);
        let partials = w.prox.view(v.slots * chunks);
        self.launch(
            "fc_adapter_prox",
            (v.slots * chunks, 1),
            64,
            &[
                ptr(self.params.view()),
                ptr(anchor.view()),
                ptr(v.slot_client),
                Arg::I32(p as i32),
                Arg::I32(chunks as i32),
                ptr(partials),
            ],
        )?;
        Ok(Some(Proximal {
            mu: *mu,
            anchor: anchor.view(),
            partials,
        }))
    }

    /// Loss and its gradient back through the rows, the hidden layer and into the weight
    /// gradients (`v.grad`), after [`Self::forward`].
    fn launch_backward(
        &self,
        layout: &Layout,
        v: &GroupViews<'_>,
        prox: Option<Proximal<'_>>,
    ) -> Result<()> {
        let (d, c) = (self.dim, self.texts.classes());
        let p = param_count(d);
        let (d32, p32, c32) = (d as i32, p as i32, c as i32);
        let chunks = p.div_ceil(CHUNK);
        self.launch(
            "fc_adapter_loss",
            (v.slots, 1),
            (3 * c + 8) * 4,
            &[
                ptr(v.g),
                ptr(v.labels),
                ptr(v.slot_row0),
                ptr(v.slot_rows),
                Arg::I32(c32),
                Arg::F32(self.scale),
                Arg::I32(match self.config.loss {
                    Loss::Contrastive => 0,
                    Loss::Class => 1,
                }),
                prox.map_or(Arg::Ptr(0), |x| x.partials.arg()),
                Arg::I32(chunks as i32),
                Arg::F32(prox.map_or(0.0, |x| x.mu)),
                ptr(v.out),
            ],
        )?;
        self.launch(
            "fc_adapter_rows_bwd",
            (layout.rows.div_ceil(8), 1),
            0,
            &[
                ptr(v.g),
                ptr(self.texts_dev.view()),
                ptr(v.za),
                ptr(v.x),
                ptr(v.n),
                ptr(v.rnorm),
                ptr(v.dz),
                Arg::I32(layout.rows as i32),
                Arg::I32(d32),
                Arg::I32(c32),
            ],
        )?;
        self.launch(
            if layout.bm == 32 {
                "fc_adapter_dhidden_m32"
            } else {
                "fc_adapter_dhidden_m64"
            },
            (layout.tile_count(), d.div_ceil(TILE_N)),
            tile_smem(layout.bm),
            &[
                ptr(v.dz),
                ptr(v.h),
                ptr(v.du),
                ptr(self.params.view()),
                ptr(v.slot_client),
                ptr(v.tiles),
                Arg::I32(d32),
                Arg::I32(p32),
            ],
        )?;
        self.launch(
            "fc_adapter_wgrad",
            (v.slots * flag_count(d), 1),
            tile_smem(64) + 16,
            &[
                ptr(v.du),
                ptr(v.x),
                ptr(v.dz),
                ptr(v.h),
                ptr(v.grad),
                ptr(v.flags),
                ptr(v.slot_row0),
                ptr(v.slot_rows),
                Arg::I32(d32),
                Arg::I32(p32),
            ],
        )
    }

    /// The Adam / AdamW update of every slot from `v.grad` (skipped in-kernel for a client
    /// whose loss or gradient is not finite).
    fn launch_adam(&self, v: &GroupViews<'_>, prox: Option<Proximal<'_>>) -> Result<()> {
        let cfg = &self.config.optimizer;
        let p = param_count(self.dim);
        let chunks = p.div_ceil(CHUNK);
        let nflags = flag_count(self.dim);
        let f = |v: f64| Arg::F32(v as f32);
        let kind = match cfg.kind {
            OptimizerKind::Adam => 0,
            OptimizerKind::AdamW => 1,
            OptimizerKind::Sgd => return check_optimizer(cfg),
        };
        self.launch(
            "fc_adapter_adam",
            (v.slots * chunks, 1),
            16,
            &[
                ptr(self.params.view()),
                ptr(self.m.view()),
                ptr(self.v.view()),
                ptr(v.grad),
                prox.map_or(Arg::Ptr(0), |x| x.anchor.arg()),
                Arg::F32(prox.map_or(0.0, |x| x.mu)),
                ptr(v.slot_client),
                ptr(v.out),
                ptr(v.flags),
                Arg::I32(nflags as i32),
                ptr(v.adam_steps),
                Arg::I32(p as i32),
                Arg::I32(chunks as i32),
                Arg::I32(kind),
                f(1.0 - cfg.beta1),
                f(cfg.beta2),
                f(1.0 - cfg.beta2),
                f(cfg.eps),
                f(cfg.weight_decay),
                f(1.0 - cfg.lr * cfg.weight_decay),
            ],
        )
    }
}

/// The CUDA adapter kernels implement Adam and AdamW only: SGD is refused, naming the flags.
pub fn check_optimizer(cfg: &OptimizerConfig) -> Result<()> {
    ensure!(
        cfg.kind != OptimizerKind::Sgd,
        "--optimizer sgd is not implemented on the CUDA adapter engine (kernels/adapter.cu \
         has Adam and AdamW only); train with --device cpu (the rounds then run on the CPU \
         engine) or --optimizer adam / adamw"
    );
    Ok(())
}

/// Gradient tiles per client of fc_adapter_wgrad: 2 · ⌈d/64⌉ · ⌈(d+1)/64⌉.
fn flag_count(d: usize) -> usize {
    2 * d.div_ceil(TILE_N) * (d + 1).div_ceil(TILE_N)
}

/// Splits the stepping clients into groups of at most `max_rows` rows (unless one client has
/// more) and `max_clients` clients.
fn groups<'a, 'b>(
    active: &'b [(usize, &'b ClientBatch<'a>)],
    max_rows: usize,
    max_clients: usize,
) -> Vec<&'b [(usize, &'b ClientBatch<'a>)]> {
    let mut out = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, (_, b)) in active.iter().enumerate() {
        if i > start && (rows + b.len() > max_rows || i - start >= max_clients) {
            out.push(&active[start..i]);
            (start, rows) = (i, 0);
        }
        rows += b.len();
    }
    if start < active.len() {
        out.push(&active[start..]);
    }
    out
}

impl AdapterBackend for CudaAdapters {
    fn num_clients(&self) -> usize {
        self.clients
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn steps(&self) -> u64 {
        self.steps
    }

    fn step(&mut self, batches: &[Option<ClientBatch<'_>>]) -> Result<Vec<Option<f32>>> {
        let step = self.steps;
        let (d, c) = (self.dim, self.texts.classes());
        check_step(step, batches, self.clients, d, c)?;
        self.steps += 1;
        let min_batch = self.config.min_batch.max(1);
        let active: Vec<(usize, &ClientBatch<'_>)> = batches
            .iter()
            .enumerate()
            .filter_map(|(k, b)| b.as_ref().filter(|b| b.len() >= min_batch).map(|b| (k, b)))
            .collect();
        if let Ok(mut p) = self.profile.lock() {
            *p = StepProfile::default();
        }
        let mut losses = vec![None; self.clients];
        let mut first_error = None;
        for group in groups(&active, self.group_rows, self.group_clients) {
            let results = self
                .step_group(group)
                .with_context(|| format!("step {step} on the GPU"))?;
            for (&(k, _), (loss, status)) in group.iter().zip(results) {
                match status {
                    0 => {
                        self.optimizer_steps[k] += 1;
                        losses[k] = Some(loss);
                    }
                    1 => {
                        first_error.get_or_insert_with(|| {
                            anyhow::anyhow!(
                                "client {k}, step {step}: loss is {loss}; training diverged"
                            )
                        });
                    }
                    _ => {
                        first_error.get_or_insert_with(|| {
                            anyhow::anyhow!(
                                "client {k}, step {step}: gradient is not finite (loss \
                                 {loss}); training diverged"
                            )
                        });
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(losses),
        }
    }

    fn set_proximal(&mut self, mu: f32, anchor: Option<&AdapterParams<f32>>) -> Result<()> {
        self.proximal = match anchor {
            Some(a) => {
                ensure!(
                    mu.is_finite() && mu >= 0.0,
                    "proximal μ must be finite and ≥ 0, got {mu}"
                );
                ensure!(
                    a.dim() == self.dim,
                    "proximal anchor has dim {}, the adapters have dim {}",
                    a.dim(),
                    self.dim
                );
                Some((mu, self.gpu.upload(a.as_slice())?))
            }
            None => None,
        };
        Ok(())
    }

    /// Reads the moments back from the GPU; panics if that copy fails (the device is lost).
    fn optimizer_state(&self) -> OptimizerState {
        let read = |b: &DevBuf<f32>| {
            self.gpu
                .read(b.view())
                .unwrap_or_else(|e| panic!("reading the Adam moments from the GPU: {e:#}"))
        };
        OptimizerState {
            m: read(&self.m),
            v: read(&self.v),
            steps: self.optimizer_steps.clone(),
        }
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        ensure!(
            state.m.len() == self.m.len()
                && state.v.len() == self.v.len()
                && state.steps.len() == self.clients,
            "optimiser state is for another shape: {} moments and {} step counts, expected {} and {}",
            state.m.len(),
            state.steps.len(),
            self.m.len(),
            self.clients
        );
        self.gpu.write(self.m.view(), &state.m)?;
        self.gpu.write(self.v.view(), &state.v)?;
        self.optimizer_steps.copy_from_slice(&state.steps);
        Ok(())
    }

    /// Zeroes the moments on the GPU; panics if that launch fails (the device is lost).
    fn reset(&mut self) {
        for buf in [&self.m, &self.v] {
            self.fill(buf.view(), None, self.clients)
                .unwrap_or_else(|e| panic!("zeroing the Adam moments on the GPU: {e:#}"));
        }
        self.optimizer_steps.fill(0);
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.optimizer.lr = lr;
    }

    fn client_params(&self, k: usize) -> Result<AdapterParams<f32>> {
        let (start, len) = self.client_range(k)?;
        AdapterParams::from_flat(self.dim, self.gpu.read(self.params.slice(start, len))?)
    }

    fn set_client_params(&mut self, k: usize, params: &AdapterParams<f32>) -> Result<()> {
        ensure!(
            params.dim() == self.dim,
            "client {k}: parameters have dim {}, the adapters have dim {}",
            params.dim(),
            self.dim
        );
        let (start, len) = self.client_range(k)?;
        self.gpu
            .write(self.params.slice(start, len), params.as_slice())
    }

    fn read_all_params(&self) -> Result<Vec<f32>> {
        self.gpu.read(self.params.view())
    }

    fn write_all_params(&mut self, params: &[f32]) -> Result<()> {
        ensure!(
            params.len() == self.params.len(),
            "parameter buffer has {} values, expected {} clients × {} = {}",
            params.len(),
            self.clients,
            param_count(self.dim),
            self.params.len()
        );
        self.gpu.write(self.params.view(), params)
    }

    fn predict(&self, k: usize, features: &[f32]) -> Result<Vec<u32>> {
        self.client_range(k)?;
        let (d, c) = (self.dim, self.texts.classes());
        ensure!(
            features.len().is_multiple_of(d),
            "client {k}: features hold {} values, not a multiple of the adapter dim {d}",
            features.len()
        );
        check_features(&format!("client {k}, predict"), features, d)?;
        let mut out = Vec::with_capacity(features.len() / d);
        let mut guard = self
            .work
            .lock()
            .map_err(|_| anyhow::anyhow!("work buffers poisoned"))?;
        let w = &mut *guard;
        for chunk in features.chunks(self.group_rows * d) {
            let rows = chunk.len() / d;
            let layout = Layout::new(&[(k, rows)])?;
            self.reserve(w, &layout, false)?;
            let mut ints = vec![0i32; rows]; // (no labels)
            ints.extend_from_slice(&layout.slot_client);
            ints.extend_from_slice(&layout.slot_row0);
            ints.extend_from_slice(&layout.slot_rows);
            ints.extend_from_slice(&layout.tiles);
            self.gpu.write(w.floats.view(chunk.len()), chunk)?;
            self.gpu.write(w.ints.view(ints.len()), &ints)?;
            self.forward(w, &layout, 1.0)?;
            let g = self.gpu.read(w.g.view(rows * c))?;
            out.extend(g.chunks_exact(c).map(|row| {
                let mut best = 0;
                for j in 1..c {
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                best as u32
            }));
        }
        Ok(out)
    }
}
