//! CUDA training throughput of the FedCLIP adapter (`CudaAdapters`; d = 512, C = 7,
//! contrastive loss, the reference Adam): samples/s for one client at batch 32 and 4096, and
//! client-steps/s for K = 1000 clients × batch 32 stepped together. Each time is a whole
//! `AdapterBackend::step` from host features (upload, launches, the losses back); the split
//! between upload and device work is printed beside it.
//!
//! `cargo bench --bench gpu_adapter`; prints `skipped: no CUDA device` without one (the host
//! emulator is not used: it is far too slow to time). `benches/adapter_cpu.rs` is the CPU
//! side, `benches/torch_gpu_adapter.py` the same step in PyTorch on the GPU. Arguments (after
//! `--`): `one` and/or `many` to run only those cases, `--clients N` for the many-client case.

use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, TextFeatures, TrainConfig,
};
use fedclip::cuda::{CudaAdapters, Gpu, StepProfile, availability};
use std::sync::Arc;
use std::time::{Duration, Instant};

const D: usize = 512;
const C: usize = 7;

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() * 1.7 - 3.4
    }
}

/// As benches/adapter_cpu.rs: labels cycling through the classes, features a little of the
/// label's text feature plus noise.
fn batch(rng: &mut Rng, texts: &[f32], b: usize) -> (Vec<f32>, Vec<u32>) {
    let labels: Vec<u32> = (0..b).map(|i| (i % C) as u32).collect();
    let feats = labels
        .iter()
        .flat_map(|&y| {
            (0..D)
                .map(|j| 0.3 * texts[y as usize * D + j] + rng.normal())
                .collect::<Vec<_>>()
        })
        .collect();
    (feats, labels)
}

/// Median wall time of `reps` steps after two warm-up steps, and the median step's profile.
fn time(
    reps: usize,
    adapters: &mut CudaAdapters,
    batches: &[Option<ClientBatch>],
) -> (f64, StepProfile) {
    for _ in 0..2 {
        adapters.step(batches).unwrap();
    }
    let mut runs: Vec<(f64, StepProfile)> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            adapters.step(batches).unwrap();
            (t.elapsed().as_secs_f64(), adapters.last_step_profile())
        })
        .collect();
    runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    runs[runs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases: Vec<&String> = args
        .iter()
        .filter(|a| *a == "one" || *a == "many")
        .collect();
    let run = |case: &str| cases.is_empty() || cases.iter().any(|a| *a == case);
    let clients: usize = args
        .iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .map_or(1000, |s| s.parse().expect("--clients N"));
    match availability() {
        Ok(()) => {}
        Err(why) if why.starts_with("no CUDA device") => {
            println!("skipped: no CUDA device");
            return;
        }
        Err(why) => panic!("CUDA driver present but unusable: {why}"),
    }
    let gpu: Arc<Gpu> = Gpu::open().expect("CUDA device present but unusable");
    println!(
        "device: {} (sm_{}{}, {} SMs), NVRTC {}",
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        gpu.info.sm_count,
        gpu.info.nvrtc
    );
    let mut rng = Rng(42);
    let texts_raw: Vec<f32> = (0..C * D).map(|_| rng.normal()).collect();
    let texts = TextFeatures::new(&texts_raw, C, D).unwrap();
    let init = AdapterParams::init(D, 0);
    let config = TrainConfig::default();

    for b in [32usize, 4096].into_iter().filter(|_| run("one")) {
        let (f, l) = batch(&mut rng, &texts_raw, b);
        let batches = [Some(ClientBatch::new(&f, &l))];
        let mut one = CudaAdapters::new(&gpu, 1, &init, texts.clone(), config).unwrap();
        // A sanity check on the device: the first step against the CPU trainer.
        let mut cpu = CpuAdapters::new(1, &init, texts.clone(), config).unwrap();
        let (want, got) = (
            cpu.step(&batches).unwrap()[0].unwrap(),
            one.step(&batches).unwrap()[0].unwrap(),
        );
        assert!(
            (got - want).abs() <= 1e-4 * want.abs() + 1e-6,
            "loss {got} on the GPU, {want} on the CPU"
        );
        let reps = if b <= 32 { 200 } else { 50 };
        let (t, prof) = time(reps, &mut one, &batches);
        println!(
            "fedclip cuda adapter, 1 client, batch {b:>4}: {:>10.0} samples/s ({:.3} ms/step: \
             upload {:.3}, device {:.3}; {} launches; median of {reps})",
            b as f64 / t,
            t * 1e3,
            ms(prof.upload),
            ms(prof.device),
            prof.launches
        );
    }

    if !run("many") {
        return;
    }
    let b = 32;
    let data: Vec<(Vec<f32>, Vec<u32>)> = (0..clients)
        .map(|_| batch(&mut rng, &texts_raw, b))
        .collect();
    let batches: Vec<Option<ClientBatch>> = data
        .iter()
        .map(|(f, l)| Some(ClientBatch::new(f, l)))
        .collect();
    let mut many = CudaAdapters::new(&gpu, clients, &init, texts, config).unwrap();
    let reps = 20;
    let (t, prof) = time(reps, &mut many, &batches);
    println!(
        "fedclip cuda adapter, {clients} clients × batch {b}: {:.0} client-steps/s ({:.0} \
         samples/s, {:.2} ms/step: upload {:.2}, device {:.2}; {} launches in {} group(s); \
         median of {reps})",
        clients as f64 / t,
        (clients * b) as f64 / t,
        t * 1e3,
        ms(prof.upload),
        ms(prof.device),
        prof.launches,
        prof.groups
    );
}
