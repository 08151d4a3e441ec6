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
    ///
    /// A prompt over [`MAX_PROMPT_BYTES`] is never tokenized whole (a 50 MB line took
    /// gigabytes): without `truncate` it is refused; with it, only its start, up to the last
    /// whitespace within the limit, is tokenized, which gives the same first tokens (words
    /// are tokenized one by one) as long as that start fills the context, else it is refused.
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        if text.len() <= MAX_PROMPT_BYTES {
            return self.encode_whole(text, truncate);
        }
        let too_long = PromptTooLong {
            start: quote_start(text),
            tokens: None,
            bytes: text.len(),
            context: self.context,
        };
        if !truncate {
            return Err(too_long.into());
        }
        let mut cut = MAX_PROMPT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let head = &text[..text[..cut].rfind(char::is_whitespace).unwrap_or(0)];
        match self.encode_whole(head, false) {
            Err(e) if e.is::<PromptTooLong>() => self.encode_whole(head, true),
            _ => bail!(
                "{too_long}; its first {MAX_PROMPT_BYTES} bytes hold fewer tokens than the \
                 context, so fedclip cannot cut it exactly: shorten it"
            ),
        }
    }

    fn encode_whole(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(self.kind.prepare(text).as_ref(), true)
            .map_err(|e| anyhow!("cannot tokenize {}: {e}", quote_start(text)))?;
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
                return Err(PromptTooLong {
                    start: quote_start(text),
                    tokens: Some(ids.len()),
                    bytes: text.len(),
                    context: self.context,
                }
                .into());
            }
            ids.truncate(self.context);
            ids[self.context - 1] = self.end;
        }
        Ok(ids)
    }
}

/// Longest prompt, in bytes, that is tokenized whole (a context of 77 tokens is a few
/// hundred bytes of text; see [`ClipTokenizer::encode`]).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// A prompt over the context (or over [`MAX_PROMPT_BYTES`]); the job that gave it says how
/// to fix it (`embed --truncate`, a shorter class name), so it can be found in an error chain.
#[derive(Debug, thiserror::Error)]
#[error(
    "prompt {start} is {}, over the context of {context} tokens",
    match tokens { Some(n) => format!("{n} tokens long"), None => format!("{bytes} bytes long") }
)]
pub struct PromptTooLong {
    /// The prompt's start, quoted ([`quote_start`]).
    pub start: String,
    pub tokens: Option<usize>,
    pub bytes: usize,
    pub context: usize,
}

/// `text` quoted for a message: whole when short, else its first 60 characters and how
/// long it is (an over-long prompt once made a 1 MB error line).
pub fn quote_start(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        None => format!("{text:?}"),
        Some((i, _)) => format!("{:?}… ({} bytes)", &text[..i], text.len()),
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
