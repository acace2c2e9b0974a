//! The generator's tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata (or a
//! `tokenizer.json`), and incremental detokenisation.
//!
//! A GGUF file carries no `tokenizer.json`: it stores the vocabulary, its token types, scores or
//! merges and the special ids under llama.cpp's key names. [`GenTokenizer::from_gguf`] rebuilds a
//! Hugging Face `tokenizers::Tokenizer` from them in code:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE. Vocabulary and merges come from the file;
//!   the text is first split by the regex that `tokenizer.ggml.pre` names (see [`split_regexes`]),
//!   then mapped to the GPT-2 byte alphabet.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE. Spaces become `▁`, characters
//!   missing from the vocabulary fall back to `<0xXX>` byte tokens, and the merges are derived
//!   from the vocabulary: pieces `a` and `b` merge when `a`, `b` and `ab` are all tokens, the
//!   merge producing the best-scored `ab` first (see [`derive_merges`]). This is what
//!   SentencePiece's BPE and llama.cpp's SPM tokenizer compute.
//!
//! Control tokens (type 3) are added as special tokens and user-defined tokens (type 4) as plain
//! added tokens, so a marker such as `<|im_start|>` in the text encodes to its single id.
//!
//! Decoding does not go through `tokenizers`: every token's bytes are computed once at load
//! (byte-level alphabet reversed, `▁` made a space, `<0xXX>` made its byte), so
//! [`GenTokenizer::decode`] concatenates bytes and [`IncrementalDecoder`] emits text as soon as
//! it forms complete UTF-8 characters, with no re-decoding of the sequence.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use rayon::prelude::*;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};

/// SentencePiece's stand-in for a space.
const SPACE_MARK: char = '▁';

/// Tokens that end an assistant turn in the chat formats we know; those present in a
/// vocabulary as special tokens stop generation alongside EOS.
const END_OF_TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<|eom_id|>",
];

/// GPT-2's split: contractions, letter runs, digit runs, other symbols, whitespace.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split: case-insensitive contractions, up to three digits per piece, newlines kept
/// apart from other whitespace.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's split: as Llama 3's but one digit per piece.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every digit on its own (SmolLM, StarCoder), applied before the GPT-2 split.
const SINGLE_DIGITS: &str = r"\p{N}";

/// The split regexes, applied in order, for a `tokenizer.ggml.pre` value, and whether the BPE
/// should take a whole piece that is itself a token without merging (`ignore_merges`, as the
/// Llama 3 `tokenizer.json` and llama.cpp do). `None` when the name is unknown.
fn split_regexes(pre: &str) -> Option<(&'static [&'static str], bool)> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "olmo" | "jais" => (&[GPT2_SPLIT], false),
        "smollm" | "starcoder" | "refact" => (&[SINGLE_DIGITS, GPT2_SPLIT], false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => {
            (&[LLAMA3_SPLIT], true)
        }
        "qwen2" | "deepseek-r1-qwen" => (&[QWEN2_SPLIT], false),
        _ => return None,
    })
}

/// A token's role, from `tokenizer.ggml.token_type` (llama.cpp's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    /// Ordinary text (1; also 0, "undefined").
    Normal,
    /// The unknown token (2).
    Unknown,
    /// A control token such as BOS or `<|im_start|>` (3): special, skipped when decoding
    /// with `skip_special`.
    Control,
    /// A user-defined token such as `\n\n` or `</div>` (4): always matched whole in text.
    UserDefined,
    /// A reserved, never-trained token (5).
    Unused,
    /// A byte-fallback token `<0xXX>` (6).
    Byte,
}

impl TokenKind {
    fn from_gguf(t: i32) -> Self {
        match t {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// How a token's vocabulary spelling turns into the bytes of text it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detok {
    /// GPT-2 byte-level alphabet: each character stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` is one byte; `strip_first_space` drops the space
    /// that `add_space_prefix` put in front of the text.
    SentencePiece { strip_first_space: bool },
}

/// Per-token spelling and bytes, stored flat: token `i` spans `ends[i-1]..ends[i]`.
struct TokenTable {
    spellings: String,
    spelling_ends: Vec<u32>,
    bytes: Vec<u8>,
    byte_ends: Vec<u32>,
    kinds: Vec<TokenKind>,
}

impl TokenTable {
    fn with_capacity(n: usize) -> Self {
        Self {
            spellings: String::with_capacity(n * 8),
            spelling_ends: Vec::with_capacity(n),
            bytes: Vec::with_capacity(n * 8),
            byte_ends: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, spelling: &str, kind: TokenKind, detok: Detok) -> Result<(), String> {
        self.spellings.push_str(spelling);
        self.spelling_ends.push(offset(self.spellings.len())?);
        push_token_bytes(&mut self.bytes, spelling, kind, detok);
        self.byte_ends.push(offset(self.bytes.len())?);
        self.kinds.push(kind);
        Ok(())
    }

    fn len(&self) -> usize {
        self.kinds.len()
    }

    fn range(ends: &[u32], id: usize) -> std::ops::Range<usize> {
        let start = if id == 0 { 0 } else { ends[id - 1] as usize };
        start..ends[id] as usize
    }

    fn spelling(&self, id: u32) -> Option<&str> {
        let id = id as usize;
        (id < self.len()).then(|| &self.spellings[Self::range(&self.spelling_ends, id)])
    }

    fn bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        (id < self.len()).then(|| &self.bytes[Self::range(&self.byte_ends, id)])
    }

    fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }
}

fn offset(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| "vocabulary text exceeds 4 GiB".to_owned())
}

/// Appends the bytes of text that a token with this spelling stands for.
fn push_token_bytes(out: &mut Vec<u8>, spelling: &str, kind: TokenKind, detok: Detok) {
    match (detok, kind) {
        // Added tokens are stored as the text they match, in either scheme.
        (_, TokenKind::Control | TokenKind::UserDefined | TokenKind::Unused) => {
            out.extend_from_slice(spelling.as_bytes());
        }
        (Detok::ByteLevel, _) => {
            let start = out.len();
            for c in spelling.chars() {
                match byte_level_byte(c) {
                    Some(b) => out.push(b),
                    None => {
                        // Not in the byte alphabet: the token is literal text.
                        out.truncate(start);
                        out.extend_from_slice(spelling.as_bytes());
                        return;
                    }
                }
            }
        }
        (Detok::SentencePiece { .. }, kind) => {
            if let Some(b) = parse_byte_token(spelling).filter(|_| kind == TokenKind::Byte) {
                out.push(b);
                return;
            }
            for c in spelling.chars() {
                if c == SPACE_MARK {
                    out.push(b' ');
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

/// `<0xAB>` → `0xAB`.
fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The byte that a character of GPT-2's byte-level alphabet stands for. Printable Latin-1
/// bytes stand for themselves; the 68 others (controls, space, DEL, NBSP, soft hyphen) were
/// moved, in order, to U+0100..U+0143.
fn byte_level_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => u8::try_from(c).ok(),
        0x100..=0x120 => u8::try_from(c - 0x100).ok(),
        0x121..=0x142 => u8::try_from(c - 0x121 + 0x7F).ok(),
        0x143 => Some(0xAD),
        _ => None,
    }
}

/// Typed access to GGUF metadata; errors name the key.
struct Meta<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn corrupt(&self, key: &str, what: &str) -> EngineError {
        EngineError::Corrupt {
            path: self.path.to_owned(),
            detail: format!("metadata {key}: {what}"),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<&'a str> {
        let v = self.get(key).ok_or_else(|| self.corrupt(key, "missing"))?;
        v.to_string()
            .map(String::as_str)
            .map_err(|_| self.corrupt(key, "expected a string"))
    }

    fn opt_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        // Unsigned integers of any width, or non-negative signed ones; not booleans.
        let n = if let Value::Bool(_) = v {
            None
        } else {
            v.to_u64()
                .ok()
                .or_else(|| v.to_i32().ok().and_then(|n| u64::try_from(n).ok()))
                .or_else(|| v.to_i64().ok().and_then(|n| u64::try_from(n).ok()))
        };
        n.and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.corrupt(key, "expected a token id (unsigned 32-bit integer)"))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.to_bool()
                    .map_err(|_| self.corrupt(key, "expected a boolean"))
            })
            .transpose()
    }

    fn opt_array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        self.get(key)
            .map(|v| {
                v.to_vec()
                    .map(Vec::as_slice)
                    .map_err(|_| self.corrupt(key, "expected an array"))
            })
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        let Some(a) = self.opt_array(key)? else {
            return Err(self.corrupt(key, "missing"));
        };
        a.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.corrupt(key, "expected an array of strings"))
            })
            .collect()
    }

    /// An optional per-token array, checked to have one entry per token.
    fn per_token<T>(
        &self,
        key: &str,
        n_tokens: usize,
        f: impl Fn(&Value) -> Option<T>,
        what: &str,
    ) -> Result<Option<Vec<T>>> {
        let Some(a) = self.opt_array(key)? else {
            return Ok(None);
        };
        if a.len() != n_tokens {
            return Err(self.corrupt(
                key,
                &format!("has {} entries for {n_tokens} tokens", a.len()),
            ));
        }
        a.iter()
            .map(|v| f(v).ok_or_else(|| self.corrupt(key, what)))
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    /// An id key, checked to name a token.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        match self.opt_u32(key)? {
            Some(id) if id as usize >= n_tokens => Err(self.corrupt(
                key,
                &format!("token id {id} is outside the vocabulary of {n_tokens}"),
            )),
            id => Ok(id),
        }
    }
}

/// Special ids and flags read from GGUF metadata.
struct SpecialIds {
    bos: Option<u32>,
    eos: u32,
    add_bos: Option<bool>,
    /// `tokenizer.ggml.eot_token_id` / `eom_token_id`, where given.
    extra_ends: Vec<u32>,
}

impl SpecialIds {
    fn read(meta: &Meta<'_>, n_tokens: usize) -> Result<Self> {
        let eos_key = "tokenizer.ggml.eos_token_id";
        Ok(Self {
            bos: meta.token_id("tokenizer.ggml.bos_token_id", n_tokens)?,
            eos: meta
                .token_id(eos_key, n_tokens)?
                .ok_or_else(|| meta.corrupt(eos_key, "missing"))?,
            add_bos: meta.opt_bool("tokenizer.ggml.add_bos_token")?,
            extra_ends: ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
                .iter()
                .filter_map(|k| meta.token_id(k, n_tokens).transpose())
                .collect::<Result<_>>()?,
        })
    }
}

/// The generator's tokenizer: text ↔ token ids for one model. Thread-safe; share it behind an
/// `Arc`.
pub(crate) struct GenTokenizer {
    inner: tokenizers::Tokenizer,
    table: TokenTable,
    detok: Detok,
    bos: Option<u32>,
    add_bos: bool,
    eos: u32,
    end_tokens: Vec<u32>,
}

impl std::fmt::Debug for GenTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("detok", &self.detok)
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .field("eos", &self.eos)
            .field("end_tokens", &self.end_tokens)
            .finish()
    }
}

impl GenTokenizer {
    /// Builds the tokenizer that a GGUF file's `tokenizer.ggml.*` metadata describes. `path` is
    /// the file, named in errors.
    ///
    /// Fails with `Unsupported` for a `tokenizer.ggml.model` other than `gpt2` or `llama`, and
    /// with `Corrupt` naming the key when a key is missing, ill-typed or inconsistent.
    pub(crate) fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Meta { content, path };
        let model = meta.string("tokenizer.ggml.model")?;
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(meta.corrupt("tokenizer.ggml.tokens", "bad vocabulary size"));
        }
        let kinds = meta
            .per_token(
                "tokenizer.ggml.token_type",
                n,
                |v| v.to_i32().ok().map(TokenKind::from_gguf),
                "expected 32-bit integers",
            )?
            .unwrap_or_else(|| vec![TokenKind::Normal; n]);
        let ids = SpecialIds::read(&meta, n)?;
        let space_prefix = meta
            .opt_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(false);
        let corrupt = |detail| EngineError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let (detok, default_add_bos) = match model {
            "gpt2" => (Detok::ByteLevel, false),
            "llama" => (
                Detok::SentencePiece {
                    strip_first_space: space_prefix,
                },
                true,
            ),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "{}: tokenizer model {other:?} (tokenizer.ggml.model); supported: \"gpt2\", \"llama\"",
                    path.display()
                )));
            }
        };
        let merges_key = "tokenizer.ggml.merges";
        let merges = match meta.opt_array(merges_key)? {
            Some(_) => Some(meta.strings(merges_key)?),
            None => None,
        };
        let (inner, table) = if detok == Detok::ByteLevel {
            let parts = ByteLevelParts {
                tokens: &tokens,
                kinds: &kinds,
                merges: merges
                    .as_deref()
                    .ok_or_else(|| meta.corrupt(merges_key, "missing"))?,
                pre: meta.opt_string("tokenizer.ggml.pre")?.unwrap_or("default"),
            };
            parts.build(space_prefix).map_err(corrupt)?
        } else {
            // Merges given by the file are used as they are; otherwise they come from scores.
            let scores = match merges {
                Some(_) => None,
                None => {
                    let key = "tokenizer.ggml.scores";
                    let scores =
                        meta.per_token(key, n, |v| v.to_f32().ok(), "expected 32-bit floats")?;
                    Some(scores.ok_or_else(|| {
                        meta.corrupt(key, "missing (needed to derive the merges)")
                    })?)
                }
            };
            let parts = SentencePieceParts {
                tokens: &tokens,
                kinds: &kinds,
                scores: scores.as_deref(),
                merges: merges.as_deref(),
                unk: meta.token_id("tokenizer.ggml.unknown_token_id", n)?,
            };
            parts.build(space_prefix).map_err(corrupt)?
        };
        let add_bos = ids.add_bos.unwrap_or(default_add_bos);
        Ok(Self::assemble(inner, table, detok, &ids, add_bos))
    }

    /// Loads a `tokenizer.json` for the model in `content` (a GGUF file's metadata). BOS and EOS
    /// ids and `add_bos_token` come from the GGUF metadata; where the file does not say whether
    /// to add BOS, the tokenizer.json's post-processor decides.
    pub(crate) fn from_tokenizer_json(path: &Path, content: &Content) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |detail: String| EngineError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&raw).map_err(|e| corrupt(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| corrupt(e.to_string()))?;

        let detok = json_detok(&inner).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "{}: tokenizer.json decoder is neither byte-level nor SentencePiece-style",
                path.display()
            ))
        })?;
        let vocab = inner.get_vocab(true);
        let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut spellings = vec![None; n];
        for (s, &id) in &vocab {
            spellings[id as usize] = Some(s.as_str());
        }
        let mut kinds = vec![TokenKind::Normal; n];
        for (id, added) in inner.get_added_tokens_decoder() {
            kinds[id as usize] = if added.special {
                TokenKind::Control
            } else {
                TokenKind::UserDefined
            };
        }
        let mut table = TokenTable::with_capacity(n);
        for (spelling, kind) in spellings.iter().zip(&mut kinds) {
            let spelling = spelling.unwrap_or("");
            if spelling.is_empty() {
                *kind = TokenKind::Unused;
            } else if *kind == TokenKind::Normal
                && matches!(detok, Detok::SentencePiece { .. })
                && parse_byte_token(spelling).is_some()
            {
                *kind = TokenKind::Byte;
            }
            table.push(spelling, *kind, detok).map_err(corrupt)?;
        }

        let meta = Meta { content, path };
        let ids = SpecialIds::read(&meta, n)?;
        let add_bos = match (ids.add_bos, ids.bos) {
            (Some(add), _) => add,
            (None, Some(bos)) => inner
                .encode_fast("", true)
                .map(|e| e.get_ids().first() == Some(&bos))
                .unwrap_or(false),
            (None, None) => false,
        };
        Ok(Self::assemble(inner, table, detok, &ids, add_bos))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        table: TokenTable,
        detok: Detok,
        ids: &SpecialIds,
        add_bos: bool,
    ) -> Self {
        let mut end_tokens = vec![ids.eos];
        let special = |id: u32| {
            matches!(
                table.kind(id),
                Some(TokenKind::Control | TokenKind::UserDefined)
            )
        };
        let named = END_OF_TURN_MARKERS
            .iter()
            .filter_map(|m| inner.token_to_id(m))
            .filter(|&id| special(id));
        for id in ids.extra_ends.iter().copied().chain(named) {
            if !end_tokens.contains(&id) {
                end_tokens.push(id);
            }
        }
        Self {
            inner,
            table,
            detok,
            bos: ids.bos,
            add_bos: add_bos && ids.bos.is_some(),
            eos: ids.eos,
            end_tokens,
        }
    }

    /// The beginning-of-sequence id, if the model has one.
    pub(crate) fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`encode`](Self::encode) puts BOS in front of the text.
    #[cfg(test)]
    pub(crate) fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The end-of-sequence id.
    pub(crate) fn eos(&self) -> u32 {
        self.eos
    }

    /// Ids that end generation: EOS first, then the end-of-turn tokens the vocabulary has as
    /// special tokens (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub(crate) fn end_tokens(&self) -> &[u32] {
        &self.end_tokens
    }

    /// Number of token ids (the model's logits width should match).
    pub(crate) fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// A token's spelling in the vocabulary (`▁Hello`, `ĠHello`, `<|im_end|>`); `None` for an
    /// id outside the vocabulary.
    pub(crate) fn token_str(&self, id: u32) -> Option<&str> {
        self.table.spelling(id)
    }

    /// The spellings of the control tokens that [`encode`](Self::encode) matches whole in
    /// raw text (`<|im_start|>`, `<start_of_turn>`, ...), longest first.
    pub(crate) fn control_markers(&self) -> Vec<String> {
        let mut out: Vec<String> = (0..self.table.len())
            .filter_map(|i| u32::try_from(i).ok())
            .filter(|&id| {
                matches!(
                    self.table.kind(id),
                    Some(TokenKind::Control | TokenKind::Unknown)
                )
            })
            .filter_map(|id| {
                let text = self.table.spelling(id)?;
                (!text.is_empty() && self.inner.token_to_id(text) == Some(id))
                    .then(|| text.to_owned())
            })
            .collect();
        out.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        out.dedup();
        out
    }

    /// The id of the token spelled `text` in the vocabulary (or added as a marker).
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Token ids for `text`. Special-token markers in the text (`<|im_start|>`, `<bos>`) are
    /// recognised as their single ids. When [`add_bos`](Self::add_bos), BOS is put in front,
    /// unless the text already begins with the BOS marker: a rendered chat template that writes
    /// `{{ bos_token }}` itself (Gemma, Llama 3) thus gets exactly one BOS. (Hugging Face and
    /// llama.cpp would double it; no model wants that.)
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::InvalidInput(format!("tokenizing: {e}")))?;
        let ids = enc.get_ids();
        match self.bos {
            Some(bos) if self.add_bos && ids.first() != Some(&bos) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// The text token `id` stands for on its own, leading space included (`" yes"`); control
    /// tokens appear as their markers, a piece of a character as U+FFFD, an id outside the
    /// vocabulary as nothing.
    pub(crate) fn token_text(&self, id: u32) -> String {
        match self.piece(id, false) {
            Ok(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        }
    }

    /// The text of `ids`. With `skip_special`, control tokens (BOS, EOS, `<|im_end|>`, ...) are
    /// left out; otherwise they appear as their markers. Bytes that do not form UTF-8 become
    /// U+FFFD. Fails with `InvalidInput` for an id outside the vocabulary.
    #[cfg(test)]
    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut first = true;
        for &id in ids {
            let Some(piece) = self.piece(id, skip_special)? else {
                continue;
            };
            bytes.extend_from_slice(self.strip_first_space(piece, &mut first));
        }
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// The bytes token `id` stands for; `None` when skipped as special.
    fn piece(&self, id: u32, skip_special: bool) -> Result<Option<&[u8]>> {
        let (Some(bytes), Some(kind)) = (self.table.bytes(id), self.table.kind(id)) else {
            return Err(EngineError::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {}",
                self.vocab_size()
            )));
        };
        let special = matches!(kind, TokenKind::Control | TokenKind::Unknown);
        Ok((!(skip_special && special)).then_some(bytes))
    }

    /// Drops the space that `add_space_prefix` put before the text, from the first piece.
    fn strip_first_space<'p>(&self, piece: &'p [u8], first: &mut bool) -> &'p [u8] {
        if !std::mem::replace(first, false) {
            return piece;
        }
        match (self.detok, piece) {
            (
                Detok::SentencePiece {
                    strip_first_space: true,
                },
                [b' ', rest @ ..],
            ) => rest,
            _ => piece,
        }
    }
}

/// Turns a sequence's token ids into text one token at a time. One per sequence.
///
/// A token can end inside a UTF-8 character (byte-level BPE pieces, `<0xXX>` byte tokens); those
/// bytes are held back until the character completes, so every piece of text returned is whole.
/// The concatenation of everything [`push`](Self::push) and [`finish`](Self::finish) return
/// equals [`GenTokenizer::decode`] of all ids with special tokens skipped. Only the held-back
/// bytes (at most 3) are kept; no token is decoded twice.
#[derive(Debug)]
pub(crate) struct IncrementalDecoder {
    /// Bytes of an unfinished UTF-8 character.
    pending: Vec<u8>,
    /// No text piece seen yet (for `add_space_prefix` stripping).
    first: bool,
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalDecoder {
    pub(crate) fn new() -> Self {
        Self {
            pending: Vec::with_capacity(16),
            first: true,
        }
    }

    /// Adds token `id`; returns the text it completes, or `None` when it completes none (a
    /// special token, or bytes of an unfinished character). Fails with `InvalidInput` for an
    /// id outside the vocabulary.
    pub(crate) fn push(&mut self, tok: &GenTokenizer, id: u32) -> Result<Option<String>> {
        let Some(piece) = tok.piece(id, true)? else {
            return Ok(None);
        };
        let piece = tok.strip_first_space(piece, &mut self.first);
        if self.pending.is_empty() {
            // The common case: a token made of whole characters.
            if let Ok(s) = std::str::from_utf8(piece) {
                return Ok((!s.is_empty()).then(|| s.to_owned()));
            }
        }
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        let mut done = 0;
        while done < self.pending.len() {
            let rest = &self.pending[done..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    done = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        // Invalid bytes: one U+FFFD each run, as `from_utf8_lossy` does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            done += valid + bad;
                        }
                        // An unfinished character at the end: hold it back.
                        None => {
                            done += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..done);
        Ok((!out.is_empty()).then_some(out))
    }

    /// Ends the sequence: an unfinished character left over becomes U+FFFD, as in
    /// [`GenTokenizer::decode`].
    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(out)
    }
}

/// The decoding scheme a `tokenizer.json` decoder implies.
fn json_detok(tk: &tokenizers::Tokenizer) -> Option<Detok> {
    let decoder = serde_json::to_value(tk.get_decoder()?).ok()?;
    let mut types = Vec::new();
    collect_types(&decoder, &mut types);
    let has = |t: &str| types.iter().any(|(ty, _)| ty == t);
    if has("ByteLevel") {
        return Some(Detok::ByteLevel);
    }
    if has("ByteFallback") || has("Metaspace") || has("Replace") {
        let strip = types.iter().any(|(ty, prepend)| {
            ty == "Strip" || (ty == "Metaspace" && prepend.as_deref() != Some("never"))
        });
        return Some(Detok::SentencePiece {
            strip_first_space: strip,
        });
    }
    None
}

/// Every `type` in a serialized decoder (sequences flattened), with a Metaspace's
/// `prepend_scheme`.
fn collect_types(v: &serde_json::Value, out: &mut Vec<(String, Option<String>)>) {
    if let Some(map) = v.as_object() {
        if let Some(ty) = map.get("type").and_then(|t| t.as_str()) {
            let prepend = map
                .get("prepend_scheme")
                .and_then(|p| p.as_str())
                .map(str::to_owned);
            out.push((ty.to_owned(), prepend));
        }
        map.values().for_each(|x| collect_types(x, out));
    } else if let Some(items) = v.as_array() {
        items.iter().for_each(|x| collect_types(x, out));
    }
}

/// Whether a token may be produced by merging: text tokens only (control markers are matched
/// whole, byte tokens are a fallback, never a merge result).
fn mergeable(kind: TokenKind) -> bool {
    matches!(kind, TokenKind::Normal | TokenKind::UserDefined)
}

/// Adds control tokens as special and user-defined ones as plain added tokens, each matched
/// whole in the raw text. A token whose text maps to another id (a duplicate spelling) is
/// skipped, so added ids always equal the file's ids.
fn add_marker_tokens(tk: &mut tokenizers::Tokenizer, table: &TokenTable) -> Result<(), String> {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for id in 0..offset(table.len())? {
        let (Some(kind), Some(text)) = (table.kind(id), table.spelling(id)) else {
            continue;
        };
        let (list, is_special) = match kind {
            TokenKind::Control | TokenKind::Unknown => (&mut special, true),
            TokenKind::UserDefined => (&mut plain, false),
            TokenKind::Normal | TokenKind::Unused | TokenKind::Byte => continue,
        };
        // A space run respelled for the BPE, or a duplicate spelling, maps to no or another id.
        if text.is_empty() || tk.token_to_id(text) != Some(id) {
            continue;
        }
        list.push(AddedToken::from(text, is_special).normalized(false));
    }
    tk.add_special_tokens(special).map_err(|e| e.to_string())?;
    tk.add_tokens(plain).map_err(|e| e.to_string())?;
    Ok(())
}

/// `tokenizer.ggml.merges` entries, `"left right"` each.
fn parse_merges(merges: &[&str]) -> Result<Merges, String> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| format!("metadata tokenizer.ggml.merges[{i}] {m:?} is not \"a b\""))
        })
        .collect()
}

/// The pieces of a byte-level BPE tokenizer read from GGUF metadata.
struct ByteLevelParts<'a> {
    tokens: &'a [&'a str],
    kinds: &'a [TokenKind],
    merges: &'a [&'a str],
    pre: &'a str,
}

impl ByteLevelParts<'_> {
    fn build(&self, space_prefix: bool) -> Result<(tokenizers::Tokenizer, TokenTable), String> {
        let mut table = TokenTable::with_capacity(self.tokens.len());
        let mut vocab = Vocab::with_capacity(self.tokens.len());
        for (id, (&t, &kind)) in self.tokens.iter().zip(self.kinds).enumerate() {
            table.push(t, kind, Detok::ByteLevel)?;
            vocab.entry(t.to_owned()).or_insert(offset(id)?);
        }
        let merges = parse_merges(self.merges)?;
        let (regexes, ignore_merges) = split_regexes(self.pre).unwrap_or_else(|| {
            tracing::warn!(
                pre = self.pre,
                "unknown tokenizer.ggml.pre; splitting text with the GPT-2 regex"
            );
            (&[GPT2_SPLIT], false)
        });
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| format!("metadata tokenizer.ggml.merges: {e}"))?;
        let mut steps = Vec::with_capacity(regexes.len() + 1);
        for r in regexes {
            let split = Split::new(
                SplitPattern::Regex((*r).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("split regex: {e}"))?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            space_prefix,
            false,
            false,
        )));
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(PreSequence::new(steps)));
        tk.with_decoder(Some(ByteLevel::default()));
        add_marker_tokens(&mut tk, &table)?;
        Ok((tk, table))
    }
}

/// The pieces of a SentencePiece-style tokenizer read from GGUF metadata.
struct SentencePieceParts<'a> {
    tokens: &'a [&'a str],
    kinds: &'a [TokenKind],
    /// Per-token scores, when merges are to be derived.
    scores: Option<&'a [f32]>,
    /// Merges given by the file (newer converters write them for SentencePiece BPE too).
    merges: Option<&'a [&'a str]>,
    unk: Option<u32>,
}

/// A token that is a run of two or more spaces: Gemma files store these user-defined tokens
/// with real spaces, but text reaches the BPE with spaces already turned into `▁`. They are
/// respelled `▁▁…` so that runs of spaces are tokenized by merging, like every other text.
fn space_run(t: &str) -> bool {
    t.len() >= 2 && t.bytes().all(|b| b == b' ')
}

impl SentencePieceParts<'_> {
    fn build(&self, space_prefix: bool) -> Result<(tokenizers::Tokenizer, TokenTable), String> {
        let detok = Detok::SentencePiece {
            strip_first_space: space_prefix,
        };
        let n = self.tokens.len();
        let mut table = TokenTable::with_capacity(n);
        let mut vocab = Vocab::with_capacity(n);
        let mut bpe_spelling: Vec<Cow<'_, str>> = Vec::with_capacity(n);
        for (id, (&t, &kind)) in self.tokens.iter().zip(self.kinds).enumerate() {
            table.push(t, kind, detok)?;
            let spelling = if kind == TokenKind::UserDefined && space_run(t) {
                Cow::Owned(SPACE_MARK.to_string().repeat(t.len()))
            } else {
                Cow::Borrowed(t)
            };
            vocab.entry(spelling.to_string()).or_insert(offset(id)?);
            bpe_spelling.push(spelling);
        }
        let merges: Merges = match (self.merges, self.scores) {
            (Some(given), _) => parse_merges(given)?,
            (None, Some(scores)) => derive_merges(&bpe_spelling, self.kinds, scores, &vocab)?,
            (None, None) => return Err("metadata tokenizer.ggml.scores: missing".to_owned()),
        };
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = self.unk {
            builder = builder.unk_token(bpe_spelling[unk as usize].to_string());
        }
        let bpe = builder
            .build()
            .map_err(|e| format!("building the BPE model: {e}"))?;

        let mut tk = tokenizers::Tokenizer::new(bpe);
        let prepend = if space_prefix {
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        tk.with_pre_tokenizer(Some(Metaspace::new(SPACE_MARK, prepend, false)));
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new(SPACE_MARK.to_string(), " ")
                .map_err(|e| e.to_string())?
                .into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tk.with_decoder(Some(DecoderSequence::new(decoders)));
        add_marker_tokens(&mut tk, &table)?;
        Ok((tk, table))
    }
}

/// SentencePiece BPE merges recovered from a vocabulary with scores.
///
/// Pieces `a` and `b` merge when `a`, `b` and `ab` are all tokens. Merges are ranked as
/// SentencePiece applies them: by the score of `ab`, best first, ties by token id; the splits of
/// one token by longer left piece first. User-defined tokens (whole-matched in SentencePiece and
/// llama.cpp; here, runs of spaces) rank ahead of all scored tokens, in file order: their scores
/// are placeholders (Gemma gives them -1000, worse than some real tokens).
fn derive_merges(
    spellings: &[Cow<'_, str>],
    kinds: &[TokenKind],
    scores: &[f32],
    vocab: &Vocab,
) -> Result<Merges, String> {
    offset(spellings.len())?;
    // (group, score, id, split byte offset) per candidate merge; ids and offsets fit in u32
    // (checked above; a token is shorter than the 4 GiB table).
    let mut found: Vec<(u8, f32, u32, u32)> = spellings
        .par_iter()
        .enumerate()
        .flat_map_iter(|(id, s)| {
            let id32 = id as u32;
            let keep = mergeable(kinds[id]) && vocab.get(s.as_ref()) == Some(&id32);
            let group = u8::from(kinds[id] != TokenKind::UserDefined);
            s.char_indices()
                .skip(1)
                .filter(move |&(i, _)| {
                    keep && vocab.contains_key(&s[..i]) && vocab.contains_key(&s[i..])
                })
                .map(move |(i, _)| (group, scores[id], id32, i as u32))
        })
        .collect();
    found.par_sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| {
                if a.0 == 0 {
                    std::cmp::Ordering::Equal
                } else {
                    b.1.total_cmp(&a.1)
                }
            })
            .then_with(|| a.2.cmp(&b.2))
            .then_with(|| b.3.cmp(&a.3))
    });
    Ok(found
        .par_iter()
        .map(|&(_, _, id, at)| {
            let (a, b) = spellings[id as usize].split_at(at as usize);
            (a.to_owned(), b.to_owned())
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use candle_core::quantized::gguf_file::VersionedMagic;

    use super::*;

    pub(crate) const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub(crate) const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

    /// A real model's metadata and the tokenizer built from it.
    pub(crate) struct Loaded {
        pub(crate) content: Content,
        pub(crate) tok: GenTokenizer,
        pub(crate) build_time: Duration,
    }

    /// `$HEARTH_MODELS/<name>`, else `<repo>/models/<name>`; panics with what to do if absent.
    pub(crate) fn model_path(name: &str) -> PathBuf {
        let dir = std::env::var_os("HEARTH_MODELS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
            PathBuf::from,
        );
        let p = dir.join(name);
        assert!(
            p.is_file(),
            "{} missing: run scripts/fetch-models.sh or set HEARTH_MODELS",
            p.display()
        );
        p
    }

    fn load(name: &str) -> Loaded {
        let path = model_path(name);
        let file = std::fs::File::open(&path).expect("open model");
        let content = Content::read(&mut std::io::BufReader::new(file)).expect("read GGUF");
        let start = Instant::now();
        let tok = GenTokenizer::from_gguf(&content, &path).expect("build tokenizer");
        let build_time = start.elapsed();
        eprintln!("{name}: tokenizer built in {build_time:?}");
        Loaded {
            content,
            tok,
            build_time,
        }
    }

    pub(crate) fn smollm() -> &'static Loaded {
        static M: OnceLock<Loaded> = OnceLock::new();
        M.get_or_init(|| load(SMOLLM))
    }

    pub(crate) fn gemma() -> &'static Loaded {
        static M: OnceLock<Loaded> = OnceLock::new();
        M.get_or_init(|| load(GEMMA))
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        models: HashMap<String, RefModel>,
    }

    #[derive(serde::Deserialize)]
    struct RefModel {
        add_bos: bool,
        bos: u32,
        cases: Vec<RefCase>,
    }

    #[derive(serde::Deserialize)]
    struct RefCase {
        text: String,
        ids: Vec<u32>,
        decoded: String,
    }

    fn reference(model: &str) -> RefModel {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/generate/tokenizer_reference.json");
        let raw = std::fs::read_to_string(&path).expect("read tokenizer reference");
        let mut r: Reference = serde_json::from_str(&raw).expect("parse tokenizer reference");
        r.models.remove(model).expect("model in reference")
    }

    /// Every push concatenated, then `finish`.
    fn incremental(tok: &GenTokenizer, ids: &[u32]) -> (String, usize) {
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        let mut held = 0;
        for &id in ids {
            match dec.push(tok, id).expect("push") {
                Some(s) => {
                    assert!(!s.is_empty(), "push returned an empty string");
                    out.push_str(&s);
                }
                None => held += 1,
            }
        }
        out.extend(dec.finish());
        (out, held)
    }

    /// Ids, decoding, round trip and incremental decoding against the transformers reference.
    fn check_against_reference(loaded: &Loaded, model: &str) {
        let tok = &loaded.tok;
        let r = reference(model);
        assert_eq!(tok.add_bos(), r.add_bos, "add_bos");
        assert_eq!(tok.bos(), Some(r.bos), "bos");
        let mut held_total = 0;
        for case in &r.cases {
            let ids = tok.encode(&case.text).expect("encode");
            assert_eq!(ids, case.ids, "ids for {:?}", case.text);
            let decoded = tok.decode(&ids, true).expect("decode");
            assert_eq!(decoded, case.decoded, "decode of {:?}", case.text);
            // The tokenizers library's own decoder agrees with the byte tables.
            let theirs = tok.inner.decode(&ids, true).expect("tokenizers decode");
            assert_eq!(decoded, theirs, "tokenizers decode of {:?}", case.text);
            // Round trip with markers kept: everything but the added BOS comes back.
            let body = if tok.add_bos() { &ids[1..] } else { &ids[..] };
            assert_eq!(
                tok.decode(body, false).expect("decode"),
                case.text,
                "round trip"
            );
            let (streamed, held) = incremental(tok, &ids);
            assert_eq!(streamed, decoded, "incremental decode of {:?}", case.text);
            held_total += held;
        }
        // Some token in the corpus ended inside a character and was held back.
        assert!(held_total > 0, "no text split a character across tokens");
    }

    #[test]
    fn smollm_matches_transformers() {
        check_against_reference(smollm(), "smollm2");
    }

    #[test]
    fn gemma_matches_transformers() {
        check_against_reference(gemma(), "gemma3");
    }

    #[test]
    fn builds_fast() {
        // Catches a blow-up (a quadratic merge derivation would take minutes), not a regression
        // of a few percent: these tests share 2 loaded cores with the rest of the suite, where
        // the Gemma build (262k tokens, 515k merges) takes 0.5-2 s.
        let bound = Duration::from_secs(15);
        assert!(smollm().build_time < bound, "{:?}", smollm().build_time);
        assert!(gemma().build_time < bound, "{:?}", gemma().build_time);
    }

    #[test]
    fn smollm_accessors() {
        let tok = &smollm().tok;
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!((tok.bos(), tok.add_bos(), tok.eos()), (Some(1), false, 2));
        assert_eq!(tok.token_str(1), Some("<|im_start|>"));
        assert_eq!(tok.token_str(504), Some("The"));
        assert_eq!(tok.token_str(49152), None);
        // <|im_end|> is EOS here; <|endoftext|> also ends a turn.
        assert_eq!(tok.end_tokens(), &[2, 0]);
        assert_eq!(tok.encode("<|im_start|>").expect("encode"), [1]);
    }

    #[test]
    fn gemma_accessors_and_markers() {
        let tok = &gemma().tok;
        assert_eq!(tok.vocab_size(), 262144);
        assert_eq!((tok.bos(), tok.add_bos(), tok.eos()), (Some(2), true, 1));
        assert_eq!(tok.token_str(106), Some("<end_of_turn>"));
        assert_eq!(tok.token_str(248), Some("<0x0A>"));
        assert_eq!(tok.end_tokens(), &[1, 106]);
        assert_eq!(tok.encode("<start_of_turn>").expect("encode"), [2, 105]);
        // A text that starts with the BOS marker gets no second BOS.
        assert_eq!(
            tok.encode("<bos>Hi").expect("encode"),
            tok.encode("Hi").expect("encode")
        );
        // Special markers are skipped or kept on request.
        let ids = tok
            .encode("<start_of_turn>user\nHi<end_of_turn>")
            .expect("encode");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nHi");
        assert_eq!(
            tok.decode(&ids, false).expect("decode"),
            "<bos><start_of_turn>user\nHi<end_of_turn>"
        );
        assert!(matches!(
            tok.decode(&[262144], true),
            Err(EngineError::InvalidInput(_))
        ));
    }

    #[test]
    fn incremental_holds_split_characters_and_replaces_bad_bytes() {
        let tok = &gemma().tok;
        let byte = |b: u8| {
            tok.inner
                .token_to_id(&format!("<0x{b:02X}>"))
                .expect("byte token")
        };
        let a = tok.encode("a").expect("encode")[1];
        // "€" = E2 82 AC in three byte tokens: nothing until the last one.
        let mut dec = IncrementalDecoder::new();
        assert_eq!(dec.push(tok, byte(0xE2)).expect("push"), None);
        assert_eq!(dec.push(tok, byte(0x82)).expect("push"), None);
        assert_eq!(
            dec.push(tok, byte(0xAC)).expect("push").as_deref(),
            Some("€")
        );
        assert_eq!(dec.finish(), None);
        // An interrupted character becomes one U+FFFD, as in decode.
        let cases: [&[u32]; 4] = [
            &[byte(0xE2), byte(0x82), a],
            &[byte(0xFF), a, byte(0xC3)],
            &[
                byte(0xF0),
                byte(0x9F),
                byte(0x98),
                byte(0x80),
                byte(0x80),
                a,
            ],
            &[byte(0xC3), byte(0xA9), byte(0xE2)],
        ];
        for ids in cases {
            let want = tok.decode(ids, true).expect("decode");
            assert_eq!(incremental(tok, ids).0, want, "{ids:?}");
            assert!(want.contains(char::REPLACEMENT_CHARACTER), "{ids:?}");
        }
        // Special tokens give no text.
        let mut dec = IncrementalDecoder::new();
        assert_eq!(dec.push(tok, 106).expect("push"), None);
        assert!(dec.push(tok, 262144).is_err());
    }

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let mut seen = [false; 256];
        for c in (0..0x200u32).filter_map(char::from_u32) {
            if let Some(b) = byte_level_byte(c) {
                assert!(!seen[b as usize], "byte {b:#04x} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('ĉ'), Some(b'\t'));
        assert_eq!(byte_level_byte('ġ'), Some(0x7F));
        assert_eq!(byte_level_byte('ł'), Some(0xA0));
        assert_eq!(byte_level_byte('Ń'), Some(0xAD));
        assert_eq!(byte_level_byte('A'), Some(b'A'));
    }

    pub(crate) fn content(metadata: Vec<(&str, Value)>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    /// A small SentencePiece vocabulary: specials, the 256 byte tokens, then `extra` with scores.
    pub(crate) fn tiny_spm(extra: &[(&str, f32)]) -> Content {
        let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
        let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
        let mut scores = vec![Value::F32(0.0); 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(Value::I32(6));
            scores.push(Value::F32(0.0));
        }
        for (t, s) in extra {
            tokens.push((*t).to_owned());
            types.push(Value::I32(1));
            scores.push(Value::F32(*s));
        }
        content(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.scores", Value::Array(scores)),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ])
    }

    fn pieces(tok: &GenTokenizer, text: &str) -> Vec<String> {
        let ids = tok.encode(text).expect("encode");
        ids.iter()
            .map(|&id| tok.token_str(id).expect("token").to_owned())
            .collect()
    }

    #[test]
    fn derived_merges_follow_scores() {
        let path = Path::new("tiny.gguf");
        let vocab = |ab: f32, bc: f32| {
            let c = tiny_spm(&[
                ("▁", -1.0),
                ("a", -2.0),
                ("b", -3.0),
                ("c", -4.0),
                ("ab", ab),
                ("bc", bc),
            ]);
            GenTokenizer::from_gguf(&c, path).expect("build")
        };
        // The better-scored pair merges first, whichever side it is on.
        assert_eq!(pieces(&vocab(-5.0, -6.0), "abc"), ["<s>", "ab", "c"]);
        assert_eq!(pieces(&vocab(-6.0, -5.0), "abc"), ["<s>", "a", "bc"]);
        // Missing characters fall back to bytes; spaces become ▁; decoding restores both.
        let tok = vocab(-5.0, -6.0);
        assert_eq!(pieces(&tok, "a é"), ["<s>", "a", "▁", "<0xC3>", "<0xA9>"]);
        let ids = tok.encode("a é").expect("encode");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "a é");
    }

    fn expect_corrupt(c: &Content, key: &str) {
        match GenTokenizer::from_gguf(c, Path::new("x.gguf")) {
            Err(EngineError::Corrupt { detail, .. }) => {
                assert!(detail.contains(key), "{detail:?} does not name {key}");
            }
            other => panic!("expected Corrupt naming {key}, got {other:?}"),
        }
    }

    #[test]
    fn bad_metadata_is_reported() {
        let base = |model: &str| {
            vec![
                ("tokenizer.ggml.model", Value::String(model.into())),
                ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
                ("tokenizer.ggml.eos_token_id", Value::U32(0)),
            ]
        };
        match GenTokenizer::from_gguf(&content(base("bert")), Path::new("x.gguf")) {
            Err(EngineError::Unsupported(m)) => assert!(m.contains("\"bert\""), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        expect_corrupt(&content(vec![]), "tokenizer.ggml.model");
        expect_corrupt(&content(base("llama")), "tokenizer.ggml.scores");
        expect_corrupt(&content(base("gpt2")), "tokenizer.ggml.merges");
        let mut m = base("gpt2");
        m.push(("tokenizer.ggml.merges", strings(&["a b"])));
        m[2].1 = Value::U32(7);
        expect_corrupt(&content(m), "tokenizer.ggml.eos_token_id");
        let mut m = base("gpt2");
        m.push(("tokenizer.ggml.merges", strings(&["a b"])));
        m[1].1 = Value::U32(3);
        expect_corrupt(&content(m), "tokenizer.ggml.tokens");
        let mut m = base("gpt2");
        m.push(("tokenizer.ggml.merges", strings(&["a c"])));
        expect_corrupt(&content(m), "tokenizer.ggml.merges");
        // A valid tiny byte-level tokenizer builds and merges.
        let mut m = base("gpt2");
        m.push(("tokenizer.ggml.merges", strings(&["a b"])));
        let tok = GenTokenizer::from_gguf(&content(m), Path::new("x.gguf")).expect("build");
        assert_eq!(tok.encode("ab").expect("encode"), [2]);
    }

    /// Saves the GGUF-built tokenizer as a tokenizer.json, loads it back through
    /// `from_tokenizer_json`, and checks it against the reference.
    fn check_json_round_trip(loaded: &Loaded, model: &str) {
        let dir = std::env::temp_dir().join(format!("hearth-tok-{model}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("tokenizer.json");
        loaded.tok.inner.save(&path, false).expect("save");
        let tok = GenTokenizer::from_tokenizer_json(&path, &loaded.content);
        std::fs::remove_dir_all(&dir).ok();
        let tok = tok.expect("load json");
        assert_eq!(tok.detok, loaded.tok.detok);
        assert_eq!(tok.vocab_size(), loaded.tok.vocab_size());
        assert_eq!(tok.end_tokens(), loaded.tok.end_tokens());
        assert_eq!(
            (tok.bos(), tok.add_bos()),
            (loaded.tok.bos(), loaded.tok.add_bos())
        );
        for case in reference(model).cases {
            let ids = tok.encode(&case.text).expect("encode");
            assert_eq!(ids, case.ids, "{:?}", case.text);
            assert_eq!(tok.decode(&ids, true).expect("decode"), case.decoded);
            assert_eq!(incremental(&tok, &ids).0, case.decoded);
        }
    }

    #[test]
    fn smollm_tokenizer_json_agrees_with_gguf() {
        check_json_round_trip(smollm(), "smollm2");
        let missing =
            GenTokenizer::from_tokenizer_json(Path::new("/nonexistent/t.json"), &smollm().content);
        assert!(matches!(missing, Err(EngineError::Io { .. })));
    }

    #[test]
    fn gemma_tokenizer_json_agrees_with_gguf() {
        check_json_round_trip(gemma(), "gemma3");
    }
}
