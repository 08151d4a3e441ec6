//! The whole image and text towers on the CUDA engine against the CPU engine (itself proven
//! equal to transformers): the tiny fixture models (odd head dims, GELU, BF16 shards, the
//! bundled tiny-clip) and ViT-B/32 with random weights; on a GPU also B/16, L/14 and
//! L/14-336 image towers.
//!
//! The GPU keeps the residual stream in f32 but rounds GEMM and attention inputs to fp16, so
//! it is compared with a tolerance: relative error of the projected embeddings and pooled
//! features ≤ TOWER_TOL. Each layer's error is printed, so a failure shows where it starts.
//!
//! Without a GPU: `skipped: no CUDA device` (or the host emulator with `FEDCLIP_EMULATE=1`,
//! tiny models only: it is slow).

mod common;

use common::{relative_error, repo};
use fedclip::cuda::{CudaClip, Gpu, TowerOutput, test_gpu};
use fedclip::model::ClipModel;
use fedclip::weights::write_random_clip;
use std::path::Path;
use std::sync::Arc;

/// fp16 GEMM inputs against the f32 CPU engine, through up to 24 blocks. Error model: each
/// GEMM rounds both operands to fp16 (independent relative errors of RMS u16/√3 each,
/// u16 = 2⁻¹¹), so its output is off by ≈ √(2/3)·u16 = 4e-4 RMS relative, the attention's
/// probabilities by as much again; the residual stream stays f32 and each block adds only its
/// update, a fraction of the stream, so the blocks' errors add in RMS, and the final
/// LayerNorm and projection (one more GEMM) keep the relative size: ≈ 1e-3 expected at most,
/// and 2e-3 = 4 u16 leaves a factor two. Each layer's error is printed, so every run shows
/// the margin (a GPU run has yet to confirm it at L/14).
const TOWER_TOL: f64 = 2e-3;

struct Rng(u64);

impl Rng {
    /// `FEDCLIP_TEST_SEED` when set, else a fresh seed; printed either way.
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
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn compare(
    what: &str,
    gpu: &TowerOutput,
    cpu_pooled: &[f32],
    cpu_embeds: &[f32],
    cpu_states: &[Vec<f32>],
) {
    for (i, (g, c)) in gpu.hidden_states.iter().zip(cpu_states).enumerate() {
        println!(
            "  {what}: hidden state {i}: relative error {:.2e}",
            relative_error(g, c)
        );
    }
    assert_eq!(
        gpu.hidden_states.len(),
        cpu_states.len(),
        "{what}: traced layers"
    );
    for (name, g, c) in [
        ("pooled", &gpu.pooled, cpu_pooled),
        ("embeds", &gpu.embeds, cpu_embeds),
    ] {
        assert_eq!(g.len(), c.len(), "{what} {name}: length");
        assert!(g.iter().all(|v| v.is_finite()), "{what} {name}: non-finite");
        let e = relative_error(g, c);
        println!("  {what}: {name} relative error {e:.2e}");
        assert!(
            e <= TOWER_TOL,
            "{what} {name}: relative error {e:.2e} > {TOWER_TOL:.0e}"
        );
    }
}

/// Random normalised pixels for `batch` images.
fn pixels(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit() * 2.0).collect()
}

/// `batch` random prompts of `seq` ids ending (at random lengths) in the end token, padded.
fn prompts(rng: &mut Rng, model: &ClipModel, batch: usize, seq: usize) -> Vec<u32> {
    let c = &model.config.text.as_ref().unwrap();
    // With legacy eos_token_id 2 the end token is the highest id; else eos_token_id itself.
    let eos = if c.pools_at_argmax() {
        c.vocab_size as u32 - 1
    } else {
        c.eos_token_id
    };
    let mut ids = Vec::new();
    for _ in 0..batch {
        let len = 2 + (rng.next() % (seq as u64 - 1)) as usize; // 2..=seq
        for i in 0..seq {
            let id = if i + 1 < len {
                loop {
                    let t = (rng.next() % (c.vocab_size as u64 - 1)) as u32;
                    if t != eos {
                        break t;
                    }
                }
            } else if i + 1 == len {
                eos
            } else {
                c.pad_token_id.min(eos.saturating_sub(1))
            };
            ids.push(id);
        }
    }
    ids
}

fn check_model(gpu: &Arc<Gpu>, dir: &Path, what: &str, batch: usize, text: bool) {
    let mut rng = Rng::new(what);
    let cpu = ClipModel::load(dir).unwrap();
    let dev = CudaClip::load(gpu, dir).unwrap();
    if let (Some(cv), Some(gv)) = (&cpu.vision, &dev.vision) {
        let px = pixels(&mut rng, batch * cv.pixels_per_image());
        let want = cv.forward(&px, batch, true);
        let got = gv.forward(&px, batch, true).unwrap();
        compare(
            &format!("{what} vision b{batch}"),
            &got,
            &want.pooled,
            &want.embeds,
            &want.hidden_states,
        );
        // The workspace is reused: a smaller batch afterwards gives the same per-image result.
        let one = gv.forward(&px[..cv.pixels_per_image()], 1, false).unwrap();
        let e = relative_error(&one.embeds, &got.embeds[..one.embeds.len()]);
        assert!(
            e < 1e-6,
            "{what}: batch of one differs from the batch ({e:.2e})"
        );
        // The staging buffer too: the full batch again, after the batch of one wrote its start,
        // gives the first result bit for bit.
        let again = gv.forward(&px, batch, false).unwrap();
        assert!(
            again
                .embeds
                .iter()
                .map(|v| v.to_bits())
                .eq(got.embeds.iter().map(|v| v.to_bits())),
            "{what}: a batch repeated after a smaller one differs"
        );
        // Pixels already on the device (the bench's path), as f32 (rounded to fp16 by
        // im2col) or as fp16, give `forward`'s result (fp16 pixels rounded on the host) bit
        // for bit: im2col's output is the same bits (gpu_kernels proves it), and everything
        // after it is the same launches on the same inputs.
        let f32_px = gpu.upload(&px).unwrap();
        let f16_px = gpu.upload(&fedclip::cuda::pixels_to_f16(&px)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        for kind in ["f32", "fp16"] {
            match kind {
                "f32" => gv.forward_device(f32_px.view(), batch).unwrap(),
                _ => gv.forward_device(f16_px.view(), batch).unwrap(),
            }
            let dev_out = gv.last_output(batch).unwrap();
            assert!(
                bits(&dev_out.embeds) == bits(&got.embeds)
                    && bits(&dev_out.pooled) == bits(&got.pooled),
                "{what}: forward_device from {kind} pixels differs from forward"
            );
        }
    }
    if text && let (Some(ct), Some(gt)) = (&cpu.text, &dev.text) {
        let seq = ct.config.max_position_embeddings.min(20);
        let ids = prompts(&mut rng, &cpu, batch + 1, seq);
        let want = ct.forward(&ids, batch + 1, seq, true).unwrap();
        let got = gt.forward(&ids, batch + 1, seq, true).unwrap();
        compare(
            &format!("{what} text b{}", batch + 1),
            &got,
            &want.pooled,
            &want.embeds,
            &want.hidden_states,
        );
        // Same refusals as the CPU engine.
        assert!(gt.forward(&ids[..seq], 1, seq - 1, false).is_err());
        let mut bad = ids[..seq].to_vec();
        bad[0] = ct.config.vocab_size as u32;
        assert!(gt.forward(&bad, 1, seq, false).is_err());
    }
}

#[test]
fn tiny_fixture_towers_match_the_cpu_engine() {
    let Some(gpu) = test_gpu() else { return };
    for name in [
        "tiny-f32",
        "tiny-gelu-sharded",
        "tiny-vision-only",
        "oc-tiny-quickgelu",
        "oc-tiny-gelu",
    ] {
        let dir = repo().join("tests/fixtures/models").join(name);
        check_model(&gpu, &dir, name, 3, true);
    }
    check_model(
        &gpu,
        &repo().join("weights/tiny-clip"),
        "tiny-clip",
        2,
        true,
    );
}

fn config_text(name: &str) -> String {
    std::fs::read_to_string(repo().join(format!("tests/fixtures/configs/{name}.json"))).unwrap()
}

#[test]
fn vit_b32_random_weights_match_the_cpu_engine() {
    let Some(gpu) = test_gpu() else { return };
    if gpu.info.emulated && std::env::var("FEDCLIP_EMULATE_LARGE").is_err() {
        println!("skipped on the emulator (FEDCLIP_EMULATE_LARGE=1 runs it, slowly)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    write_random_clip(tmp.path(), &config_text("clip-vit-base-patch32"), 11).unwrap();
    let batch = if gpu.info.emulated { 1 } else { 4 };
    check_model(&gpu, tmp.path(), "ViT-B/32", batch, true);
}

/// The towers with GEMM v2 (kernels/gemm2.cu) where `GemmTile::Auto` picks it, as
/// `FEDCLIP_GEMM=v2` would: on the emulator posing as a one-SM GPU, so that the tiny models'
/// matrices get v2's 128×128 and 128×256 tiles; on a GPU, ViT-B/32 at batch 64 (3,200 rows:
/// v2 128×128 on 132 SMs). The same tolerance as v1: the same fp16 inputs and f32 sums.
#[test]
fn towers_with_gemm_v2_match_the_cpu_engine() {
    use fedclip::cuda::kernels::GemmVersion;
    let Some(gpu) = test_gpu() else { return };
    if gpu.info.emulated {
        let small = Gpu::emulator_with_sm_count(1).unwrap();
        small.set_gemm_version(GemmVersion::V2);
        for name in ["tiny-f32", "oc-tiny-gelu"] {
            let dir = repo().join("tests/fixtures/models").join(name);
            check_model(&small, &dir, &format!("{name} gemm v2"), 5, true);
        }
        return;
    }
    gpu.set_gemm_version(GemmVersion::V2);
    let tmp = tempfile::tempdir().unwrap();
    write_random_clip(tmp.path(), &config_text("clip-vit-base-patch32"), 11).unwrap();
    check_model(&gpu, tmp.path(), "ViT-B/32 gemm v2", 64, false);
}

#[test]
fn larger_vision_towers_match_the_cpu_engine() {
    let Some(gpu) = test_gpu() else { return };
    if gpu.info.emulated {
        println!("skipped on the emulator (too slow)");
        return;
    }
    for name in [
        "clip-vit-base-patch16",
        "clip-vit-large-patch14",
        "clip-vit-large-patch14-336",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        write_random_clip(tmp.path(), &config_text(name), 5).unwrap();
        check_model(&gpu, tmp.path(), name, 2, false);
    }
}

/// The encoder seam's CUDA path (src/encode.rs, used by `fedclip embed` and `run`) against its CPU path, from JPEG
/// and PNG files through the tokenizer, on the bundled tiny-clip.
#[test]
fn embed_jobs_on_cuda_match_the_cpu_engine() {
    use fedclip::embed::collect_images;
    use fedclip::encode::Encoder;
    use fedclip::tokenizer::TokenizerKind;
    let Some(gpu) = test_gpu() else { return };
    let dir = repo().join("weights/tiny-clip");
    let cpu: Encoder = ClipModel::load(&dir).unwrap().into();
    let dev = Encoder::cuda(CudaClip::load(&gpu, &dir).unwrap()).unwrap();
    assert_eq!(cpu.logit_scale(), dev.logit_scale());
    let entries = collect_images(&[repo().join("tests/fixtures/images/pacs")]).unwrap();
    let want = cpu.encode_images(&entries, 4, false).unwrap();
    let got = dev.encode_images(&entries, 4, false).unwrap();
    assert_eq!(want.kept, got.kept);
    let kept = want.kept;
    let e = relative_error(&got.embeds, &want.embeds);
    println!(
        "  embed images ({} files): relative error {e:.2e}",
        kept.len()
    );
    assert!(e <= TOWER_TOL, "images: {e:.2e}");
    let prompts: Vec<String> = ["a photo of a dog", "a sketch of a house", "an elephant"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let want = cpu
        .encode_texts(&prompts, 2, false, TokenizerKind::Openai)
        .unwrap();
    let got = dev
        .encode_texts(&prompts, 2, false, TokenizerKind::Openai)
        .unwrap();
    let e = relative_error(&got, &want);
    println!("  embed texts: relative error {e:.2e}");
    assert!(e <= TOWER_TOL, "texts: {e:.2e}");
}

/// Decoding batch i+1 while the GPU encodes batch i (`Encoder::set_decode_ahead`, on by
/// default on the CUDA engine) changes nothing: the same embeddings bit for bit, the same
/// kept and skipped names in the same order, the same error naming every failed file. Files
/// that cannot be decoded sit in the first, a middle and the last batch; the batch size
/// leaves a short last batch.
#[test]
fn decoding_ahead_gives_what_decoding_in_turn_gives() {
    use fedclip::embed::collect_images;
    use fedclip::encode::{EncodedImages, Encoder, ImageEntry};
    let Some(gpu) = test_gpu() else { return };
    let dir = repo().join("weights/tiny-clip");
    let mut dev = Encoder::cuda(CudaClip::load(&gpu, &dir).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bad = |name: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, b"not a JPEG").unwrap();
        ImageEntry::from_path(&path)
    };
    let good = collect_images(&[repo().join("tests/fixtures/images/pacs")]).unwrap();
    let mut entries = vec![bad("first.jpg")];
    entries.extend_from_slice(&good[..3]);
    entries.push(bad("middle.jpg"));
    entries.extend_from_slice(&good[3..]);
    entries.push(bad("last.jpg"));
    let bits = |e: &EncodedImages| e.embeds.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let mut runs = Vec::new();
    for ahead in [false, true] {
        dev.set_decode_ahead(ahead);
        let clean = dev.encode_images(&good, 4, false).unwrap();
        let skipping = dev.encode_images(&entries, 3, true).unwrap();
        let failing = format!("{:#}", dev.encode_images(&entries, 3, false).unwrap_err());
        runs.push((clean, skipping, failing));
    }
    let ((c0, s0, f0), (c1, s1, f1)) = (&runs[0], &runs[1]);
    assert_eq!(c0.kept, c1.kept, "kept, no failures");
    assert_eq!(bits(c0), bits(c1), "embeddings, no failures");
    assert_eq!(c0.kept.len(), good.len());
    assert!(c1.skipped.is_empty());
    assert_eq!(s0.kept, s1.kept, "kept with --skip-bad");
    assert_eq!(s0.skipped, s1.skipped, "skipped with --skip-bad");
    assert_eq!(bits(s0), bits(s1), "embeddings with --skip-bad");
    assert_eq!(s1.kept, c1.kept);
    let skipped: Vec<String> = ["first.jpg", "middle.jpg", "last.jpg"]
        .iter()
        .map(|n| tmp.path().join(n).display().to_string())
        .collect();
    assert_eq!(s1.skipped, skipped);
    assert_eq!(f0, f1, "the error without --skip-bad");
    assert!(f1.starts_with("3 images cannot be used"), "{f1}");
    for name in &skipped {
        assert!(f1.contains(name.as_str()), "{f1} does not name {name}");
    }
    // On the CPU engine (which never decodes ahead) the same names are kept and skipped.
    let cpu: Encoder = ClipModel::load(&dir).unwrap().into();
    let on_cpu = cpu.encode_images(&entries, 3, true).unwrap();
    assert_eq!((&on_cpu.kept, &on_cpu.skipped), (&s1.kept, &s1.skipped));
}

/// The per-kernel profile (`gpu_encode --profile`'s table) holds every launch of a forward
/// pass, in order, each once, with a time; profiling changes no output bit; a profile
/// cannot be finished twice or started inside another.
#[test]
fn profile_lists_every_launch_of_a_forward() {
    use fedclip::cuda::profile::{kernel_totals, profile_table};
    let Some(gpu) = test_gpu() else { return };
    let dev = CudaClip::load(&gpu, &repo().join("weights/tiny-clip")).unwrap();
    let vision = dev.vision.as_ref().unwrap();
    let batch = 3;
    let mut rng = Rng::new("profile");
    let px = gpu
        .upload(&fedclip::cuda::pixels_to_f16(&pixels(
            &mut rng,
            batch * vision.pixels_per_image(),
        )))
        .unwrap();
    vision.forward_device(px.view(), batch).unwrap();
    let plain = vision.last_output(batch).unwrap().embeds;

    assert!(gpu.finish_profile().is_err(), "finish without start");
    gpu.start_profile().unwrap();
    assert!(gpu.start_profile().is_err(), "a profile inside a profile");
    let before = gpu.launch_count();
    vision.forward_device(px.view(), batch).unwrap();
    let launched = (gpu.launch_count() - before) as usize;
    let launches = gpu.finish_profile().unwrap();
    assert!(gpu.finish_profile().is_err(), "finished twice");

    assert_eq!(launches.len(), launched, "one record per launch");
    assert!(launches.iter().all(|l| l.ms.is_finite() && l.ms >= 0.0));
    assert!(
        launches[0].kernel.starts_with("fc_im2col"),
        "{:?}",
        launches[0]
    );
    let totals = kernel_totals(&launches);
    assert_eq!(
        totals.iter().map(|t| t.launches).sum::<usize>(),
        launched,
        "totals cover every launch"
    );
    let layers = vision.config.num_hidden_layers;
    let ln = totals.iter().find(|t| t.kernel == "fc_layernorm").unwrap();
    // pre-LN, then two per block, then the pooled class tokens' post-LN.
    assert_eq!(ln.launches, 2 * layers + 2, "{totals:?}");
    let table = profile_table(&launches, "host emulator");
    println!("{table}");
    for t in &totals {
        assert!(table.contains(t.kernel), "{} missing:\n{table}", t.kernel);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(
        bits(&vision.last_output(batch).unwrap().embeds),
        bits(&plain),
        "profiling changed the output"
    );
}
