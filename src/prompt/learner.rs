//! CoOp's `PromptLearner` (KaiyangZhou/CoOp `trainers/coop.py`): the class prompts
//! `"X X … X <name>."` tokenised with the run's tokenizer, the context vectors placed at the
//! class-token position (`end`, `middle`, `front`), and the context's initialisation.

use super::tower::PromptTower;
use crate::adapter::Real;
use crate::tokenizer::ClipTokenizer;
use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// Where the class name sits relative to the context (CoOp's `CLASS_TOKEN_POSITION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClassTokenPosition {
    /// `SOS ctx name . EOS`.
    #[default]
    End,
    /// `SOS ctx[..n/2] name ctx[n/2..] . EOS`.
    Middle,
    /// `SOS name ctx . EOS`.
    Front,
}

impl ClassTokenPosition {
    pub fn name(self) -> &'static str {
        match self {
            ClassTokenPosition::End => "end",
            ClassTokenPosition::Middle => "middle",
            ClassTokenPosition::Front => "front",
        }
    }
}

/// One class's prompt as CoOp tokenises it: the ids of `"X … X <name>."` (SOS first, EOS
/// last, no padding) and the name's token count (CoOp's `name_lens`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassPrompt {
    pub ids: Vec<u32>,
    pub name_len: usize,
}

/// The C class prompts with the context's slots: what [`PromptLayout::embeds`] fills from a
/// parameter row and [`PromptLayout::ctx_grad`] reads back.
#[derive(Clone, Debug)]
pub struct PromptLayout<T> {
    classes: usize,
    n_ctx: usize,
    width: usize,
    /// Positions run: the longest prompt up to its pooled row.
    seq: usize,
    /// Token embeddings `[C, seq, d]`, zero in the context slots and after each prompt's end.
    base: Vec<T>,
    /// `[C, n_ctx]`: the position of context vector j in prompt c.
    ctx_at: Vec<usize>,
    pool: Vec<usize>,
}

impl<T: Real> PromptLayout<T> {
    /// The layout of `prompts` (each `n_ctx` placeholders after SOS, then the name) with the
    /// class name moved to `position` as CoOp's `PromptLearner.forward` does.
    pub fn new(
        tower: &PromptTower<T>,
        prompts: &[ClassPrompt],
        n_ctx: usize,
        position: ClassTokenPosition,
    ) -> Result<Self> {
        ensure!(
            !prompts.is_empty(),
            "prompt learning needs at least one class"
        );
        let d = tower.width();
        let mut pool = Vec::with_capacity(prompts.len());
        let mut arranged = Vec::with_capacity(prompts.len());
        let mut ctx_at = Vec::with_capacity(prompts.len() * n_ctx);
        for (c, p) in prompts.iter().enumerate() {
            let at = tower.config().pool_positions(&p.ids, 1, p.ids.len())?[0];
            ensure!(
                at > n_ctx + p.name_len && at < tower.config().max_position_embeddings,
                "class prompt {c}: its end token (position {at}) does not follow {n_ctx} context tokens and {} name tokens within {} positions",
                p.name_len,
                tower.config().max_position_embeddings
            );
            let (ids, slots) = arrange(&p.ids[..=at], n_ctx, p.name_len, position);
            pool.push(at);
            arranged.push(ids);
            ctx_at.extend(slots);
        }
        let seq = pool.iter().max().copied().unwrap_or(0) + 1;
        let mut base = vec![T::ZERO; prompts.len() * seq * d];
        for (c, ids) in arranged.iter().enumerate() {
            for (t, id) in ids.iter().enumerate() {
                if let Some(id) = id {
                    base[(c * seq + t) * d..][..d].copy_from_slice(tower.token_embedding(*id));
                }
            }
        }
        Ok(PromptLayout {
            classes: prompts.len(),
            n_ctx,
            width: d,
            seq,
            base,
            ctx_at,
            pool,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    pub fn seq(&self) -> usize {
        self.seq
    }
    pub fn pool(&self) -> &[usize] {
        &self.pool
    }
    /// Values in a context row: `n_ctx · d`, times C with class-specific contexts.
    pub fn ctx_len(&self, csc: bool) -> usize {
        self.n_ctx * self.width * if csc { self.classes } else { 1 }
    }

    /// The prompts' embeddings `[C, seq, d]` with `ctx` (`[n_ctx, d]`, or `[C, n_ctx, d]`
    /// with `csc`) in the context slots.
    pub fn embeds(&self, ctx: &[T], csc: bool) -> Vec<T> {
        assert_eq!(
            ctx.len(),
            self.ctx_len(csc),
            "PromptLayout::embeds: context size"
        );
        let d = self.width;
        let mut out = self.base.clone();
        for c in 0..self.classes {
            for j in 0..self.n_ctx {
                let src = (if csc { c * self.n_ctx + j } else { j }) * d;
                let dst = (c * self.seq + self.ctx_at[c * self.n_ctx + j]) * d;
                out[dst..dst + d].copy_from_slice(&ctx[src..src + d]);
            }
        }
        out
    }

    /// The context's gradient from the embeddings' `dembeds` `[C, seq, d]`, written over
    /// `grad`: each slot's row, summed over the classes when the context is shared (as
    /// `encoder_backward` scatters into the token table).
    pub fn ctx_grad(&self, dembeds: &[T], csc: bool, grad: &mut [T]) {
        assert_eq!(
            grad.len(),
            self.ctx_len(csc),
            "PromptLayout::ctx_grad: context size"
        );
        let d = self.width;
        grad.fill(T::ZERO);
        for c in 0..self.classes {
            for j in 0..self.n_ctx {
                let dst = (if csc { c * self.n_ctx + j } else { j }) * d;
                let src = (c * self.seq + self.ctx_at[c * self.n_ctx + j]) * d;
                grad[dst..dst + d]
                    .iter_mut()
                    .zip(&dembeds[src..src + d])
                    .for_each(|(g, &x)| *g += x);
            }
        }
    }
}

/// CoOp's concatenation for one prompt `ids` (up to its end token): the token id at each
/// position (`None` in a context slot) and the context slots in order.
fn arrange(
    ids: &[u32],
    n_ctx: usize,
    name_len: usize,
    position: ClassTokenPosition,
) -> (Vec<Option<u32>>, Vec<usize>) {
    let name = &ids[1 + n_ctx..1 + n_ctx + name_len];
    let rest = &ids[1 + n_ctx + name_len..];
    let half = n_ctx / 2;
    let (before, after) = match position {
        ClassTokenPosition::End => (n_ctx, 0),
        ClassTokenPosition::Middle => (half, n_ctx - half),
        ClassTokenPosition::Front => (0, n_ctx),
    };
    let mut out = vec![Some(ids[0])];
    let mut slots = Vec::with_capacity(n_ctx);
    let ctx_run = |out: &mut Vec<Option<u32>>, slots: &mut Vec<usize>, n: usize| {
        for _ in 0..n {
            slots.push(out.len());
            out.push(None);
        }
    };
    ctx_run(&mut out, &mut slots, before);
    out.extend(name.iter().map(|&i| Some(i)));
    ctx_run(&mut out, &mut slots, after);
    out.extend(rest.iter().map(|&i| Some(i)));
    (out, slots)
}

/// How the context starts: `--ctx-init` words, or N(0, 0.02²) draws.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextSpec {
    /// `--n-ctx` as given (`None`: 16, or the init's token count).
    pub n_ctx: Option<usize>,
    pub ctx_init: Option<String>,
    pub csc: bool,
    pub position: ClassTokenPosition,
}

/// CoOp's default context length.
pub const DEFAULT_N_CTX: usize = 16;

/// The context's initial token ids from `--ctx-init` (underscores as spaces, as CoOp), the
/// words' tokens between SOS and EOS.
pub fn init_tokens(tokenizer: &ClipTokenizer, spec: &ContextSpec) -> Result<Option<Vec<u32>>> {
    let Some(words) = &spec.ctx_init else {
        return Ok(None);
    };
    let ids = tokenizer.encode(&words.replace('_', " "), false)?;
    let tokens = ids[1..ids.len() - 1].to_vec();
    ensure!(!tokens.is_empty(), "--ctx-init {words:?} has no tokens");
    if let Some(n) = spec.n_ctx {
        ensure!(
            n == tokens.len(),
            "--n-ctx {n} disagrees with --ctx-init {words:?}, which is {} tokens (leave --n-ctx out and the init sets it)",
            tokens.len()
        );
    }
    Ok(Some(tokens))
}

/// The context length: `--n-ctx`, else the init's token count, else 16; 0 is refused.
pub fn context_length(spec: &ContextSpec, init: Option<&[u32]>) -> Result<usize> {
    let n = spec
        .n_ctx
        .or(init.map(|t| t.len()))
        .unwrap_or(DEFAULT_N_CTX);
    ensure!(
        n > 0,
        "--n-ctx 0: a prompt needs at least one context vector"
    );
    Ok(n)
}

/// Each class's prompt `"X … X <name>."` as CoOp tokenises it (underscores in names as
/// spaces). BPE splits words before merging, so the ids are SOS, n_ctx × the id of "X", the
/// ids of `"<name>."`, EOS. A prompt over the model's `positions` is refused, naming the class
/// and the flags that set its length.
pub fn class_prompts(
    tokenizer: &ClipTokenizer,
    names: &[String],
    n_ctx: usize,
    positions: usize,
) -> Result<Vec<ClassPrompt>> {
    let x = tokenizer.encode("X", false)?;
    ensure!(
        x.len() == 3,
        "the tokenizer splits the placeholder \"X\" into {} tokens",
        x.len() - 2
    );
    names
        .iter()
        .map(|raw| {
            let name = raw.replace('_', " ");
            let name_ids = tokenizer.encode(&name, true)?;
            let suffix = tokenizer.encode(&format!("{name}."), true)?;
            let len = 1 + n_ctx + suffix.len() - 1;
            if len > positions || suffix.len() >= positions {
                bail!(
                    "class {raw:?}: its prompt is {len} tokens ({n_ctx} context tokens from --n-ctx/--ctx-init, the name and \".\", SOS and EOS), over the text tower's {positions} positions; use a shorter --n-ctx or --ctx-init"
                );
            }
            let mut ids = vec![x[0]];
            ids.extend(std::iter::repeat_n(x[1], n_ctx));
            ids.extend(&suffix[1..]);
            Ok(ClassPrompt {
                ids,
                name_len: name_ids.len() - 2,
            })
        })
        .collect()
}

/// The initial context row: the init tokens' embeddings (repeated per class with CSC), or
/// N(0, 0.02²) values (`n_ctx · d`, × C with CSC, row-major) from [`normal_stream`] of `seed`.
pub fn init_context<T: Real>(
    tower: &PromptTower<T>,
    init: Option<&[u32]>,
    n_ctx: usize,
    classes: usize,
    csc: bool,
    seed: u64,
) -> Vec<f32> {
    let copies = if csc { classes } else { 1 };
    match init {
        Some(tokens) => {
            let one: Vec<f32> = (tokens.iter())
                .flat_map(|&t| tower.token_embedding(t).iter().map(|v| v.to_f64() as f32))
                .collect();
            one.repeat(copies)
        }
        None => {
            let mut draw = normal_stream(seed);
            (0..copies * n_ctx * tower.width())
                .map(|_| (0.02 * draw()) as f32)
                .collect()
        }
    }
}

/// Standard normal draws from the adapter's seeded SplitMix64 uniforms
/// ([`crate::adapter::seeded_unit_stream`]) by Box–Muller: each pair u₁, u₂ gives
/// `√(−2 ln(1 − u₁)) · cos(2π u₂)` (the sine half is not used, so each draw is one pair).
pub fn normal_stream(seed: u64) -> impl FnMut() -> f64 {
    let mut u = crate::adapter::seeded_unit_stream(seed);
    move || {
        let (u1, u2) = (u(), u());
        (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
