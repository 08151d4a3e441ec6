//! CLIP's byte-level BPE, read from the model directory's `tokenizer.json`.

use anyhow::{Result, anyhow, bail};
use std::path::Path;

/// OpenAI CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context: usize,
    pub start: u32,
    pub end: u32,
}

impl ClipTokenizer {
    /// Loads `<dir>/tokenizer.json`; `context` is the model's position count (77 for CLIP).
    pub fn load(dir: &Path, context: usize) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.exists() {
            bail!(
                "{}: missing (text prompts need the model's tokenizer.json)",
                file.display()
            );
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
        // Invalid JSON is reported here: the tokenizers crate panics on some of it.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| anyhow!("{}: not valid JSON: {e}", file.display()))?;
        let mut inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| anyhow!("{}: not a valid tokenizer: {e}", file.display()))?;
        // Lengths are checked here, with a clear error, rather than cut silently.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", file.display()))?;
        inner.with_padding(None);
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| anyhow!("{}: no `{tok}` token", file.display()))
        };
        let (start, end) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        Ok(ClipTokenizer {
            inner,
            context,
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
            .encode(text, true)
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
