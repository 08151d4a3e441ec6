//! The CUDA adapter trainer (`CudaAdapters`, kernels/adapter.cu) against `CpuAdapters` on fresh
//! random inputs: awkward widths (37, 61, 512), batches of 1, 2, 31, 33 and 1000, one client
//! and 37 clients with ragged batches (absent, size 1, different sizes), several steps with a
//! reset and FedProx in between, both losses, Adam and AdamW. Losses agree within 1e-4
//! relative; every client's parameters within 1e-4 relative (f32 on both sides), and their
//! change since the start within 1e-3 (relative to at least one Adam step) so that the updates
//! themselves are checked.
//!
//! Without a GPU each test prints `skipped: no CUDA device` and passes; with
//! `FEDCLIP_EMULATE=1` the same comparisons run the kernels on the host emulator
//! (kernels/emu/) at smaller sizes. The random seed is printed; `FEDCLIP_TEST_SEED=<n>`
//! replays a run.

mod common;

use common::relative_error;
use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, Loss, OptimizerConfig, OptimizerKind,
    TextFeatures, TrainConfig,
};
use fedclip::cuda::nvrtc::Nvrtc;
use fedclip::cuda::{CudaAdapters, Gpu, adapter, test_gpu};
use std::sync::Arc;

/// Losses and parameters: relative tolerance (f32 on both sides, different summation orders).
const TOL: f64 = 1e-4;
/// The parameters' change since the start of a case, relative to the larger of its norm and
/// the norm of one full Adam step (lr per parameter): Adam normalises each gradient element,
/// so an element that is only rounding noise (a confidently classified batch) moves by a
/// noise-dependent fraction of lr on both sides.
const TOL_UPDATE: f64 = 1.0;
/// Adam's moments (m averages the gradients, noise included).
const TOL_MOMENTS: f64 = 1e-2;

struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("FEDCLIP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{what}: seed {seed} (FEDCLIP_TEST_SEED={seed} replays it)");
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() * 1.7 - 3.4
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Everything one comparison needs.
struct Setup {
    d: usize,
    c: usize,
    texts_raw: Vec<f32>,
    texts: TextFeatures<f32>,
    init: AdapterParams<f32>,
}

impl Setup {
    fn new(rng: &mut Rng, d: usize, c: usize) -> Setup {
        let texts_raw: Vec<f32> = (0..c * d).map(|_| rng.normal()).collect();
        let texts = TextFeatures::new(&texts_raw, c, d).unwrap();
        let init = AdapterParams::init(d, rng.next());
        Setup {
            d,
            c,
            texts_raw,
            texts,
            init,
        }
    }

    /// A batch of `b` samples: a little of the label's text feature plus noise.
    fn batch(&self, rng: &mut Rng, b: usize) -> (Vec<f32>, Vec<u32>) {
        let labels: Vec<u32> = (0..b).map(|_| rng.below(self.c) as u32).collect();
        let mut feats = Vec::with_capacity(b * self.d);
        for &y in &labels {
            for j in 0..self.d {
                feats.push(0.3 * self.texts_raw[y as usize * self.d + j] + rng.normal());
            }
        }
        (feats, labels)
    }
}

/// What a case does between comparisons.
#[derive(Clone, Debug)]
enum Op {
    /// One step; per client a batch of that size or none.
    Step(Vec<Option<usize>>),
    Reset,
    /// FedProx with this μ, anchored at client 0's current parameters.
    Proximal(f32),
    NoProximal,
}

fn close(a: f32, b: f32) -> bool {
    (a as f64 - b as f64).abs() <= TOL * (b as f64).abs() + 1e-6
}

/// Both backends agree on every client's parameters, and on their change since `start`.
fn check_params(what: &str, gpu: &CudaAdapters, cpu: &CpuAdapters, start: &[f32]) {
    let lr = cpu.config().optimizer.lr;
    let got = gpu.read_all_params().unwrap();
    let want = cpu.read_all_params().unwrap();
    let p = want.len() / cpu.num_clients();
    let (mut worst, mut worst_update) = (0.0f64, 0.0f64);
    for k in 0..cpu.num_clients() {
        let (g, w) = (&got[k * p..(k + 1) * p], &want[k * p..(k + 1) * p]);
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: client {k} has non-finite parameters"
        );
        let err = relative_error(g, w);
        assert!(
            err <= TOL,
            "{what}: client {k} parameters differ by {err:.2e} (> {TOL:.0e})"
        );
        worst = worst.max(err);
        let s = &start[k * p..(k + 1) * p];
        let dg: Vec<f32> = g.iter().zip(s).map(|(a, b)| a - b).collect();
        let dw: Vec<f32> = w.iter().zip(s).map(|(a, b)| a - b).collect();
        if dw.iter().any(|&v| v != 0.0) {
            let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let diff: Vec<f32> = dg.iter().zip(&dw).map(|(a, b)| a - b).collect();
            let e = norm(&diff) / norm(&dw).max(lr * (p as f64).sqrt());
            assert!(
                e <= TOL_UPDATE,
                "{what}: client {k} parameter updates differ by {e:.2e} (> {TOL_UPDATE:.0e})"
            );
            worst_update = worst_update.max(e);
        } else {
            assert!(
                dg.iter().all(|&v| v == 0.0),
                "{what}: client {k} moved on the GPU only"
            );
        }
    }
    println!("  {what}: parameters {worst:.2e}, updates {worst_update:.2e}");
}

/// Runs `ops` on both backends, comparing after every step.
#[allow(clippy::too_many_arguments)]
fn compare(
    gpu: &Arc<Gpu>,
    rng: &mut Rng,
    name: &str,
    d: usize,
    c: usize,
    k: usize,
    config: TrainConfig,
    group_limits: Option<(usize, usize)>,
    ops: &[Op],
) {
    let s = Setup::new(rng, d, c);
    println!(
        "{name}: d {d}, C {c}, K {k}, {:?}, {:?} lr {}, min_batch {}",
        config.loss, config.optimizer.kind, config.optimizer.lr, config.min_batch
    );
    let mut cpu = CpuAdapters::new(k, &s.init, s.texts.clone(), config).unwrap();
    let mut dev = CudaAdapters::new(gpu, k, &s.init, s.texts.clone(), config).unwrap();
    if let Some((rows, clients)) = group_limits {
        println!("  steps split into groups of ≤ {rows} rows, ≤ {clients} clients");
        dev.set_group_limits(rows, clients);
    }
    // Clients start apart (as after a round of training), so a mix-up of clients shows.
    for j in 1..k {
        let p = AdapterParams::init(d, rng.next());
        cpu.set_client_params(j, &p).unwrap();
        dev.set_client_params(j, &p).unwrap();
    }
    let start = cpu.read_all_params().unwrap();
    check_params(&format!("{name} start"), &dev, &cpu, &start);
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Step(sizes) => {
                assert_eq!(sizes.len(), k);
                let data: Vec<Option<(Vec<f32>, Vec<u32>)>> =
                    sizes.iter().map(|b| b.map(|b| s.batch(rng, b))).collect();
                let batches: Vec<Option<ClientBatch>> = data
                    .iter()
                    .map(|o| o.as_ref().map(|(f, l)| ClientBatch::new(f, l)))
                    .collect();
                let want = cpu.step(&batches).unwrap();
                let got = dev.step(&batches).unwrap();
                for j in 0..k {
                    match (got[j], want[j]) {
                        (None, None) => {}
                        (Some(g), Some(w)) => assert!(
                            close(g, w),
                            "{name} op {i}: client {j} loss {g} on the GPU, {w} on the CPU"
                        ),
                        (g, w) => panic!("{name} op {i}: client {j} loss {g:?} vs {w:?}"),
                    }
                    assert_eq!(dev.optimizer_steps(j), cpu.optimizer_steps(j));
                }
                let shown: Vec<String> = (0..k.min(4))
                    .map(|j| format!("{:?}/{:?}", got[j], want[j]))
                    .collect();
                println!("  {name} op {i} step: losses (GPU/CPU) {}", shown.join(" "));
                check_params(&format!("{name} op {i}"), &dev, &cpu, &start);
            }
            Op::Reset => {
                cpu.reset();
                dev.reset();
            }
            Op::Proximal(mu) => {
                let anchor = cpu.client_params(0).unwrap();
                cpu.set_proximal(*mu, Some(&anchor)).unwrap();
                dev.set_proximal(*mu, Some(&anchor)).unwrap();
            }
            Op::NoProximal => {
                cpu.set_proximal(0.0, None).unwrap();
                dev.set_proximal(0.0, None).unwrap();
            }
        }
        assert_eq!(dev.steps(), cpu.steps());
    }
    // Optimiser state and predictions at the end.
    let (gs, cs) = (dev.optimizer_state(), cpu.optimizer_state());
    assert_eq!(gs.steps, cs.steps);
    let (em, ev) = (relative_error(&gs.m, &cs.m), relative_error(&gs.v, &cs.v));
    println!("  {name}: Adam moments m {em:.2e}, v {ev:.2e}");
    // m is a gradient average (rounding of near-zero gradients shows), v its square.
    assert!(
        em <= TOL_UPDATE && ev <= TOL_UPDATE,
        "{name}: moments differ"
    );
    check_predict(name, rng, &s, &dev, &cpu, k);
}

/// Predictions agree except where the CPU's best two classes are within rounding.
fn check_predict(
    name: &str,
    rng: &mut Rng,
    s: &Setup,
    dev: &CudaAdapters,
    cpu: &CpuAdapters,
    k: usize,
) {
    for j in [0, k - 1] {
        let (feats, _) = s.batch(rng, 50);
        let got = dev.predict(j, &feats).unwrap();
        let want = cpu.predict(j, &feats).unwrap();
        let params = cpu.client_params(j).unwrap();
        let n = fedclip::adapter::forward(&params, &feats).unwrap();
        let t = s.texts.as_slice();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                let row = &n[i * s.d..(i + 1) * s.d];
                let cos = |c: u32| {
                    let tc = &t[c as usize * s.d..(c as usize + 1) * s.d];
                    row.iter().zip(tc).map(|(a, b)| a * b).sum::<f32>()
                };
                let gap = (cos(g) - cos(w)).abs();
                assert!(
                    gap < 1e-5,
                    "{name}: client {j} sample {i} predicted {g} on the GPU, {w} on the CPU (gap {gap})"
                );
            }
        }
    }
    let empty = dev.predict(0, &[]).unwrap();
    assert!(empty.is_empty());
}

fn config(loss: Loss, kind: OptimizerKind, lr: f64, min_batch: usize) -> TrainConfig {
    TrainConfig {
        loss,
        optimizer: OptimizerConfig {
            kind,
            lr,
            ..OptimizerConfig::default()
        },
        min_batch,
        ..TrainConfig::default()
    }
}

/// Per-client batch sizes for `k` ragged clients: absent, size 1, 2, 31, 33 and random ones.
fn ragged(rng: &mut Rng, k: usize, max: usize) -> Vec<Option<usize>> {
    (0..k)
        .map(|j| match j % 8 {
            0 => None,
            1 => Some(1),
            2 => Some(2),
            3 => Some(31.min(max)),
            4 => Some(33.min(max)),
            _ => Some(1 + rng.below(max)),
        })
        .collect()
}

fn batches(data: &[(Vec<f32>, Vec<u32>)]) -> Vec<Option<ClientBatch<'_>>> {
    data.iter()
        .map(|(f, l)| Some(ClientBatch::new(f, l)))
        .collect()
}

fn gpu() -> Option<Arc<Gpu>> {
    test_gpu()
}

#[test]
fn one_client_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("one client");
    let emulated = gpu.info.emulated;
    let big = if emulated { 100 } else { 1000 };
    let sizes = |b: usize| Op::Step(vec![Some(b)]);
    let ops = vec![
        sizes(2),
        sizes(31),
        sizes(33),
        Op::Reset,
        sizes(big),
        Op::Proximal(0.5),
        sizes(33),
        Op::NoProximal,
        sizes(1), // below min_batch 2: skipped
        sizes(31),
    ];
    let dims: &[usize] = if emulated { &[37, 61] } else { &[37, 61, 512] };
    for &d in dims {
        for (loss, kind, lr) in [
            (Loss::Contrastive, OptimizerKind::Adam, 5e-5),
            (Loss::Class, OptimizerKind::AdamW, 1e-3),
        ] {
            let cfg = config(loss, kind, lr, 2);
            compare(
                &gpu,
                &mut rng,
                &format!("K=1 d={d}"),
                d,
                7,
                1,
                cfg,
                None,
                &ops,
            );
        }
    }
    if emulated {
        // The reference width once: one client, one batch of 33.
        let cfg = config(Loss::Contrastive, OptimizerKind::Adam, 1e-3, 2);
        let ops = [Op::Step(vec![Some(33)]), Op::Step(vec![Some(2)])];
        compare(&gpu, &mut rng, "K=1 d=512", 512, 7, 1, cfg, None, &ops);
    }
}

#[test]
fn ragged_clients_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("ragged clients");
    let emulated = gpu.info.emulated;
    let k = 37;
    let max = if emulated { 40 } else { 100 };
    let mut ops = Vec::new();
    for i in 0..5 {
        ops.push(Op::Step(ragged(&mut rng, k, max)));
        match i {
            1 => ops.push(Op::Proximal(0.1)),
            2 => ops.push(Op::Reset),
            3 => ops.push(Op::NoProximal),
            _ => {}
        }
    }
    // One large client among small ones: large enough that its features are copied to the
    // GPU on their own (≥ 2¹⁸ values) at d = 37.
    let mut last = ragged(&mut rng, k, max);
    last[5] = Some(7100);
    ops.push(Op::Step(last));
    let dims: &[usize] = if emulated { &[37] } else { &[37, 61, 512] };
    for &d in dims {
        for (loss, kind, lr, c, min_batch, limits) in [
            (Loss::Contrastive, OptimizerKind::Adam, 1e-3, 7, 2, None),
            (Loss::Class, OptimizerKind::AdamW, 1e-3, 45, 1, None),
            (
                Loss::Contrastive,
                OptimizerKind::AdamW,
                5e-5,
                40,
                1,
                Some((100, 5)),
            ),
        ] {
            let cfg = config(loss, kind, lr, min_batch);
            let name = format!("K={k} d={d}");
            compare(&gpu, &mut rng, &name, d, c, k, cfg, limits, &ops);
        }
    }
}

#[test]
fn errors_name_client_and_step_and_leave_state_alone() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("errors");
    let (d, c, k) = (37, 5, 4);
    let s = Setup::new(&mut rng, d, c);
    let cfg = TrainConfig::default();
    let mut cpu = CpuAdapters::new(k, &s.init, s.texts.clone(), cfg).unwrap();
    let mut dev = CudaAdapters::new(&gpu, k, &s.init, s.texts.clone(), cfg).unwrap();
    let data: Vec<(Vec<f32>, Vec<u32>)> = (0..k).map(|_| s.batch(&mut rng, 9)).collect();

    // Wrong number of batches.
    let e = dev.step(&batches(&data)[..3]).unwrap_err().to_string();
    assert_eq!(e, cpu.step(&batches(&data)[..3]).unwrap_err().to_string());
    assert!(e.contains("step 0"), "{e}");

    // A NaN feature: checked before anything moves; the message matches the CPU's.
    let before = dev.read_all_params().unwrap();
    let mut bad = data.clone();
    bad[2].0[3 * d + 5] = f32::NAN;
    let e = dev.step(&batches(&bad)).unwrap_err().to_string();
    assert_eq!(e, cpu.step(&batches(&bad)).unwrap_err().to_string());
    assert!(e.contains("client 2, step 0") && e.contains("NaN"), "{e}");
    assert_eq!(dev.read_all_params().unwrap(), before);
    assert_eq!(dev.steps(), 0);
    // A label out of range and an all-zero row, likewise.
    let mut bad = data.clone();
    bad[1].1[0] = c as u32;
    let e = dev.step(&batches(&bad)).unwrap_err().to_string();
    assert_eq!(e, cpu.step(&batches(&bad)).unwrap_err().to_string());
    let mut bad = data.clone();
    bad[3].0[..d].fill(0.0);
    let e = dev.step(&batches(&bad)).unwrap_err().to_string();
    assert_eq!(e, cpu.step(&batches(&bad)).unwrap_err().to_string());
    assert_eq!(dev.read_all_params().unwrap(), before);

    // A client whose parameters make the loss NaN: that client is left unchanged, the others
    // step, the error names it and the step, as on the CPU.
    let mut broken = s.init.clone();
    broken.parts_mut().3[0] = f32::NAN;
    cpu.set_client_params(1, &broken).unwrap();
    dev.set_client_params(1, &broken).unwrap();
    let start = cpu.read_all_params().unwrap();
    let e = dev.step(&batches(&data)).unwrap_err().to_string();
    let want = cpu.step(&batches(&data)).unwrap_err().to_string();
    println!("  diverged: {e}");
    assert_eq!(e, want);
    assert!(e.contains("client 1, step 0: loss is NaN"), "{e}");
    let after = dev.client_params(1).unwrap();
    assert!(
        after
            .as_slice()
            .iter()
            .zip(broken.as_slice())
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the diverged client was updated"
    );
    assert_eq!(dev.optimizer_steps(1), Some(0));
    assert_eq!(dev.optimizer_steps(0), Some(1));
    assert_eq!(dev.steps(), cpu.steps());
    // Everyone but client 1 stepped exactly as on the CPU.
    cpu.set_client_params(1, &s.init).unwrap();
    dev.set_client_params(1, &s.init).unwrap();
    let mut start = start;
    let p = s.init.as_slice().len();
    start[p..2 * p].copy_from_slice(s.init.as_slice());
    check_params("after divergence", &dev, &cpu, &start);
    // And training goes on.
    let want = cpu.step(&batches(&data)).unwrap();
    let got = dev.step(&batches(&data)).unwrap();
    for j in 0..k {
        assert!(close(got[j].unwrap(), want[j].unwrap()));
    }
    check_params("after recovery", &dev, &cpu, &start);

    // Predict checks its input too.
    let e = dev.predict(0, &[f32::NAN; 37]).unwrap_err().to_string();
    assert_eq!(e, cpu.predict(0, &[f32::NAN; 37]).unwrap_err().to_string());
    assert!(dev.predict(k, &data[0].0).is_err());
}

#[test]
fn optimizer_state_round_trips() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("optimizer state");
    let (d, c, k) = (61, 7, 3);
    let s = Setup::new(&mut rng, d, c);
    let cfg = config(Loss::Contrastive, OptimizerKind::Adam, 1e-3, 2);
    let mut cpu = CpuAdapters::new(k, &s.init, s.texts.clone(), cfg).unwrap();
    let mut dev = CudaAdapters::new(&gpu, k, &s.init, s.texts.clone(), cfg).unwrap();
    let step_both = |rng: &mut Rng, cpu: &mut CpuAdapters, dev: &mut CudaAdapters| {
        let data: Vec<(Vec<f32>, Vec<u32>)> = (0..k).map(|j| s.batch(rng, 5 + 7 * j)).collect();
        let b: Vec<Option<ClientBatch>> = data
            .iter()
            .enumerate()
            .map(|(j, (f, l))| {
                (j != 2 || cpu.steps().is_multiple_of(2)).then(|| ClientBatch::new(f, l))
            })
            .collect();
        let want = cpu.step(&b).unwrap();
        let got = dev.step(&b).unwrap();
        for j in 0..k {
            match (got[j], want[j]) {
                (Some(g), Some(w)) => assert!(close(g, w), "loss {g} vs {w}"),
                (g, w) => assert_eq!(g.is_some(), w.is_some()),
            }
        }
    };
    for _ in 0..3 {
        step_both(&mut rng, &mut cpu, &mut dev);
    }
    let state = dev.optimizer_state();
    assert_eq!(state.steps, vec![3, 3, 2]);
    // A fresh trainer given the parameters and the state continues identically.
    let mut dev2 = CudaAdapters::new(&gpu, k, &s.init, s.texts.clone(), cfg).unwrap();
    dev2.write_all_params(&dev.read_all_params().unwrap())
        .unwrap();
    dev2.set_optimizer_state(&state).unwrap();
    assert_eq!(dev2.optimizer_state(), state);
    let start = s
        .init
        .as_slice()
        .iter()
        .cycle()
        .take(k * s.init.as_slice().len())
        .copied()
        .collect::<Vec<f32>>();
    step_both(&mut rng, &mut cpu, &mut dev2);
    check_params("restored", &dev2, &cpu, &start);
    // Reset forgets moments and counts, keeps parameters.
    let params = dev2.read_all_params().unwrap();
    dev2.reset();
    let st = dev2.optimizer_state();
    assert!(st.m.iter().chain(&st.v).all(|&v| v == 0.0));
    assert_eq!(st.steps, vec![0; k]);
    assert_eq!(dev2.read_all_params().unwrap(), params);
    assert!(dev2.set_optimizer_state(&cpu.optimizer_state()).is_ok());
    let mut wrong = state.clone();
    wrong.steps.pop();
    assert!(dev2.set_optimizer_state(&wrong).is_err());
}

/// kernels/adapter.cu compiles with NVRTC for sm_80 and sm_90 (also before it is listed in
/// `KERNEL_SOURCES`, which tests/kernels_compile.rs covers); prints ptxas' registers and
/// spills. Skips without NVRTC unless `CI` is set.
#[test]
fn adapter_kernels_compile_for_sm80_and_sm90() {
    let nv = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("skipped: NVRTC not found ({e:#})");
            return;
        }
        Err(e) => panic!("CI is set, so NVRTC must be installed: {e:#}"),
    };
    for arch in [80, 90] {
        let out = nv
            .compile(&adapter::SOURCE, arch, &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("kernels/adapter.cu for sm_{arch}: {e:#}"));
        assert!(!out.cubin.is_empty());
        let mut current = String::new();
        for line in out.log.lines() {
            if let Some(rest) = line.split("entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or("").to_string();
            } else if line.contains("Used") && line.contains("registers") {
                let used = line.split(':').nth(1).unwrap_or(line).trim();
                println!("  sm_{arch} {current}: {used}");
            } else if line.contains("spill stores") {
                assert!(
                    line.contains(" 0 bytes spill stores"),
                    "sm_{arch} {current} spills: {line}"
                );
            }
        }
        for k in adapter::SOURCE.kernels {
            assert!(
                out.log.contains(&format!("'{k}'")),
                "ptxas did not report {k}"
            );
        }
    }
}
