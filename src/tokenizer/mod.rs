//! CLIP's byte-level BPE, read from the model directory's `tokenizer.json` (or for open_clip
//! models without one, fedclip's bundled copy of OpenAI's BPE, the tokenizer open_clip itself
//! uses for them; see [`TokenizerSource::BundledOpenAi`]), after the text cleaning of OpenAI's
//! `clip.tokenize` (or none, as transformers' `CLIPTokenizerFast`).

pub mod clean;
pub mod ftfy;

use crate::weights::{ModelFiles, TokenizerSource};
use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

/// OpenAI CLIP's BPE as `tokenizer.json` (the bundled model's; token for token the vocabulary
/// and merges of open_clip's `bpe_simple_vocab_16e6.txt.gz`, `tests/pipeline.rs` checks ids).
pub const BUNDLED_OPENAI_BPE: &[u8] = include_bytes!("../../weights/tiny-clip/tokenizer.json");

/// Which tokenizer's text handling to reproduce; both share the BPE of `tokenizer.json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// OpenAI's `clip.tokenize` (the reference's, also open_clip's): ftfy, HTML unescaping,
    /// whitespace collapse and lower-casing before BPE.
    #[default]
    Openai,
    /// transformers' `CLIPTokenizerFast`: `tokenizer.json` alone (no ftfy, no unescaping).
    Hf,
}

impl TokenizerKind {
    /// What fedclip did before the choice existed, for settings saved without it.
    pub fn before_the_choice() -> Self {
        TokenizerKind::Hf
    }

    /// The text `tokenizer.json` is given.
    pub fn prepare<'a>(self, text: &'a str) -> Cow<'a, str> {
        match self {
            TokenizerKind::Openai => Cow::Owned(clean::openai_clean(text)),
            TokenizerKind::Hf => Cow::Borrowed(text),
        }
    }
}

/// OpenAI CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context: usize,
    kind: TokenizerKind,
    pub start: u32,
    pub end: u32,
}

impl ClipTokenizer {
    /// Loads `<dir>/tokenizer.json`, or the bundled OpenAI BPE for an open_clip model that
    /// has none; `context` is the model's position count (77 for CLIP), `kind` the text
    /// handling before BPE.
    pub fn load(dir: &Path, context: usize, kind: TokenizerKind) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let source = if file.exists() {
            TokenizerSource::File(file.clone())
        } else {
            match ModelFiles::locate(dir) {
                Ok(model) => model.tokenizer()?,
                Err(_) => TokenizerSource::Missing(format!(
                    "{}: missing (text prompts need the model's tokenizer.json)",
                    file.display()
                )),
            }
        };
        let (inner, name) = match source {
            TokenizerSource::File(f) => (read_tokenizer(&f)?, f.display().to_string()),
            TokenizerSource::BundledOpenAi => {
                eprintln!(
                    "note: {} has no tokenizer.json; using the bundled OpenAI CLIP BPE, open_clip's tokenizer for this model",
                    dir.display()
                );
                (
                    tokenizers::Tokenizer::from_bytes(BUNDLED_OPENAI_BPE)
                        .map_err(|e| anyhow!("the bundled OpenAI BPE: {e}"))?,
                    "the bundled OpenAI BPE".to_string(),
                )
            }
            TokenizerSource::Missing(why) => bail!("{why}"),
        };
        Self::configure(inner, &name, context, kind)
    }

    fn configure(
        mut inner: tokenizers::Tokenizer,
        file: &str,
        context: usize,
        kind: TokenizerKind,
    ) -> Result<Self> {
        // Lengths are checked here, with a clear error, rather than cut silently.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{file}: {e}"))?;
        inner.with_padding(None);
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| anyhow!("{file}: no `{tok}` token"))
        };
        let (start, end) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        Ok(ClipTokenizer {
            inner,
            context,
            kind,
            start,
            end,
        })
    }

    /// Token ids with the start and end tokens. A prompt longer than the context is an
    /// error, or with `truncate` is cut to the context with the end token kept last, as
    /// OpenAI's `clip.tokenize(truncate=True)` does.
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(self.kind.prepare(text).as_ref(), true)
            .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        // Guard against a tokenizer.json whose post-processor adds no special tokens.
        if ids.first() != Some(&self.start) {
            ids.insert(0, self.start);
        }
        if ids.last() != Some(&self.end) {
            ids.push(self.end);
        }
        if ids.len() > self.context {
            if !truncate {
                bail!(
                    "prompt {text:?} is {} tokens long, over the context of {} (use --truncate to cut it)",
                    ids.len(),
                    self.context
                );
            }
            ids.truncate(self.context);
            ids[self.context - 1] = self.end;
        }
        Ok(ids)
    }
}

/// Reads a `tokenizer.json`, invalid JSON reported first: the tokenizers crate panics on
/// some of it (found by tests/fuzz_loaders.rs).
fn read_tokenizer(file: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", file.display()))?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("{}: not a valid tokenizer: {e}", file.display()))
}
