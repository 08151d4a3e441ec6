//! The prompt learner (CoOp, Zhou et al. 2022; federated as PromptFL, Guo et al. 2023) as a
//! [`Head`]: the row is the context, `[n_ctx, d_text]` shared by the classes or
//! `[C, n_ctx, d_text]` class-specific (CSC). The C prompts run through the frozen text tower
//! ([`crate::prompt`]); `logits = exp(logit_scale) · x̂ t̂ᵀ` with x̂ the normalised image
//! feature and t̂ the normalised prompt feature; mean cross-entropy. The gradient reaches the
//! context through the tower's backward pass, once per step for the C prompts (not per image).

use super::{Head, cross_entropy, matmul_bt, named, normalize_rows};
use crate::adapter::Real;
use crate::prompt::{
    ClassTokenPosition, ContextSpec, PromptLayout, PromptTower, TextActs, class_prompts,
    context_length, init_context, init_tokens,
};
use crate::tokenizer::{ClipTokenizer, TokenizerKind};
use crate::weights::ModelFiles;
use anyhow::{Result, ensure};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone)]
pub struct PromptHead<T: Real> {
    tower: Arc<PromptTower<T>>,
    layout: Arc<PromptLayout<T>>,
    csc: bool,
    position: ClassTokenPosition,
    scale: T,
}

impl PromptHead<f32> {
    /// The head for the model at `model` and the classes `names` (label order), with its
    /// initial context row: the prompts tokenised with the model's tokenizer as `kind`
    /// handles text, the context as `spec` says (see [`crate::prompt::init_context`]).
    pub fn from_model(
        model: &Path,
        kind: TokenizerKind,
        names: &[String],
        spec: &ContextSpec,
        logit_scale: f32,
        seed: u64,
    ) -> Result<(Self, Vec<f32>)> {
        ensure!(
            !names.is_empty(),
            "the prompt learner needs the class names (none were given)"
        );
        let tower = PromptTower::<f32>::load(model)?;
        let positions = tower.config().max_position_embeddings;
        let tokenizer = ClipTokenizer::load(&ModelFiles::locate(model)?.dir, positions, kind)?;
        let init = init_tokens(&tokenizer, spec)?;
        let n_ctx = context_length(spec, init.as_deref())?;
        let prompts = class_prompts(&tokenizer, names, n_ctx, positions)?;
        let layout = PromptLayout::new(&tower, &prompts, n_ctx, spec.position)?;
        let row = init_context(&tower, init.as_deref(), n_ctx, names.len(), spec.csc, seed);
        let head = PromptHead::new(
            Arc::new(tower),
            Arc::new(layout),
            spec.csc,
            spec.position,
            logit_scale,
        );
        Ok((head, row))
    }
}

impl<T: Real> PromptHead<T> {
    /// `logit_scale` is the log of the scale, as CLIP stores it.
    pub fn new(
        tower: Arc<PromptTower<T>>,
        layout: Arc<PromptLayout<T>>,
        csc: bool,
        position: ClassTokenPosition,
        logit_scale: T,
    ) -> Self {
        PromptHead {
            tower,
            layout,
            csc,
            position,
            scale: logit_scale.exp(),
        }
    }

    /// The forward pass of the class prompts for the context `ctx`.
    pub fn encode_prompts(&self, ctx: &[T]) -> TextActs<T> {
        let l = &self.layout;
        let mut acts = TextActs::new(l.classes(), l.seq());
        self.tower
            .forward_embeds(&l.embeds(ctx, self.csc), l.pool(), &mut acts)
            .expect("the layout was built for this tower");
        acts
    }

    /// The loss, its context gradient over `grad`, and with `trace` the gradient with respect
    /// to every hidden state (see [`PromptTower::backward_embeds`]).
    pub fn loss_and_grad_traced(
        &self,
        ctx: &[T],
        features: &[T],
        labels: &[u32],
        grad: &mut [T],
        trace: Option<&mut Vec<Vec<T>>>,
    ) -> T {
        let (e, c) = (self.tower.feature_dim(), self.classes());
        let b = labels.len();
        let acts = self.encode_prompts(ctx);
        let (texts, norms) = normalize_rows(&acts.features, e);
        let (images, _) = normalize_rows(features, e);
        let mut g = matmul_bt(&images, b, &texts, c, e);
        g.iter_mut().for_each(|v| *v *= self.scale);
        let loss = cross_entropy(&mut g, labels, c);
        // dt̂ = s Gᵀ x̂; dz = (dt̂ − t̂ (t̂·dt̂)) / ‖z‖.
        let mut dz = vec![T::ZERO; c * e];
        for (i, x) in images.chunks_exact(e).enumerate() {
            for (k, row) in dz.chunks_exact_mut(e).enumerate() {
                let gk = self.scale * g[i * c + k];
                row.iter_mut().zip(x).for_each(|(v, &xv)| *v += gk * xv);
            }
        }
        for ((row, t), &n) in dz
            .chunks_exact_mut(e)
            .zip(texts.chunks_exact(e))
            .zip(&norms)
        {
            let along: T = row.iter().zip(t).map(|(&a, &b)| a * b).sum();
            row.iter_mut()
                .zip(t)
                .for_each(|(v, &tv)| *v = (*v - tv * along) / n);
        }
        let dembeds = self.tower.backward_embeds(&acts, &dz, trace);
        self.layout.ctx_grad(&dembeds, self.csc, grad);
        loss
    }
}

impl<T: Real> Head<T> for PromptHead<T> {
    fn name(&self) -> &'static str {
        "prompt learner"
    }
    fn dim(&self) -> usize {
        self.tower.feature_dim()
    }
    fn classes(&self) -> usize {
        self.layout.classes()
    }
    fn param_count(&self) -> usize {
        self.layout.ctx_len(self.csc)
    }

    fn loss_and_grad(&self, params: &[T], features: &[T], labels: &[u32], grad: &mut [T]) -> T {
        self.loss_and_grad_traced(params, features, labels, grad, None)
    }

    fn logits(&self, params: &[T], features: &[T]) -> Vec<T> {
        let e = self.dim();
        let acts = self.encode_prompts(params);
        let (texts, _) = normalize_rows(&acts.features, e);
        let (images, _) = normalize_rows(features, e);
        let mut g = matmul_bt(&images, features.len() / e, &texts, self.classes(), e);
        g.iter_mut().for_each(|v| *v *= self.scale);
        g
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let (n, d) = (self.layout.n_ctx(), self.tower.width());
        let shape = if self.csc {
            vec![self.classes(), n, d]
        } else {
            vec![n, d]
        };
        named(&[("prompt_learner.ctx", shape)])
    }

    fn layout(&self) -> String {
        format!(
            "CoOp prompt learner: ctx [{}n_ctx = {}, d_text = {}] in place of the placeholder tokens of \"X … X <class>.\", class token position {}; PyTorch prompt_learner.ctx",
            if self.csc { "C, " } else { "" },
            self.layout.n_ctx(),
            self.tower.width(),
            self.position.name()
        )
    }
}
