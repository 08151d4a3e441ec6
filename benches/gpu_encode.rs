//! CUDA engine throughput: images/s of the image tower from pixels already on the GPU, at
//! batch 1/32/256/1024 for ViT-B/32, B/16 and L/14 (random weights), and the GEMM kernel's
//! TFLOP/s on those models' GEMM shapes. `cargo bench --bench gpu_encode`; prints
//! `skipped: no CUDA device` without one. benches/torch_gpu_encode.py measures transformers on
//! the same shapes; benches/run_on_device.sh runs both on the device machine.
//!
//! Arguments (after `--`): model names to run (b32, b16, l14; default all), `--batches 1,32`,
//! `--no-gemm`.

use fedclip::cuda::kernels::{Gemm, GemmTile};
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

fn encode(gpu: &Arc<Gpu>, label: &str, file: &str, batches: &[usize]) {
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
    let dev = gpu.upload(&pixels).unwrap();
    for &b in batches {
        let reps = (2048 / b).clamp(3, 50);
        let s = time(gpu, reps, || {
            vision.forward_device(dev.slice(0, b * per), b).unwrap();
        });
        println!(
            "fedclip cuda {label} batch {b:>4}: {:>9.1} images/s ({:.2} ms/batch, median of {reps}, {})",
            b as f64 / s,
            s * 1e3,
            gpu.info.name
        );
    }
}

fn gemms(gpu: &Arc<Gpu>) {
    // (label, M, N, K): one layer's GEMMs at batch 256.
    let shapes = [
        ("B/32 qkv", 256 * 50, 2304, 768),
        ("B/32 fc1", 256 * 50, 3072, 768),
        ("B/16 qkv", 256 * 197, 2304, 768),
        ("B/16 out", 256 * 197, 768, 768),
        ("B/16 fc1", 256 * 197, 3072, 768),
        ("B/16 fc2", 256 * 197, 768, 3072),
        ("L/14 qkv", 256 * 257, 3072, 1024),
        ("L/14 out", 256 * 257, 1024, 1024),
        ("L/14 fc1", 256 * 257, 4096, 1024),
        ("L/14 fc2", 256 * 257, 1024, 4096),
        ("L/14 patch", 256 * 256, 1024, 592),
    ];
    for (label, m, n, k) in shapes {
        let a = gpu.upload(&vec![f16::from_f32(0.01); m * k]).unwrap();
        let w = gpu.upload(&vec![f16::from_f32(0.01); n * k]).unwrap();
        let bias = gpu.upload(&vec![0.0f32; n]).unwrap();
        let out = gpu.alloc::<f16>(m * n).unwrap();
        for tile in [GemmTile::T128, GemmTile::T128W4, GemmTile::T64] {
            let s = time(gpu, 10, || {
                Gemm {
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
                }
                .launch(gpu, tile)
                .unwrap();
            });
            println!(
                "fedclip cuda gemm {label:<10} {m:>6}×{n:>4}×{k:>4} {tile:?}: {:>6.1} TFLOP/s ({:.3} ms)",
                2.0 * (m * n * k) as f64 / s / 1e12,
                s * 1e3
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match availability() {
        Ok(()) => {}
        Err(why) if why.starts_with("no CUDA device") => {
            println!("skipped: no CUDA device");
            return;
        }
        Err(why) => panic!("CUDA driver present but unusable: {why}"),
    }
    let gpu = Gpu::open().expect("CUDA device present but unusable");
    println!(
        "device: {} (sm_{}{}, {} SMs), NVRTC {}",
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        gpu.info.sm_count,
        gpu.info.nvrtc
    );
    let batches: Vec<usize> = args
        .iter()
        .position(|a| a == "--batches")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|v| v.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1, 32, 256, 1024]);
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
    for (key, label, file) in models {
        if picked.is_empty() || picked.contains(&key) {
            encode(&gpu, label, file, &batches);
        }
    }
    if !args.iter().any(|a| a == "--no-gemm") {
        gemms(&gpu);
    }
}
