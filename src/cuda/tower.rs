//! The CLIP towers on the GPU, the same computation as `crate::model` (vision.rs, text.rs,
//! encoder.rs) step for step:
//!
//! - weights: fp16 matrices (Q, K and V concatenated into one `[3·width, width]` projection),
//!   f32 biases, LayerNorm parameters, embeddings and positions; uploaded once;
//! - activations: the residual stream `h` stays f32 (LayerNorm reads it, the out-projection
//!   and fc2 GEMMs add into it in place); GEMM and attention inputs are fp16;
//! - a workspace sized for the largest batch seen so far, reused across batches.
//!
//! Per block: LN1 → fused QKV GEMM (fp16 out) → attention → out-proj GEMM (+ bias, += h) →
//! LN2 → fc1 GEMM (+ bias, activation, fp16 out) → fc2 GEMM (+ bias, += h).

use super::driver::{DevBuf, Gpu, HostBuf, View};
use super::kernels::{self, Attention, AttentionKernel, Gemm, GemmTile, ImagePixel, LayerNorm};
use super::twins::to_f16;
use crate::weights::{
    Activation, BlockWeights, ClipConfig, ModelFiles, Norm, TextConfig, TowerWeights, VisionConfig,
};
use anyhow::{Context, Result, anyhow, bail};
use half::f16;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What one batch produces (on the host).
pub struct TowerOutput {
    /// Post-LN pooled tokens `[batch, hidden]` (through fp16).
    pub pooled: Vec<f32>,
    /// Projected features `[batch, projection_dim]`, f32, not normalised (empty without a
    /// projection).
    pub embeds: Vec<f32>,
    /// When traced: the encoder input and each block's output, `[batch·seq, hidden]`, as the
    /// CPU engine's `hidden_states`.
    pub hidden_states: Vec<Vec<f32>>,
}

struct Layer {
    ln1_g: DevBuf<f32>,
    ln1_b: DevBuf<f32>,
    qkv_w: DevBuf<f16>,
    qkv_b: DevBuf<f32>,
    out_w: DevBuf<f16>,
    out_b: DevBuf<f32>,
    ln2_g: DevBuf<f32>,
    ln2_b: DevBuf<f32>,
    fc1_w: DevBuf<f16>,
    fc1_b: DevBuf<f32>,
    fc2_w: DevBuf<f16>,
    fc2_b: DevBuf<f32>,
}

/// A tower's transformer blocks.
struct Blocks {
    hidden: usize,
    intermediate: usize,
    heads: usize,
    act: Activation,
    eps: f32,
    layers: Vec<Layer>,
}

impl Layer {
    /// Uploads one block (Q, K and V arrive stacked, as the fused QKV GEMM takes them).
    fn upload(gpu: &Arc<Gpu>, w: BlockWeights) -> Result<Layer> {
        Ok(Layer {
            ln1_g: gpu.upload(&w.ln1.weight)?,
            ln1_b: gpu.upload(&w.ln1.bias)?,
            qkv_w: gpu.upload(&to_f16(&w.qkv_weight))?,
            qkv_b: gpu.upload(&w.qkv_bias)?,
            out_w: gpu.upload(&to_f16(&w.out_weight))?,
            out_b: gpu.upload(&w.out_bias)?,
            ln2_g: gpu.upload(&w.ln2.weight)?,
            ln2_b: gpu.upload(&w.ln2.bias)?,
            fc1_w: gpu.upload(&to_f16(&w.fc1_weight))?,
            fc1_b: gpu.upload(&w.fc1_bias)?,
            fc2_w: gpu.upload(&to_f16(&w.fc2_weight))?,
            fc2_b: gpu.upload(&w.fc2_bias)?,
        })
    }
}

impl Blocks {
    /// Runs every block over `h` `[batch·seq, hidden]` in place; with `trace`, downloads `h`
    /// after each block.
    fn run(
        &self,
        gpu: &Gpu,
        w: &Blockspace,
        batch: usize,
        seq: usize,
        causal: bool,
        trace: &mut Option<Vec<Vec<f32>>>,
    ) -> Result<()> {
        let (d, f) = (self.hidden, self.intermediate);
        let rows = batch * seq;
        let h = w.h.slice(0, rows * d);
        let x16 = w.x16.slice(0, rows * d);
        let qkv = w.qkv.slice(0, rows * 3 * d);
        let mid = w.mid.slice(0, rows * f);
        let gemm = |a, lda, wt, n, k| plain_gemm(a, lda, wt, rows, n, k);
        for l in &self.layers {
            LayerNorm {
                x: h,
                row_index: None,
                rows,
                dim: d,
                gamma: l.ln1_g.view(),
                beta: l.ln1_b.view(),
                eps: self.eps,
                out32: None,
                out16: Some(x16),
            }
            .launch(gpu, None)?;
            Gemm {
                bias: Some(l.qkv_b.view()),
                out16: Some(qkv),
                ..gemm(x16, d, &l.qkv_w, 3 * d, d)
            }
            .launch(gpu, GemmTile::Auto)?;
            // The attention output reuses x16: the QKV GEMM has consumed it.
            Attention {
                q: qkv,
                k: qkv.offset(d),
                v: qkv.offset(2 * d),
                ld_in: 3 * d,
                out: x16,
                ld_out: d,
                batch,
                seq,
                heads: self.heads,
                head_dim: d / self.heads,
                causal,
            }
            .launch(gpu, AttentionKernel::Auto)?;
            Gemm {
                bias: Some(l.out_b.view()),
                resid: Some(h),
                out32: Some(h),
                ..gemm(x16, d, &l.out_w, d, d)
            }
            .launch(gpu, GemmTile::Auto)?;
            LayerNorm {
                x: h,
                row_index: None,
                rows,
                dim: d,
                gamma: l.ln2_g.view(),
                beta: l.ln2_b.view(),
                eps: self.eps,
                out32: None,
                out16: Some(x16),
            }
            .launch(gpu, None)?;
            Gemm {
                bias: Some(l.fc1_b.view()),
                act: Some(self.act),
                out16: Some(mid),
                ..gemm(x16, d, &l.fc1_w, f, d)
            }
            .launch(gpu, GemmTile::Auto)?;
            Gemm {
                bias: Some(l.fc2_b.view()),
                resid: Some(h),
                out32: Some(h),
                ..gemm(mid, f, &l.fc2_w, d, f)
            }
            .launch(gpu, GemmTile::Auto)?;
            if let Some(t) = trace {
                t.push(gpu.read(h)?);
            }
        }
        Ok(())
    }
}

/// `a[m, k] · wᵀ` with no epilogue yet (fields are filled in by struct update).
fn plain_gemm<'a>(
    a: View<'a, f16>,
    lda: usize,
    w: &'a DevBuf<f16>,
    m: usize,
    n: usize,
    k: usize,
) -> Gemm<'a> {
    Gemm {
        a,
        lda,
        w: w.view(),
        ldw: k,
        m,
        n,
        k,
        bias: None,
        act: None,
        resid: None,
        out32: None,
        out16: None,
    }
}

/// Buffers the blocks use, for `rows` token rows.
struct Blockspace {
    rows: usize,
    h: DevBuf<f32>,
    x16: DevBuf<f16>,
    qkv: DevBuf<f16>,
    mid: DevBuf<f16>,
}

impl Blockspace {
    fn new(gpu: &Arc<Gpu>, rows: usize, d: usize, f: usize) -> Result<Blockspace> {
        Ok(Blockspace {
            rows,
            h: gpu.alloc(rows * d)?,
            x16: gpu.alloc(rows * d)?,
            qkv: gpu.alloc(rows * 3 * d)?,
            mid: gpu.alloc(rows * f)?,
        })
    }
}

/// Pooling and projection: LN over the gathered rows → fp16 pooled → projection GEMM (f32).
struct Head {
    ln_g: DevBuf<f32>,
    ln_b: DevBuf<f32>,
    eps: f32,
    /// `[projection_dim, hidden]`.
    projection: Option<DevBuf<f16>>,
    projection_dim: usize,
}

/// Buffers for the head, for `batch` sequences.
struct Headspace {
    batch: usize,
    index: DevBuf<i32>,
    pooled: DevBuf<f16>,
    out: DevBuf<f32>,
}

impl Head {
    fn workspace(&self, gpu: &Arc<Gpu>, batch: usize, d: usize) -> Result<Headspace> {
        Ok(Headspace {
            batch,
            index: gpu.alloc(batch)?,
            pooled: gpu.alloc(batch * d)?,
            out: gpu.alloc(batch * self.projection_dim.max(1))?,
        })
    }

    /// Pools rows `index` of `h` and projects them; results stay in `w`.
    fn run(&self, gpu: &Gpu, h: View<f32>, index: &[i32], w: &Headspace, d: usize) -> Result<()> {
        let batch = index.len();
        if batch > w.batch {
            bail!("pooling {batch} rows with a workspace for {}", w.batch);
        }
        gpu.write(w.index.view(), index)?;
        let pooled = w.pooled.slice(0, batch * d);
        LayerNorm {
            x: h,
            row_index: Some(w.index.slice(0, batch)),
            rows: batch,
            dim: d,
            gamma: self.ln_g.view(),
            beta: self.ln_b.view(),
            eps: self.eps,
            out32: None,
            out16: Some(pooled),
        }
        .launch(gpu, Some(index))?;
        if let Some(p) = &self.projection {
            Gemm {
                a: pooled,
                lda: d,
                w: p.view(),
                ldw: d,
                m: batch,
                n: self.projection_dim,
                k: d,
                bias: None,
                act: None,
                resid: None,
                out32: Some(w.out.slice(0, batch * self.projection_dim)),
                out16: None,
            }
            .launch(gpu, GemmTile::Auto)?;
        }
        Ok(())
    }

    fn output(
        &self,
        gpu: &Gpu,
        w: &Headspace,
        batch: usize,
        d: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let pooled = gpu.read(w.pooled.slice(0, batch * d))?;
        let embeds = if self.projection.is_some() {
            gpu.read(w.out.slice(0, batch * self.projection_dim))?
        } else {
            Vec::new()
        };
        Ok((pooled.iter().map(|v| v.to_f32()).collect(), embeds))
    }
}

fn upload_head(
    gpu: &Arc<Gpu>,
    norm: Norm,
    projection: Option<Vec<f32>>,
    projection_dim: usize,
    eps: f32,
) -> Result<Head> {
    Ok(Head {
        ln_g: gpu.upload(&norm.weight)?,
        ln_b: gpu.upload(&norm.bias)?,
        eps,
        projection: projection.map(|p| gpu.upload(&to_f16(&p))).transpose()?,
        projection_dim,
    })
}

/// The image tower on the GPU.
pub struct CudaVision {
    pub config: VisionConfig,
    gpu: Arc<Gpu>,
    /// Patch convolution as `[hidden, kp]`, zero-padded from C·P·P to `kp` (a multiple of 8).
    patch: DevBuf<f16>,
    kp: usize,
    class_embedding: DevBuf<f32>,
    positions: DevBuf<f32>,
    pre_ln_g: DevBuf<f32>,
    pre_ln_b: DevBuf<f32>,
    blocks: Blocks,
    head: Head,
    work: Mutex<Option<VisionWork>>,
    /// The fp16 pixels' host side, page-locked where the driver allows, grown to the largest
    /// batch and reused.
    staging: Mutex<Option<HostBuf<f16>>>,
}

struct VisionWork {
    images: usize,
    /// fp16: im2col rounds every pixel to fp16 anyway, so rounding on the host first gives
    /// the same patch rows for half the upload.
    pixels: DevBuf<f16>,
    patches: DevBuf<f16>,
    patch_out: DevBuf<f32>,
    blocks: Blockspace,
    head: Headspace,
}

impl CudaVision {
    /// Uploads the tower block by block: no f32 copy of the whole tower is held on the host.
    pub fn load(gpu: &Arc<Gpu>, weights: &TowerWeights, config: &VisionConfig) -> Result<Self> {
        let (d, c, p) = (config.hidden_size, config.num_channels, config.patch_size);
        let k = c * p * p;
        let kp = k.div_ceil(8) * 8;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::upload(gpu, weights.vision_block(config, i)?))
            .collect::<Result<Vec<_>>>()?;
        let w = weights.vision(config)?;
        let mut padded = vec![0.0f32; d * kp];
        for (o, r) in padded.chunks_exact_mut(kp).zip(w.patch.chunks_exact(k)) {
            o[..k].copy_from_slice(r);
        }
        let eps = config.layer_norm_eps;
        Ok(CudaVision {
            patch: gpu.upload(&to_f16(&padded))?,
            kp,
            class_embedding: gpu.upload(&w.class_embedding)?,
            positions: gpu.upload(&w.positions)?,
            pre_ln_g: gpu.upload(&w.pre_norm.weight)?,
            pre_ln_b: gpu.upload(&w.pre_norm.bias)?,
            blocks: Blocks {
                hidden: d,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                act: config.hidden_act,
                eps,
                layers,
            },
            head: upload_head(gpu, w.post_norm, w.projection, config.projection_dim, eps)?,
            config: config.clone(),
            gpu: gpu.clone(),
            work: Mutex::new(None),
            staging: Mutex::new(None),
        })
    }

    pub fn has_projection(&self) -> bool {
        self.head.projection.is_some()
    }

    /// Whether the last batch's pixels went up from page-locked memory (for benches).
    pub fn staging_pinned(&self) -> bool {
        self.staging
            .lock()
            .is_ok_and(|s| s.as_ref().is_some_and(HostBuf::is_pinned))
    }

    pub fn pixels_per_image(&self) -> usize {
        let c = &self.config;
        c.num_channels * c.image_size * c.image_size
    }

    fn ensure_work<'a>(
        &self,
        slot: &'a mut Option<VisionWork>,
        batch: usize,
    ) -> Result<&'a VisionWork> {
        if slot.as_ref().is_none_or(|w| w.images < batch) {
            *slot = None; // free the old workspace before allocating a larger one
            let c = &self.config;
            let (d, t) = (c.hidden_size, c.num_positions());
            let g = gpu_grid(c);
            let gpu = &self.gpu;
            *slot = Some(VisionWork {
                images: batch,
                pixels: gpu.alloc(batch * self.pixels_per_image())?,
                patches: gpu.alloc(batch * g * g * self.kp)?,
                patch_out: gpu.alloc(batch * g * g * d)?,
                blocks: Blockspace::new(gpu, batch * t, d, c.intermediate_size)?,
                head: self.head.workspace(gpu, batch, d)?,
            });
        }
        Ok(slot.as_ref().expect("just set"))
    }

    /// Encodes `batch` images of normalised pixels `[batch, channels, size, size]`.
    pub fn forward(&self, pixels: &[f32], batch: usize, trace: bool) -> Result<TowerOutput> {
        if pixels.len() != batch * self.pixels_per_image() || batch == 0 {
            bail!(
                "pixel buffer of {} values is not {batch} images of {}",
                pixels.len(),
                self.pixels_per_image()
            );
        }
        // The staging buffer is only ever tried, never waited for: a forward that finds it
        // busy (another thread's) rounds into plain memory, so the rayon tasks of the
        // rounding can never wait on a lock their own thread holds.
        let mut staging = self.staging.try_lock().ok();
        let mut plain = Vec::new();
        let pixels16: &mut [f16] = match staging.as_deref_mut() {
            Some(slot) => {
                if slot.as_ref().is_none_or(|b| b.len() < pixels.len()) {
                    *slot = None; // free the smaller one first
                    *slot = Some(self.gpu.host_buffer(pixels.len()));
                }
                &mut slot.as_mut().expect("just set")[..pixels.len()]
            }
            None => {
                plain.resize(pixels.len(), f16::ZERO);
                &mut plain
            }
        };
        round_pixels_into(pixels, pixels16);
        let mut guard = self
            .work
            .lock()
            .map_err(|_| anyhow!("workspace poisoned"))?;
        let w = self.ensure_work(&mut guard, batch)?;
        self.gpu.write(w.pixels.view(), pixels16)?;
        let mut states = trace.then(Vec::new);
        self.run(w, w.pixels.view(), batch, &mut states)?;
        let d = self.config.hidden_size;
        let (pooled, embeds) = self.head.output(&self.gpu, &w.head, batch, d)?;
        Ok(TowerOutput {
            pooled,
            embeds,
            hidden_states: states.unwrap_or_default(),
        })
    }

    /// Encodes pixels already on the GPU (f32, or fp16 as [`forward`](Self::forward)
    /// uploads them: the same result), leaving the result in the workspace (for benches:
    /// call [`Gpu::synchronize`] to wait for it).
    pub fn forward_device<T: ImagePixel>(&self, pixels: View<T>, batch: usize) -> Result<()> {
        if pixels.len() < batch * self.pixels_per_image() || batch == 0 {
            bail!("device pixel buffer too small for {batch} images");
        }
        let mut guard = self
            .work
            .lock()
            .map_err(|_| anyhow!("workspace poisoned"))?;
        let w = self.ensure_work(&mut guard, batch)?;
        self.run(w, pixels, batch, &mut None)
    }

    /// The pooled features and embeddings [`forward_device`](Self::forward_device) left for
    /// its first `batch` images.
    pub fn last_output(&self, batch: usize) -> Result<TowerOutput> {
        let guard = self
            .work
            .lock()
            .map_err(|_| anyhow!("workspace poisoned"))?;
        let w = guard
            .as_ref()
            .filter(|w| w.images >= batch)
            .ok_or_else(|| anyhow!("no forward_device result for {batch} images"))?;
        let (pooled, embeds) =
            self.head
                .output(&self.gpu, &w.head, batch, self.config.hidden_size)?;
        Ok(TowerOutput {
            pooled,
            embeds,
            hidden_states: Vec::new(),
        })
    }

    fn run<T: ImagePixel>(
        &self,
        w: &VisionWork,
        pixels: View<T>,
        batch: usize,
        trace: &mut Option<Vec<Vec<f32>>>,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let c = &self.config;
        let (d, t) = (c.hidden_size, c.num_positions());
        let patches = batch * (t - 1);
        kernels::im2col(
            gpu,
            pixels,
            w.patches.view(),
            batch,
            c.num_channels,
            c.image_size,
            c.patch_size,
            self.kp,
        )?;
        Gemm {
            a: w.patches.view(),
            lda: self.kp,
            w: self.patch.view(),
            ldw: self.kp,
            m: patches,
            n: d,
            k: self.kp,
            bias: None,
            act: None,
            resid: None,
            out32: Some(w.patch_out.slice(0, patches * d)),
            out16: None,
        }
        .launch(gpu, GemmTile::Auto)?;
        let h = w.blocks.h.slice(0, batch * t * d);
        kernels::vision_embed(
            gpu,
            w.patch_out.view(),
            self.class_embedding.view(),
            self.positions.view(),
            h,
            batch,
            t,
            d,
        )?;
        LayerNorm {
            x: h,
            row_index: None,
            rows: batch * t,
            dim: d,
            gamma: self.pre_ln_g.view(),
            beta: self.pre_ln_b.view(),
            eps: c.layer_norm_eps,
            out32: Some(h),
            out16: None,
        }
        .launch(gpu, None)?;
        if let Some(tr) = trace {
            tr.push(gpu.read(h)?);
        }
        debug_assert!(w.blocks.rows >= batch * t);
        self.blocks.run(gpu, &w.blocks, batch, t, false, trace)?;
        let index: Vec<i32> = (0..batch).map(|b| (b * t) as i32).collect();
        self.head.run(gpu, h, &index, &w.head, d)
    }
}

/// Pixels rounded to fp16 as `fc_im2col` rounds them (`f16::from_f32` and `cvt.rn.f16.f32`
/// both round to nearest even, overflow to ±inf, and keep subnormals), in parallel when
/// there are many: at batch 1024 of ViT-B/32 that is 154 M values.
pub fn pixels_to_f16(pixels: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; pixels.len()];
    round_pixels_into(pixels, &mut out);
    out
}

/// [`pixels_to_f16`] into `out` (as long as `pixels`).
fn round_pixels_into(pixels: &[f32], out: &mut [f16]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    debug_assert_eq!(pixels.len(), out.len());
    let round = |(o, p): (&mut [f16], &[f32])| {
        for (o, &p) in o.iter_mut().zip(p) {
            *o = f16::from_f32(p);
        }
    };
    if pixels.len() <= CHUNK {
        round((out, pixels));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(pixels.par_chunks(CHUNK))
            .for_each(round);
    }
}

fn gpu_grid(c: &VisionConfig) -> usize {
    c.image_size / c.patch_size
}

/// The text tower on the GPU.
pub struct CudaText {
    pub config: TextConfig,
    gpu: Arc<Gpu>,
    tokens: DevBuf<f32>,
    positions: DevBuf<f32>,
    blocks: Blocks,
    head: Head,
    work: Mutex<Option<TextWork>>,
}

struct TextWork {
    batch: usize,
    rows: usize,
    ids: DevBuf<i32>,
    blocks: Blockspace,
    head: Headspace,
}

impl CudaText {
    /// Uploads the tower block by block.
    pub fn load(gpu: &Arc<Gpu>, weights: &TowerWeights, config: &TextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::upload(gpu, weights.text_block(config, i)?))
            .collect::<Result<Vec<_>>>()?;
        let w = weights.text(config)?;
        Ok(CudaText {
            tokens: gpu.upload(&w.tokens)?,
            positions: gpu.upload(&w.positions)?,
            blocks: Blocks {
                hidden: d,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                act: config.hidden_act,
                eps,
                layers,
            },
            head: upload_head(gpu, w.final_norm, w.projection, config.projection_dim, eps)?,
            config: config.clone(),
            gpu: gpu.clone(),
            work: Mutex::new(None),
        })
    }

    pub fn has_projection(&self) -> bool {
        self.head.projection.is_some()
    }

    /// Encodes `ids` `[batch, seq]`, checked as the CPU engine checks them.
    pub fn forward(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        trace: bool,
    ) -> Result<TowerOutput> {
        let c = &self.config;
        let d = c.hidden_size;
        // Empty launches are not allowed on the device; the CPU engine just returns nothing.
        if batch == 0 || seq == 0 {
            bail!(
                "token buffer holds {} ids, expected {batch}×{seq}",
                ids.len()
            );
        }
        let pool = c.check_ids(ids, batch, seq)?;
        let gpu = &*self.gpu;
        let mut guard = self
            .work
            .lock()
            .map_err(|_| anyhow!("workspace poisoned"))?;
        let rows = batch * seq;
        if guard
            .as_ref()
            .is_none_or(|w| w.rows < rows || w.batch < batch)
        {
            let (b_cap, r_cap) = guard
                .as_ref()
                .map_or((batch, rows), |w| (w.batch.max(batch), w.rows.max(rows)));
            *guard = None; // free the old workspace before allocating a larger one
            *guard = Some(TextWork {
                batch: b_cap,
                rows: r_cap,
                ids: self.gpu.alloc(r_cap)?,
                blocks: Blockspace::new(&self.gpu, r_cap, d, c.intermediate_size)?,
                head: self.head.workspace(&self.gpu, b_cap, d)?,
            });
        }
        let w = guard.as_ref().expect("just set");
        let ids_i32: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        gpu.write(w.ids.view(), &ids_i32)?;
        let h = w.blocks.h.slice(0, rows * d);
        kernels::text_embed(
            gpu,
            w.ids.slice(0, rows),
            &ids_i32,
            self.tokens.view(),
            self.positions.slice(0, seq * d),
            h,
            seq,
            d,
        )?;
        let mut states = trace.then(Vec::new);
        if let Some(t) = &mut states {
            t.push(gpu.read(h)?);
        }
        self.blocks
            .run(gpu, &w.blocks, batch, seq, true, &mut states)?;
        let index: Vec<i32> = pool
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * seq + p) as i32)
            .collect();
        self.head.run(gpu, h, &index, &w.head, d)?;
        let (pooled, embeds) = self.head.output(gpu, &w.head, batch, d)?;
        Ok(TowerOutput {
            pooled,
            embeds,
            hidden_states: states.unwrap_or_default(),
        })
    }
}

/// A model directory's towers on the GPU.
pub struct CudaClip {
    pub dir: PathBuf,
    pub files: ModelFiles,
    pub config: ClipConfig,
    /// `logit_scale` as stored (the log of the temperature), when the save has it.
    pub logit_scale: Option<f32>,
    pub gpu: Arc<Gpu>,
    pub vision: Option<CudaVision>,
    pub text: Option<CudaText>,
}

impl CudaClip {
    /// Loads the model at `path` (a directory or a `.safetensors` file, either layout; see
    /// [`ModelFiles::locate`]) straight to the GPU.
    pub fn load(gpu: &Arc<Gpu>, path: &Path) -> Result<CudaClip> {
        let files = ModelFiles::locate(path)?;
        let config = files.config()?;
        let store = files.open_store()?;
        config.check_against(&store, &files.config_file)?;
        let weights = TowerWeights::new(&store, files.layout);
        let vision = config
            .vision
            .as_ref()
            .map(|c| CudaVision::load(gpu, &weights, c))
            .transpose()
            .with_context(|| {
                format!("loading the vision tower of {} to the GPU", path.display())
            })?;
        let text = config
            .text
            .as_ref()
            .map(|c| CudaText::load(gpu, &weights, c))
            .transpose()
            .with_context(|| format!("loading the text tower of {} to the GPU", path.display()))?;
        Ok(CudaClip {
            dir: files.dir.clone(),
            logit_scale: weights.logit_scale()?,
            files,
            config,
            gpu: gpu.clone(),
            vision,
            text,
        })
    }
}
