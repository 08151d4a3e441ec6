//! CUDA engine throughput: images/s of the image tower from pixels already on the GPU, at
//! batch 1/32/256/1024 for ViT-B/32, B/16 and L/14 (random weights), and the GEMM kernels'
//! TFLOP/s on every GEMM shape of those models, each version and tile side by side with cuBLAS
//! as the yardstick. `cargo bench --bench gpu_encode`; prints `skipped: no CUDA device` without
//! one. benches/torch_gpu_encode.py measures transformers on the same shapes;
//! benches/device_check.sh runs both on the device machine.
//!
//! Arguments (after `--`): model names to run (b32, b16, l14; default all), `--batches 1,32`,
//! `--no-gemm`, `--no-encode`, `--gemm v1,v2,cublas` (which GEMMs to time; default all). With
//! the GEMMs come the head-dim-64 attention kernels v1 and v2 on the towers' shapes.
//! `--profile`: after each model's timings, one forward pass at the largest batch with every
//! launch timed by CUDA events, as a per-kernel table (src/cuda/profile.rs), beside the
//! unprofiled median so the events' own cost shows.
//!
//! `--from-jpeg DIR` (with `--batches`, default 256,1024) times instead the whole image path
//! of `fedclip embed` on ViT-B/32 (random weights): `Encoder::encode_images` from the JPEG/PNG
//! files under DIR (repeated up to `--images N`, default 2048), with the next batch decoded
//! while the GPU encodes (the default) and in turn, beside decode-only (the rayon pool, no
//! GPU) and encode-only (host pixels: fp16 rounding, upload, tower, download) images/s, so the
//! slower side shows. `--model DIR` takes a model directory instead of ViT-B/32; with
//! `FEDCLIP_EMULATE=1` and no GPU the host emulator runs it (a functional check only, e.g.
//! `FEDCLIP_EMULATE=1 cargo bench --bench gpu_encode -- --from-jpeg data/pacs-mini
//! --model weights/tiny-clip --images 40 --batches 8,16`).

use fedclip::cuda::kernels::{Attention, AttentionKernel, Gemm, GemmTile, GemmVersion};
use fedclip::cuda::{CudaVision, Gpu, availability};
use fedclip::weights::{ClipConfig, TensorStore, write_random_clip};
use half::f16;
use std::sync::Arc;
use std::time::Instant;

fn config(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/configs/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Median seconds of `reps` timed runs of `f` (after one warm-up), each ending in a sync.
fn time(gpu: &Gpu, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    gpu.synchronize().unwrap();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            gpu.synchronize().unwrap();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn encode(gpu: &Arc<Gpu>, label: &str, file: &str, batches: &[usize], profile: bool) {
    let tmp = tempfile::tempdir().unwrap();
    write_random_clip(tmp.path(), &config(file), 1).unwrap();
    let cfg = ClipConfig::load(tmp.path()).unwrap();
    let store = TensorStore::open_dir(tmp.path()).unwrap();
    let vision = CudaVision::load(
        gpu,
        &fedclip::weights::TowerWeights::new(&store, fedclip::weights::Layout::HuggingFace),
        cfg.vision.as_ref().unwrap(),
    )
    .unwrap();
    let per = vision.pixels_per_image();
    let max = *batches.iter().max().unwrap();
    let pixels: Vec<f32> = (0..max * per)
        .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    // fp16 on the device, as CudaVision::forward uploads them (fc_im2col_f16).
    let dev = gpu.upload(&fedclip::cuda::pixels_to_f16(&pixels)).unwrap();
    let mut max_ms = 0.0;
    for &b in batches {
        let reps = (2048 / b).clamp(3, 50);
        let s = time(gpu, reps, || {
            vision.forward_device(dev.slice(0, b * per), b).unwrap();
        });
        if b == max {
            max_ms = s * 1e3;
        }
        println!(
            "fedclip cuda {label} batch {b:>4}: {:>9.1} images/s ({:.2} ms/batch, median of {reps}, {})",
            b as f64 / s,
            s * 1e3,
            gpu.info.name
        );
    }
    if profile {
        gpu.start_profile().unwrap();
        vision.forward_device(dev.slice(0, max * per), max).unwrap();
        let launches = gpu.finish_profile().unwrap();
        println!(
            "per-kernel time of one {label} batch-{max} forward (unprofiled median {max_ms:.2} ms):"
        );
        print!(
            "{}",
            fedclip::cuda::profile::profile_table(&launches, "CUDA events")
        );
    }
}

/// cuBLAS, loaded at run time for this bench only (the engine never needs it): our own
/// four-function binding, as src/cuda/nvrtc.rs has for NVRTC, because cudarc's panics when the
/// library is missing and cannot be pointed at a pip-installed copy. The library is
/// `$FEDCLIP_CUBLAS` when set, else `libcublas.so.13`, then `.so.12`, on the loader path
/// (benches/device_check.sh puts the pip wheels' directories there).
mod cublas {
    use libloading::Library;
    use std::ffi::{c_int, c_void};

    type CreateFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
    type DestroyFn = unsafe extern "C" fn(*mut c_void) -> c_int;
    type VersionFn = unsafe extern "C" fn(*mut c_void, *mut c_int) -> c_int;
    #[allow(clippy::type_complexity)]
    type GemmExFn = unsafe extern "C" fn(
        *mut c_void,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *const c_void,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        *mut c_void,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> c_int;

    // cublas_api.h / library_types.h values.
    const OP_N: c_int = 0;
    const OP_T: c_int = 1;
    const R_16F: c_int = 2;
    const COMPUTE_32F: c_int = 68;
    const GEMM_DEFAULT: c_int = -1;

    pub struct Cublas {
        handle: *mut c_void,
        gemm_ex: GemmExFn,
        destroy: DestroyFn,
        pub version: i32,
        pub path: String,
        _lib: Library,
    }

    impl Cublas {
        /// The first library that loads and creates a handle on the current context, or why
        /// none did.
        pub fn open() -> Result<Cublas, String> {
            let names: Vec<String> = match std::env::var("FEDCLIP_CUBLAS") {
                Ok(p) => vec![p],
                Err(_) => vec!["libcublas.so.13".into(), "libcublas.so.12".into()],
            };
            let mut why = Vec::new();
            for name in names {
                match Self::open_one(&name) {
                    Ok(c) => return Ok(c),
                    Err(e) => why.push(format!("{name}: {e}")),
                }
            }
            Err(why.join("; "))
        }

        fn open_one(name: &str) -> Result<Cublas, String> {
            // SAFETY: loading a library runs its initialisers; cuBLAS's are benign.
            let lib = unsafe { Library::new(name) }.map_err(|e| e.to_string())?;
            // SAFETY: the signatures match cublas_api.h (cublasCreate_v2, cublasDestroy_v2,
            // cublasGetVersion_v2, cublasGemmEx).
            let (create, destroy, version, gemm_ex) = unsafe {
                let create = *lib
                    .get::<CreateFn>(b"cublasCreate_v2\0")
                    .map_err(|e| e.to_string())?;
                let destroy = *lib
                    .get::<DestroyFn>(b"cublasDestroy_v2\0")
                    .map_err(|e| e.to_string())?;
                let version = *lib
                    .get::<VersionFn>(b"cublasGetVersion_v2\0")
                    .map_err(|e| e.to_string())?;
                let gemm = *lib
                    .get::<GemmExFn>(b"cublasGemmEx\0")
                    .map_err(|e| e.to_string())?;
                (create, destroy, version, gemm)
            };
            let mut handle = std::ptr::null_mut();
            // SAFETY: out-pointer to a handle; binds to the calling thread's current context
            // (the device's primary context, which fedclip's Gpu also uses).
            let status = unsafe { create(&mut handle) };
            if status != 0 {
                return Err(format!("cublasCreate_v2 returned status {status}"));
            }
            let mut v = 0;
            // SAFETY: a live handle and an out-pointer.
            unsafe { version(handle, &mut v) };
            Ok(Cublas {
                handle,
                gemm_ex,
                destroy,
                version: v,
                path: name.to_string(),
                _lib: lib,
            })
        }

        /// `out[m, n] = Σ_k a[m, k]·w[n, k]`, all row-major fp16 device pointers, f32
        /// accumulation, on the legacy default stream (our kernels' stream). In cuBLAS's
        /// column-major terms that is outᵀ (n × m) = (w as k × n)ᵀ · (a as k × m).
        pub fn gemm_bt(&self, a: u64, w: u64, out: u64, m: usize, n: usize, k: usize) -> i32 {
            let (alpha, beta) = (1.0f32, 0.0f32);
            let (m, n, k) = (m as c_int, n as c_int, k as c_int);
            // SAFETY: device pointers to buffers of the sizes the arguments describe; alpha
            // and beta are host scalars (the default pointer mode).
            unsafe {
                (self.gemm_ex)(
                    self.handle,
                    OP_T,
                    OP_N,
                    n,
                    m,
                    k,
                    (&alpha as *const f32).cast(),
                    w as *const c_void,
                    R_16F,
                    k,
                    a as *const c_void,
                    R_16F,
                    k,
                    (&beta as *const f32).cast(),
                    out as *mut c_void,
                    R_16F,
                    n,
                    COMPUTE_32F,
                    GEMM_DEFAULT,
                )
            }
        }
    }

    impl Drop for Cublas {
        fn drop(&mut self) {
            // SAFETY: the handle was created by this library and is destroyed once.
            unsafe { (self.destroy)(self.handle) };
        }
    }
}

/// (label, M, N, K): every GEMM of one image-tower layer, and the patch embedding, at batch 256.
fn gemm_shapes() -> Vec<(String, usize, usize, usize)> {
    // (model, width, MLP width, tokens, patch GEMM K: 3·P² rounded up to a multiple of 8)
    let models = [
        ("B/32", 768, 3072, 50, 3 * 32 * 32),
        ("B/16", 768, 3072, 197, 3 * 16 * 16),
        (
            "L/14",
            1024,
            4096,
            257,
            (3 * 14 * 14usize).next_multiple_of(8),
        ),
    ];
    let mut v = Vec::new();
    for (model, w, mlp, tokens, kp) in models {
        let rows = 256 * tokens;
        v.push((format!("{model} qkv"), rows, 3 * w, w));
        v.push((format!("{model} out"), rows, w, w));
        v.push((format!("{model} fc1"), rows, mlp, w));
        v.push((format!("{model} fc2"), rows, w, mlp));
        v.push((format!("{model} patch"), 256 * (tokens - 1), w, kp));
    }
    v
}

fn tflops(m: usize, n: usize, k: usize, s: f64) -> f64 {
    2.0 * (m * n * k) as f64 / s / 1e12
}

/// Each shape through every tile of the versions picked (fused bias + QuickGELU epilogue, fp16
/// out), then cuBLAS (plain product, fp16 out). Warm L2 between repeats: the A operands
/// (≥ 19 MB) mostly exceed what a repeat could keep cached anyway.
fn gemms(gpu: &Arc<Gpu>, versions: &[&str]) {
    let shapes = gemm_shapes();
    let max = |f: fn(&(String, usize, usize, usize)) -> usize| shapes.iter().map(f).max().unwrap();
    let (a_len, w_len, out_len) = (max(|s| s.1 * s.3), max(|s| s.2 * s.3), max(|s| s.1 * s.2));
    let pattern = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|i| f16::from_f32(((i * 7919) % 2001) as f32 / 2000.0 - 0.5))
            .collect()
    };
    let a = gpu.upload(&pattern(a_len)).unwrap();
    let w = gpu.upload(&pattern(w_len)).unwrap();
    let out = gpu.alloc::<f16>(out_len).unwrap();
    let bias = gpu.upload(&vec![0.0f32; max(|s| s.2)]).unwrap();
    let cublas = if versions.contains(&"cublas") {
        match cublas::Cublas::open() {
            Ok(c) => {
                println!("cuBLAS {} from {}", c.version, c.path);
                Some(c)
            }
            Err(why) => {
                println!("cuBLAS: not loaded ({why})");
                None
            }
        }
    } else {
        None
    };
    for (label, m, n, k) in shapes {
        for tile in GemmTile::ALL {
            let picked = match tile.version() {
                Some(GemmVersion::V1) => versions.contains(&"v1"),
                Some(GemmVersion::V2) => versions.contains(&"v2"),
                None => false,
            };
            if !picked {
                continue;
            }
            let gemm = Gemm {
                a: a.view(),
                lda: k,
                w: w.view(),
                ldw: k,
                m,
                n,
                k,
                bias: Some(bias.view()),
                act: Some(fedclip::weights::Activation::QuickGelu),
                resid: None,
                out32: None,
                out16: Some(out.view()),
            };
            if let Err(e) = gemm.launch(gpu, tile) {
                println!("fedclip cuda gemm {label:<10} {tile:?}: not run ({e:#})");
                continue;
            }
            let s = time(gpu, 10, || gemm.launch(gpu, tile).unwrap());
            println!(
                "fedclip cuda gemm {label:<10} {m:>6}×{n:>4}×{k:>4} {tile:<10?}: {:>6.1} TFLOP/s ({:.3} ms)",
                tflops(m, n, k, s),
                s * 1e3
            );
        }
        if let Some(c) = &cublas {
            let (pa, pw, po) = (
                a.view().device_ptr(),
                w.view().device_ptr(),
                out.view().device_ptr(),
            );
            let status = c.gemm_bt(pa, pw, po, m, n, k);
            if status != 0 {
                println!("cublas gemm {label:<10}: cublasGemmEx returned status {status}");
                continue;
            }
            let s = time(gpu, 10, || assert_eq!(c.gemm_bt(pa, pw, po, m, n, k), 0));
            println!(
                "cublas      gemm {label:<10} {m:>6}×{n:>4}×{k:>4} GemmEx    : {:>6.1} TFLOP/s ({:.3} ms)",
                tflops(m, n, k, s),
                s * 1e3
            );
        }
    }
}

/// Attention v1 against v2 on each tower's shape at batch 256 (the fused QKV buffer, as the
/// towers use it). FLOPs counted as 4·seq²·width per sequence (Q·Kᵀ and P·V), no masking.
fn attentions(gpu: &Arc<Gpu>) {
    // (label, seq, heads)
    let shapes = [
        ("B/32", 50, 12),
        ("B/16", 197, 12),
        ("L/14", 257, 16),
        ("L/14-336", 577, 16),
    ];
    let batch = 256;
    for (label, seq, heads) in shapes {
        let width = heads * 64;
        let rows = batch * seq;
        let qkv: Vec<f16> = (0..rows * 3 * width)
            .map(|i| f16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let qkv = gpu.upload(&qkv).unwrap();
        let out = gpu.alloc::<f16>(rows * width).unwrap();
        let call = Attention {
            q: qkv.view(),
            k: qkv.view().offset(width),
            v: qkv.view().offset(2 * width),
            ld_in: 3 * width,
            out: out.view(),
            ld_out: width,
            batch,
            seq,
            heads,
            head_dim: 64,
            causal: false,
        };
        for kind in [AttentionKernel::Hd64, AttentionKernel::Hd64V2] {
            let s = time(gpu, 10, || call.launch(gpu, kind).unwrap());
            let flop = 4.0 * (batch * seq * seq * width) as f64;
            println!(
                "fedclip cuda attention {label:<8} batch {batch} × {seq} tokens × {heads} heads {kind:<6?}: {:>6.1} TFLOP/s ({:.3} ms)",
                flop / s / 1e12,
                s * 1e3
            );
        }
    }
}

/// Median seconds of `reps` runs of `f` (after one warm-up); `f` synchronises itself.
fn time_host(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// `--from-jpeg DIR`: images/s of `encode_images` from files, and of its two halves alone.
fn from_jpeg(
    gpu: &Arc<Gpu>,
    dir: &std::path::Path,
    model: Option<&str>,
    images: usize,
    batches: &[usize],
) {
    use fedclip::cuda::CudaClip;
    use fedclip::embed::collect_images;
    use fedclip::encode::Encoder;
    use fedclip::preprocess::{PreprocessConfig, preprocess_file};
    use rayon::prelude::*;
    let found = collect_images(&[dir.to_path_buf()]).unwrap();
    assert!(
        !found.is_empty(),
        "no JPEG or PNG files under {}",
        dir.display()
    );
    let entries: Vec<_> = found.iter().cycle().take(images.max(1)).cloned().collect();
    let tmp = tempfile::tempdir().unwrap();
    let (model_dir, label) = match model {
        Some(m) => (std::path::PathBuf::from(m), m.to_string()),
        None => {
            write_random_clip(tmp.path(), &config("clip-vit-base-patch32"), 1).unwrap();
            (tmp.path().to_path_buf(), "ViT-B/32".to_string())
        }
    };
    let clip = CudaClip::load(gpu, &model_dir).unwrap();
    let threads = rayon::current_num_threads();
    let n = entries.len();
    println!(
        "from JPEG: {n} images ({} files under {}), {label}, {threads} decode threads",
        found.len(),
        dir.display()
    );
    // Encode only: one batch of decoded pixels from the host, as encode_images hands them over.
    let vision = clip.vision.as_ref().unwrap();
    let cfg = PreprocessConfig::from_model_dir(&model_dir, vision.config.image_size).unwrap();
    let encode_only: Vec<f64> = batches
        .iter()
        .map(|&b| {
            let b = b.min(n);
            let px: Vec<f32> = entries[..b]
                .par_iter()
                .flat_map_iter(|e| preprocess_file(&e.path, &cfg).unwrap())
                .collect();
            b as f64 / time_host(5, || drop(vision.forward(&px, b, false).unwrap()))
        })
        .collect();
    println!(
        "encode only uploads fp16 pixels from {} host memory",
        if vision.staging_pinned() {
            "page-locked"
        } else {
            "pageable (emulator, or pinning failed)"
        }
    );
    let mut encoder = Encoder::cuda(clip).unwrap();
    for (&b, encode_only) in batches.iter().zip(encode_only) {
        let decode = time_host(3, || {
            for chunk in entries.chunks(b) {
                let px: Vec<_> = chunk
                    .par_iter()
                    .map(|e| preprocess_file(&e.path, &cfg))
                    .collect();
                assert!(px.iter().all(|p| p.is_ok()));
            }
        });
        let mut rates = Vec::new();
        for ahead in [true, false] {
            encoder.set_decode_ahead(ahead);
            let s = time_host(3, || {
                let out = encoder.encode_images(&entries, b, false).unwrap();
                assert_eq!(out.kept.len(), n);
            });
            rates.push(n as f64 / s);
        }
        println!(
            "fedclip cuda {label} from JPEG batch {b:>4}: {:>8.1} images/s decoding ahead, {:>8.1} in turn | decode only {:>8.1}, encode only {:>8.1} images/s ({})",
            rates[0],
            rates[1],
            n as f64 / decode,
            encode_only,
            gpu.info.name
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let emulate = std::env::var("FEDCLIP_EMULATE").is_ok_and(|v| v == "1");
    let gpu = match availability() {
        Ok(()) => Gpu::open().expect("CUDA device present but unusable"),
        // The emulator only for the functional check of --from-jpeg (far too slow to time).
        Err(why) if why.starts_with("no CUDA device") && emulate => Gpu::emulator().unwrap(),
        Err(why) if why.starts_with("no CUDA device") => {
            println!("skipped: no CUDA device");
            return;
        }
        Err(why) => panic!("CUDA driver present but unusable: {why}"),
    };
    println!(
        "device: {} (sm_{}{}, {} SMs), NVRTC {}",
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        gpu.info.sm_count,
        gpu.info.nvrtc
    );
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let jpeg_dir = value("--from-jpeg");
    let default_batches = if jpeg_dir.is_some() {
        vec![256, 1024]
    } else {
        vec![1, 32, 256, 1024]
    };
    let batches: Vec<usize> = value("--batches")
        .map(|s| s.split(',').map(|v| v.parse().unwrap()).collect())
        .unwrap_or(default_batches);
    if let Some(dir) = jpeg_dir {
        let images = value("--images").map_or(2048, |v| v.parse().unwrap());
        let model = value("--model").map(String::as_str);
        from_jpeg(&gpu, std::path::Path::new(dir), model, images, &batches);
        return;
    }
    if gpu.info.emulated {
        println!("skipped: the emulator runs only --from-jpeg (a functional check)");
        return;
    }
    let profile = args.iter().any(|a| a == "--profile");
    let models = [
        ("b32", "ViT-B/32", "clip-vit-base-patch32"),
        ("b16", "ViT-B/16", "clip-vit-base-patch16"),
        ("l14", "ViT-L/14", "clip-vit-large-patch14"),
    ];
    let picked: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| models.iter().any(|m| m.0 == *a))
        .collect();
    if !args.iter().any(|a| a == "--no-encode") {
        for (key, label, file) in models {
            if picked.is_empty() || picked.contains(&key) {
                encode(&gpu, label, file, &batches, profile);
            }
        }
    }
    if !args.iter().any(|a| a == "--no-gemm") {
        let versions: Vec<&str> = args
            .iter()
            .position(|a| a == "--gemm")
            .and_then(|i| args.get(i + 1))
            .map_or(vec!["v1", "v2", "cublas"], |s| s.split(',').collect());
        gemms(&gpu, &versions);
        attentions(&gpu);
    }
}
