//! FedProx's proximal term in the CPU trainer: the loss gains μ/2 ‖θ − θ_global‖² and the
//! gradient μ (θ − θ_global), checked against a hand-made first Adam step.

use fedclip::adapter::{
    AdapterBackend, AdapterParams, ClientBatch, CpuAdapters, Loss, OptimizerConfig, TextFeatures,
    TrainConfig, loss_and_grad,
};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(747_796_405).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn proximal_term_enters_loss_and_first_adam_step() {
    let (d, b, c, mu) = (11, 9, 3, 0.7f32);
    let params = AdapterParams::<f32>::init(d, 5);
    let anchor = AdapterParams::from_flat(d, values(params.as_slice().len(), 9)).unwrap();
    let feats = values(b * d, 2);
    let labels: Vec<u32> = (0..b as u32).map(|i| i % c as u32).collect();
    let texts = TextFeatures::new(&values(c * d, 3), c, d).unwrap();
    let config = TrainConfig {
        loss: Loss::Contrastive,
        logit_scale: 2.0,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        min_batch: 2,
    };
    let mut trainer = CpuAdapters::new(1, &params, texts.clone(), config).unwrap();
    trainer.set_proximal(mu, Some(&anchor)).unwrap();
    let batch = ClientBatch::new(&feats, &labels);
    let loss = trainer.step(&[Some(batch)]).unwrap()[0].unwrap();

    let (plain, grad) = loss_and_grad(&params, &batch, &texts, 2.0, Loss::Contrastive).unwrap();
    let sq: f32 = params
        .as_slice()
        .iter()
        .zip(anchor.as_slice())
        .map(|(t, a)| (t - a) * (t - a))
        .sum();
    approx::assert_relative_eq!(loss, plain + 0.5 * mu * sq, max_relative = 1e-5);

    // First Adam step with coupled decay: θ − lr · ĝ / (|ĝ| + eps), ĝ = g + μ(θ − a) + wd θ.
    let o = config.optimizer;
    let after = trainer.client_params(0).unwrap();
    for (((&t, &a), &g), &new) in params
        .as_slice()
        .iter()
        .zip(anchor.as_slice())
        .zip(grad.as_slice())
        .zip(after.as_slice())
    {
        let g = (g + mu * (t - a) + o.weight_decay as f32 * t) as f64;
        let want = t as f64 - o.lr * g / (g.abs() + o.eps);
        approx::assert_abs_diff_eq!(new as f64, want, epsilon = 2e-6);
    }

    // Removing the anchor removes the term.
    trainer.set_proximal(mu, None).unwrap();
    trainer.set_client_params(0, &params).unwrap();
    let again = trainer.step(&[Some(batch)]).unwrap()[0].unwrap();
    approx::assert_relative_eq!(again, plain, max_relative = 1e-6);
}
