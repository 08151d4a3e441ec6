//! CPU encode throughput of the ViT-B/32-shaped towers with random weights: the image tower
//! at batch 1/8/32 and the text tower on class-prompt batches. `cargo bench --bench
//! cpu_encode`; benches/cpu_baselines.py measures PyTorch and ONNX Runtime on the same shapes,
//! and benches/compare_cpu.sh runs both, alternating, and tabulates them.
//!
//! Each figure is a line `RESULT fedclip <tower> <batch> <seq> <best/s> <median/s> <runs>`
//! (benches/compare_cpu_table.py reads it); the best run is the one least disturbed by other
//! processes on a shared machine. `-- --isa reference,avx2,avx512|all` runs each kernel family
//! named (labelled `fedclip[<isa>]`); default: the one `FEDCLIP_ISA` names or the widest this
//! CPU runs (labelled `fedclip`).

use fedclip::model::ClipModel;
use fedclip::model::cpu::{Isa, Kernels};
use fedclip::weights::write_random_clip;
use std::time::{Duration, Instant};

const IMAGE_BATCHES: [usize; 3] = [1, 8, 32];
/// (prompts, tokens): as benches/cpu_baselines.py.
const TEXT_SHAPES: [(usize, usize); 2] = [(7, 20), (64, 20)];

/// Best and median items/s of `run` after a warm-up: at least 6 runs, more within 6 s.
fn timed(items: usize, mut run: impl FnMut()) -> (f64, f64, usize) {
    run();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 6 || (start.elapsed() < Duration::from_secs(6) && times.len() < 64) {
        let t = Instant::now();
        run();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let n = items as f64;
    (n / times[0], n / times[times.len() / 2], times.len())
}

fn report(engine: &str, tower: &str, batch: usize, seq: usize, speed: (f64, f64, usize)) {
    let (best, median, runs) = speed;
    println!("RESULT {engine} {tower} {batch} {seq} {best:.3} {median:.3} {runs}");
}

/// The ISAs named after `--isa` (comma-separated, or `all`), each with its label; else the
/// default family, labelled plain `fedclip`.
fn chosen_isas() -> Vec<(Isa, String)> {
    let args: Vec<String> = std::env::args().collect();
    let Some(list) = (args.iter().position(|a| a == "--isa")).and_then(|i| args.get(i + 1)) else {
        let isa = Kernels::from_env().expect("FEDCLIP_ISA").isa;
        return vec![(isa, "fedclip".into())];
    };
    let isas: Vec<Isa> = match list.as_str() {
        "all" => Isa::ALL.into_iter().filter(|i| i.available()).collect(),
        _ => (list.split(','))
            .map(|name| Isa::parse_override(name).unwrap_or_else(|e| panic!("--isa: {e}")))
            .collect(),
    };
    (isas.into_iter())
        .map(|isa| (isa, format!("fedclip[{}]", isa.name())))
        .collect()
}

fn main() {
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/configs/clip-vit-base-patch32.json"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_random_clip(tmp.path(), &config, 1).unwrap();
    println!("# fedclip, {} threads", rayon::current_num_threads());
    for (isa, engine) in chosen_isas() {
        let model = ClipModel::load_with(tmp.path(), Kernels::for_isa(isa).unwrap()).unwrap();
        encode_both_towers(&model, &engine);
    }
}

fn encode_both_towers(model: &ClipModel, engine: &str) {
    let vision = model.vision.as_ref().unwrap();
    for batch in IMAGE_BATCHES {
        let pixels: Vec<f32> = (0..batch * vision.pixels_per_image())
            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let speed = timed(batch, || {
            std::hint::black_box(vision.forward(&pixels, batch, false));
        });
        report(engine, "image", batch, 0, speed);
    }
    let text = model.text.as_ref().unwrap();
    let c = &text.config;
    for (batch, seq) in TEXT_SHAPES {
        // Random tokens below the special ones, each row ended by the end token.
        let ids: Vec<u32> = (0..batch * seq)
            .map(|i| match i % seq == seq - 1 {
                true => c.eos_token_id,
                false => 1 + (i as u32 * 7919) % (c.vocab_size as u32 - 3),
            })
            .collect();
        let speed = timed(batch, || {
            std::hint::black_box(text.forward(&ids, batch, seq, false).unwrap());
        });
        report(engine, "text", batch, seq, speed);
    }
}
