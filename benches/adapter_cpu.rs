//! CPU training throughput of the FedCLIP adapter (d = 512, C = 7, contrastive loss, the
//! reference Adam): samples/s for one client at batch 32 and 4096, and client-steps/s for
//! K = 1000 clients × batch 32 stepped together.
//! `cargo bench --bench adapter_cpu`; `benches/torch_adapter.py` times PyTorch (eager, CPU)
//! on the same step for one client. `-- one` or `-- many` runs only those cases.

use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, TextFeatures, TrainConfig,
};
use std::time::Instant;

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

/// CPU seconds (user + system, all threads) this process has used; `None` off Linux.
/// Printed beside wall time because the bench machine may be shared.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Median seconds per call of `f` over `reps` calls after one warm-up, and the mean CPU
/// seconds per call.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    f();
    let cpu0 = cpu_seconds();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| (b - a) / reps as f64);
    if std::env::var_os("ADAPTER_BENCH_VERBOSE").is_some() {
        eprintln!("step times (s): {times:.4?}");
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], cpu)
}

fn cpu_note(cpu: Option<f64>, wall: f64) -> String {
    cpu.map(|c| format!(", {:.2} CPUs busy", c / wall))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |case: &str| args.is_empty() || args.iter().any(|a| a == case);
    let threads = rayon::current_num_threads();
    let mut rng = Rng(42);
    let texts_raw: Vec<f32> = (0..C * D).map(|_| rng.normal()).collect();
    let texts = TextFeatures::new(&texts_raw, C, D).unwrap();
    let init = AdapterParams::init(D, 0);
    let config = TrainConfig::default();

    for b in [32usize, 4096].into_iter().filter(|_| run("one")) {
        let (f, l) = batch(&mut rng, &texts_raw, b);
        let mut one = CpuAdapters::new(1, &init, texts.clone(), config).unwrap();
        let reps = if b <= 32 { 200 } else { 10 };
        let (t, cpu) = time(reps, || {
            one.step(&[Some(ClientBatch::new(&f, &l))]).unwrap();
        });
        println!(
            "fedclip cpu adapter, 1 client, batch {b:>4}: {:>9.0} samples/s ({:.2} ms/step, \
             median of {reps}, {threads} threads{})",
            b as f64 / t,
            t * 1e3,
            cpu_note(cpu, t)
        );
    }

    if !run("many") {
        return;
    }
    let k = 1000;
    let b = 32;
    let data: Vec<(Vec<f32>, Vec<u32>)> = (0..k).map(|_| batch(&mut rng, &texts_raw, b)).collect();
    let batches: Vec<Option<ClientBatch>> = data
        .iter()
        .map(|(f, l)| Some(ClientBatch::new(f, l)))
        .collect();
    let mut many = CpuAdapters::new(k, &init, texts, config).unwrap();
    let reps = 5;
    let (t, cpu) = time(reps, || {
        many.step(&batches).unwrap();
    });
    println!(
        "fedclip cpu adapter, {k} clients × batch {b}: {:.0} client-steps/s ({:.0} samples/s, \
         {:.2} s/step, median of {reps}, {threads} threads{})",
        k as f64 / t,
        (k * b) as f64 / t,
        t,
        cpu_note(cpu, t)
    );
}
