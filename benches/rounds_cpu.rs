//! Time per federated round on the CPU, at K = 3 and K = 1,000 clients, for every method that
//! has rounds (`benches/torch_rounds.py` times PyTorch on the fedclip and clip-adapter rounds).
//!
//! One round is what `fedclip run` computes per round on cached features: every client starts
//! from the global parameters with a fresh optimiser, one local epoch over its 64 training
//! samples (two steps of batch 32), a uniform FedAvg, then every client's train, val and test
//! split (64 + 16 + 16 samples) evaluated with the new global parameters. Features are
//! synthetic (d = 512, C = 7, a class signal plus noise). fedclip trains the attention adapter
//! with the reference's contrastive loss and Adam(5e-5, wd 0.2); clip-adapter its bottleneck
//! (α = 0.2) with cross-entropy and the same Adam, on the `HeadTrainer` its run uses. The checkpoint a run writes after
//! each round is file I/O and not included (at K = 1,000 its state file is K × P × 4 bytes).
//!
//! `cargo bench --bench rounds_cpu [-- METHOD ...] [K ...]` (default: every method, K = 3 and
//! 1000).

use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, TextFeatures, TrainConfig,
};
use fedclip::federated::aggregate::weighted_mean;
use fedclip::federated::checkpoint::State;
use fedclip::federated::config::Aggregate;
use fedclip::federated::evaluate::Evaluation;
use fedclip::federated::features::{ClientData, SplitData};
use fedclip::federated::strategy::{Family, FedAvg, Local, Strategy, Zeroshot};
use fedclip::heads::{
    AttentionClassifier, Classifier, ClipAdapter, HeadClassifier, HeadTrainer, LinearProbe,
    TipCache, tip_cache_row,
};
use std::time::Instant;

const D: usize = 512;
const C: usize = 7;
const TRAIN: usize = 64;
const EVAL: usize = 16;
const BATCH: usize = 32;
/// The methods timed; fedprox is fedclip with the proximal term (μ = 0.01) towards the
/// round's global adapter; tip-adapter-f fine-tunes each client's own cache of its 64
/// training samples (α = 1, β = 5.5); tip-adapter (training-free) and zeroshot only evaluate.
const METHODS: [&str; 8] = [
    "fedclip",
    "fedprox",
    "local",
    "zeroshot",
    "clip-adapter",
    "linear-probe",
    "tip-adapter",
    "tip-adapter-f",
];

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

/// `n` samples with labels cycling over the classes: 0.3 × the class's text feature + noise.
fn samples(rng: &mut Rng, texts: &[f32], n: usize) -> SplitData {
    let labels: Vec<u32> = (0..n).map(|i| (i % C) as u32).collect();
    let mut features = Vec::with_capacity(n * D);
    for &y in &labels {
        for j in 0..D {
            features.push(0.3 * texts[y as usize * D + j] + rng.normal());
        }
    }
    SplitData {
        features,
        labels,
        views: Vec::new(),
    }
}

/// Seconds of each phase of one round.
#[derive(Default, Clone, Copy)]
struct RoundTimes {
    train: f64,
    aggregate: f64,
    evaluate: f64,
}

impl RoundTimes {
    fn total(&self) -> f64 {
        self.train + self.aggregate + self.evaluate
    }
}

fn round(
    method: &str,
    backend: &mut dyn AdapterBackend,
    classifier: &dyn Classifier,
    global: &mut Vec<f32>,
    clients: &[ClientData],
) -> (RoundTimes, f64) {
    let k = clients.len();
    let p = backend.param_count();
    // local and the Tip-Adapters: each client keeps its own row and deploys it; no
    // aggregation. zeroshot and tip-adapter (training-free): evaluation only.
    let own = matches!(
        method,
        "local" | "zeroshot" | "tip-adapter" | "tip-adapter-f"
    );
    let steps = if matches!(method, "zeroshot" | "tip-adapter") {
        0
    } else {
        TRAIN.div_ceil(BATCH)
    };
    let t0 = Instant::now();
    if !own {
        for s in 0..k {
            backend.set_client_row(s, global).unwrap();
        }
    }
    if steps > 0 {
        backend.reset();
    }
    if method == "fedprox" {
        backend.set_proximal_row(0.01, Some(global)).unwrap();
    }
    for step in 0..steps {
        let rows = step * BATCH..((step + 1) * BATCH).min(TRAIN);
        let batches: Vec<Option<ClientBatch>> = clients
            .iter()
            .map(|c| {
                let f = &c.train.features[rows.start * D..rows.end * D];
                Some(ClientBatch::new(f, &c.train.labels[rows.clone()]))
            })
            .collect();
        backend.step(&batches).unwrap();
    }
    // zeroshot deploys no parameters, and its run holds none.
    let params = if method == "zeroshot" {
        Vec::new()
    } else {
        backend.read_all_params().unwrap()
    };
    let t1 = Instant::now();
    if !own {
        let slots: Vec<usize> = (0..k).collect();
        *global = weighted_mean(&params, p, &slots, &vec![1.0; k]);
    }
    let t2 = Instant::now();
    // fedclip run's evaluation: every client × split with what its strategy deploys.
    let state = State {
        rounds_done: 0,
        global: global.clone(),
        clients: params,
        best: None,
        seconds_training: 0.0,
        bytes: Default::default(),
        bytes_per_round: None,
        optimizer: None,
        server: Vec::new(),
    };
    let trainees: Vec<usize> = (0..k).collect();
    let evaluation = Evaluation {
        clients,
        trainees: &trainees,
        classifier,
    };
    let strategy: Box<dyn Strategy> = match method {
        "zeroshot" => Box::new(Zeroshot),
        _ if own => Box::new(Local::of(Family::Attention)),
        _ => Box::new(FedAvg::new(Aggregate::Uniform, None)),
    };
    let (_, mean_val) = evaluation
        .round(0, &*strategy, &state, &vec![Vec::new(); k])
        .unwrap();
    let t3 = Instant::now();
    let times = RoundTimes {
        train: (t1 - t0).as_secs_f64(),
        aggregate: (t2 - t1).as_secs_f64(),
        evaluate: (t3 - t2).as_secs_f64(),
    };
    (times, mean_val)
}

fn median_by_total(mut v: Vec<RoundTimes>) -> RoundTimes {
    v.sort_by(|a, b| a.total().partial_cmp(&b.total()).unwrap());
    v[v.len() / 2]
}

/// The trainer, classifier and round-0 parameters of `method` for `k` clients.
fn setup(
    method: &str,
    clients: &[ClientData],
    texts: &TextFeatures<f32>,
) -> (Box<dyn AdapterBackend>, Box<dyn Classifier>, Vec<f32>) {
    let config = TrainConfig::default();
    let k = clients.len();
    match method {
        "fedclip" | "fedprox" | "local" | "zeroshot" => {
            let init = AdapterParams::init(D, 0);
            let backend = CpuAdapters::new(k, &init, texts.clone(), config).unwrap();
            let classifier = AttentionClassifier {
                dim: D,
                texts: texts.clone(),
            };
            (
                Box::new(backend),
                Box::new(classifier),
                init.as_slice().to_vec(),
            )
        }
        "clip-adapter" => {
            let init = ClipAdapter::<f32>::init(D, 0);
            let head = ClipAdapter::new(texts.clone(), config.logit_scale, 0.2);
            let backend =
                HeadTrainer::new(head.clone(), init.repeat(k), config.optimizer, 1).unwrap();
            let classifier = HeadClassifier {
                head,
                texts: texts.clone(),
            };
            (Box::new(backend), Box::new(classifier), init)
        }
        "linear-probe" => {
            let init = LinearProbe::init(texts, config.logit_scale);
            let head = LinearProbe::new(D, C);
            let backend =
                HeadTrainer::new(head.clone(), init.repeat(k), config.optimizer, 1).unwrap();
            let classifier = HeadClassifier {
                head,
                texts: texts.clone(),
            };
            (Box::new(backend), Box::new(classifier), init)
        }
        "tip-adapter" | "tip-adapter-f" => {
            let rows: Vec<f32> = (clients.iter())
                .flat_map(|c| tip_cache_row(&c.train.features, &c.train.labels, D, C, TRAIN))
                .collect();
            let head = TipCache::new(
                texts.clone(),
                config.logit_scale,
                1.0,
                5.5,
                TRAIN,
                method == "tip-adapter-f",
            );
            let backend = HeadTrainer::new(head.clone(), rows, config.optimizer, 1).unwrap();
            let classifier = HeadClassifier {
                head,
                texts: texts.clone(),
            };
            (Box::new(backend), Box::new(classifier), Vec::new())
        }
        other => panic!("unknown method {other} ({})", METHODS.join(", ")),
    }
}

fn bench(method: &str, k: usize, rng: &mut Rng, texts_raw: &[f32]) {
    let texts = TextFeatures::new(texts_raw, C, D).unwrap();
    let clients: Vec<ClientData> = (0..k)
        .map(|i| ClientData {
            name: format!("client{i}"),
            held_out: false,
            train: samples(rng, texts_raw, TRAIN),
            val: samples(rng, texts_raw, EVAL),
            test: samples(rng, texts_raw, EVAL),
        })
        .collect();
    let (mut backend, classifier, mut global) = setup(method, &clients, &texts);
    let reps = if k <= 10 { 30 } else { 5 };
    round(method, &mut *backend, &*classifier, &mut global, &clients); // warm-up
    let mut acc = 0.0;
    let times: Vec<RoundTimes> = (0..reps)
        .map(|_| {
            let (t, a) = round(method, &mut *backend, &*classifier, &mut global, &clients);
            acc = a;
            t
        })
        .collect();
    let m = median_by_total(times);
    println!(
        "fedclip rounds cpu, method {method}, K={k}: {:.4} s/round (train {:.4}, aggregate \
         {:.4}, evaluate {:.4}; median of {reps}, {} threads; mean val accuracy after {} rounds {:.3})",
        m.total(),
        m.train,
        m.aggregate,
        m.evaluate,
        rayon::current_num_threads(),
        reps + 1,
        acc
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ks: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ks = if ks.is_empty() { vec![3, 1000] } else { ks };
    let named: Vec<&str> = (METHODS.iter().copied())
        .filter(|m| args.iter().any(|a| a == m))
        .collect();
    let methods = if named.is_empty() {
        METHODS.to_vec()
    } else {
        named
    };
    let mut rng = Rng(7);
    let texts_raw: Vec<f32> = (0..C * D).map(|_| rng.normal()).collect();
    for k in ks {
        for method in &methods {
            bench(method, k, &mut rng, &texts_raw);
        }
    }
}
