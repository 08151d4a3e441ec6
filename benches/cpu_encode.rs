//! CPU encode throughput of the ViT-B/32-shaped towers with random weights: the image tower
//! at batch 1/8/32 and the text tower on class-prompt batches. `cargo bench --bench
//! cpu_encode`; benches/cpu_baselines.py measures PyTorch and ONNX Runtime on the same shapes,
//! and benches/compare_cpu.sh runs both, alternating, and tabulates them.
//!
//! Each figure is a line `RESULT fedclip <tower> <batch> <seq> <best/s> <median/s> <runs>`
//! (benches/compare_cpu_table.py reads it); the best run is the one least disturbed by other
//! processes on a shared machine.

use fedclip::model::ClipModel;
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

fn report(tower: &str, batch: usize, seq: usize, (best, median, runs): (f64, f64, usize)) {
    println!("RESULT fedclip {tower} {batch} {seq} {best:.3} {median:.3} {runs}");
}

fn main() {
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/configs/clip-vit-base-patch32.json"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_random_clip(tmp.path(), &config, 1).unwrap();
    let model = ClipModel::load(tmp.path()).unwrap();
    println!(
        "# fedclip, {} threads, FEDCLIP_ISA={}",
        rayon::current_num_threads(),
        std::env::var("FEDCLIP_ISA").unwrap_or_else(|_| "(auto)".into())
    );
    let vision = model.vision.as_ref().unwrap();
    for batch in IMAGE_BATCHES {
        let pixels: Vec<f32> = (0..batch * vision.pixels_per_image())
            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let speed = timed(batch, || {
            std::hint::black_box(vision.forward(&pixels, batch, false));
        });
        report("image", batch, 0, speed);
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
        report("text", batch, seq, speed);
    }
}
