//! A tokenizer loaded from a Hugging Face `tokenizer.json`, or the SentencePiece unigram
//! vocabulary inside an E5S1 model file (multilingual-e5, see `embed/e5s.rs`).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::{PostProcessor, TruncationDirection};

use crate::error::{EngineError, Result};
use crate::unigram::Unigram;

/// A text tokenizer. Thread-safe; share it behind an `Arc`.
pub struct Tokenizer {
    inner: Inner,
    specials: usize,
    sha256: String,
}

enum Inner {
    HuggingFace(Box<tokenizers::Tokenizer>),
    /// `<s> … </s>` around the pieces.
    Unigram(Unigram),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, or the vocabulary of an E5S1 model file. Truncation and padding
    /// configured in a `tokenizer.json` are switched off: callers decide how to cut text.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        let parsed = if raw.starts_with(crate::embed::E5S_MAGIC) {
            Self::from_e5s(&raw)
        } else {
            Self::from_bytes(&raw)
        };
        parsed.map_err(|detail| EngineError::Corrupt {
            path: path.to_owned(),
            detail,
        })
    }

    /// The unigram vocabulary of an E5S1 file; identified by the SHA-256 of that section.
    fn from_e5s(raw: &[u8]) -> std::result::Result<Self, String> {
        let (unigram, section) = crate::embed::e5s_tokenizer(raw)?;
        Ok(Self::from_unigram(unigram, section))
    }

    /// A unigram vocabulary read from `section` of an E5S1 file (its identity).
    pub(crate) fn from_unigram(unigram: Unigram, section: &[u8]) -> Self {
        Self {
            inner: Inner::Unigram(unigram),
            specials: 2,
            sha256: hex::encode(Sha256::digest(section)),
        }
    }

    fn from_bytes(raw: &[u8]) -> std::result::Result<Self, String> {
        let mut inner = tokenizers::Tokenizer::from_bytes(raw).map_err(|e| e.to_string())?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| e.to_string())?;
        let specials = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(Self {
            inner: Inner::HuggingFace(Box::new(inner)),
            specials,
            sha256: hex::encode(Sha256::digest(raw)),
        })
    }

    /// SHA-256 of the tokenizer file, hex; identifies the tokenizer in collection settings.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How many special tokens (e.g. `[CLS]` and `[SEP]`) wrap a single sequence.
    pub fn special_tokens_per_sequence(&self) -> usize {
        self.specials
    }

    /// Tokenizes `text` without special tokens and returns the end byte offset of each token in
    /// `text`, in order. The number of tokens in `text[a..b]` is the number of ends in `(a, b]`.
    pub fn token_ends(&self, text: &str) -> Result<Vec<usize>> {
        match &self.inner {
            Inner::HuggingFace(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| EngineError::InvalidInput(format!("tokenizing: {e}")))?;
                Ok(enc.get_offsets().iter().map(|&(_, end)| end).collect())
            }
            Inner::Unigram(u) => Ok(u.encode(text).1),
        }
    }

    /// Number of tokens in `text`, special tokens included (what the model sees).
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.token_ends(text)?.len() + self.specials)
    }

    /// The token ids the model sees for `text`: special tokens included (`[CLS] … [SEP]` for
    /// BERT), at most `max_tokens` of them. Longer text keeps its first
    /// `max_tokens - special_tokens_per_sequence()` tokens and still ends with its closing
    /// special token, as Hugging Face's `truncation=True, max_length=max_tokens` does.
    ///
    /// Fails with `InvalidInput` when `max_tokens` cannot hold the special tokens.
    pub fn encode_ids(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let budget = max_tokens.checked_sub(self.specials).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "max_tokens {max_tokens} cannot hold the {} special tokens",
                self.specials
            ))
        })?;
        let t = match &self.inner {
            Inner::HuggingFace(t) => t,
            Inner::Unigram(u) => {
                let mut ids = u.encode(text).0;
                ids.truncate(budget);
                ids.insert(0, u.bos());
                ids.push(u.eos());
                return Ok(ids);
            }
        };
        let mut enc = t
            .encode(text, false)
            .map_err(|e| EngineError::InvalidInput(format!("tokenizing: {e}")))?;
        if enc.len() > budget {
            enc.truncate(budget, 0, TruncationDirection::Right);
        }
        let enc = t
            .post_process(enc, None, true)
            .map_err(|e| EngineError::InvalidInput(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}
