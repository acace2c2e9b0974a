//! Token ids in, sentence vectors out. The sequences of a batch are sorted by length and cut
//! into sub-batches (packed on the CPU; padded only to their longest member elsewhere), each
//! one forward pass through the BERT encoder, then mean pooling and L2 normalisation; rows go
//! back in input order.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use rayon::prelude::*;

use super::Role;
use super::batcher::BatchModel;
use super::bert::{Bert, BertConfig, model_op};
use super::e5s::is_e5s;
use crate::config::FETCH_HINT;
use crate::error::{EngineError, Result};
use crate::generate::{GemmaEncoder, is_gemma_dir};
use crate::tokenizer::Tokenizer;

/// Padding waste (token slots) a sub-batch may always absorb; below this, merging sequences is
/// cheaper than running another forward pass.
const PAD_SLACK_TOKENS: usize = 32;
/// Padding waste a sub-batch may absorb as a fraction of its real tokens: 1/8.
const PAD_SLACK_SHIFT: u32 = 3;
/// Most token slots (sequences × padded length) in one forward pass; bounds the memory of the
/// attention scores and keeps activations closer to cache.
const MAX_GROUP_SLOTS: usize = 2048;
/// Most tokens of a text EmbeddingGemma sees.
const GEMMA_MAX_TOKENS: usize = 512;

/// The tokenizer, the encoder and the device they run on. Not thread-affine: the batcher's
/// worker calls it from inside its rayon pool.
pub(crate) struct SentenceEncoder {
    tokenizer: Arc<Tokenizer>,
    backbone: Backbone,
    device: Device,
    max_tokens: usize,
    /// The prefixes of a query and of a passage ([`Role`]).
    prompts: [String; 2],
}

/// The network under the pooling.
enum Backbone {
    Bert(Bert),
    /// EmbeddingGemma: its own pooling and dense modules, on the CPU.
    Gemma(GemmaEncoder),
}

impl Backbone {
    fn dim(&self) -> usize {
        match self {
            Self::Bert(b) => b.hidden_size(),
            Self::Gemma(g) => g.dim(),
        }
    }

    fn prefers_packed(&self) -> bool {
        match self {
            Self::Bert(b) => b.prefers_packed(),
            Self::Gemma(_) => true,
        }
    }
}

impl SentenceEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from the directory `path`,
    /// or the E5S1 model file `path` (`e5s.rs`); `int8`: the dense layers run in int8 on the
    /// CPU. `max_tokens` is capped by the model's positions.
    pub(crate) fn load(path: &Path, device: Device, max_tokens: usize, int8: bool) -> Result<Self> {
        if path.is_dir() && is_gemma_dir(path) {
            // EmbeddingGemma runs on the generator's CPU kernels.
            let tokenizer_path = path.join("tokenizer.json");
            if !tokenizer_path.is_file() {
                return Err(EngineError::ModelMissing {
                    path: tokenizer_path,
                    hint: FETCH_HINT,
                });
            }
            let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
            let gemma = GemmaEncoder::load(path, int8)?;
            let prompts = gemma.prompts().clone();
            // 512 tokens, as for multilingual-e5: chunks are far shorter, and attention grows
            // with the square of the length.
            let max_tokens = GEMMA_MAX_TOKENS.min(gemma.max_positions());
            return Ok(Self {
                tokenizer: Arc::new(tokenizer),
                backbone: Backbone::Gemma(gemma),
                device: Device::Cpu,
                max_tokens,
                prompts,
            });
        }
        let e5 = path.is_file() && is_e5s(path);
        let (tokenizer, bert) = if e5 {
            let (file, tokenizer) = super::e5s::load(path, &device)?;
            (tokenizer, Bert::load_e5s(file, path, &device, int8)?)
        } else {
            for file in ["config.json", "tokenizer.json", "model.safetensors"] {
                let path = path.join(file);
                if !path.is_file() {
                    return Err(EngineError::ModelMissing {
                        path,
                        hint: FETCH_HINT,
                    });
                }
            }
            let cfg = BertConfig::from_file(&path.join("config.json"))?;
            (
                Tokenizer::from_file(&path.join("tokenizer.json"))?,
                Bert::load(cfg, &path.join("model.safetensors"), &device, int8)?,
            )
        };
        // multilingual-e5 was trained with these prefixes and 512 tokens (its model card and
        // sentence-transformers configuration); MiniLM-style models use neither.
        let (max_tokens, prompts) = if e5 {
            (512, ["query: ".to_owned(), "passage: ".to_owned()])
        } else {
            (max_tokens, [String::new(), String::new()])
        };
        let max_tokens = max_tokens.min(bert.max_positions());
        Ok(Self {
            tokenizer: Arc::new(tokenizer),
            backbone: Backbone::Bert(bert),
            device,
            max_tokens,
            prompts,
        })
    }

    /// The tokenizer.
    pub(crate) fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The prefix a text in `role` gets before it is tokenized.
    pub(crate) fn prompt(&self, role: Role) -> &str {
        &self.prompts[role as usize]
    }

    /// Most tokens of a text the model sees, special tokens included.
    pub(crate) fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The device the model runs on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Embeds token sequences (each non-empty, at most `max_tokens` long); returns the rows,
    /// flat, in input order.
    fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let dim = self.backbone.dim();
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let lens: Vec<usize> = order.iter().map(|&i| seqs[i].len()).collect();
        let mut out = vec![0f32; seqs.len() * dim];
        let mut start = 0;
        for end in plan_groups(&lens, self.backbone.prefers_packed()) {
            let group: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| seqs[i].as_slice())
                .collect();
            let rows = self.embed_group(&group)?;
            for (k, &i) in order[start..end].iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&rows[k * dim..(k + 1) * dim]);
            }
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over sequences of similar length.
    fn embed_group(&self, group: &[&[u32]]) -> Result<Vec<f32>> {
        match &self.backbone {
            Backbone::Bert(b) => model_op(b.embed(group, b.prefers_packed())),
            Backbone::Gemma(g) => g.embed(group),
        }
    }
}

impl BatchModel for SentenceEncoder {
    type Prepared = Vec<u32>;

    fn dim(&self) -> usize {
        self.backbone.dim()
    }

    /// Tokenizes `texts` in parallel (on the current rayon pool), truncating each.
    fn prepare(&self, texts: &[String]) -> Vec<Result<Vec<u32>>> {
        texts
            .par_iter()
            .map(|t| self.tokenizer.encode_ids(t, self.max_tokens))
            .collect()
    }

    fn run(&self, items: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.embed_ids(items)
    }
}

/// Splits ascending sequence lengths into sub-batches `[.., end)`, returned as their ends.
/// A sub-batch holds at most `MAX_GROUP_SLOTS` token slots. Padded (`!packed`), a sequence
/// joins the current sub-batch only while the padding that adds stays within
/// `max(PAD_SLACK_TOKENS, real tokens / 8)`; packed sequences carry no padding.
fn plan_groups(lens: &[usize], packed: bool) -> Vec<usize> {
    let mut ends = Vec::new();
    let (mut start, mut real) = (0usize, 0usize);
    for (i, &len) in lens.iter().enumerate() {
        let new_real = real + len;
        let slots = if packed {
            new_real
        } else {
            (i - start + 1) * len
        };
        let slack = PAD_SLACK_TOKENS.max(new_real >> PAD_SLACK_SHIFT);
        if i > start && (slots - new_real > slack || slots > MAX_GROUP_SLOTS) {
            ends.push(i);
            start = i;
            real = len;
        } else {
            real = new_real;
        }
    }
    if start < lens.len() {
        ends.push(lens.len());
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_everything_in_order() {
        for packed in [true, false] {
            assert!(plan_groups(&[], packed).is_empty());
            assert_eq!(plan_groups(&[5], packed), vec![1]);
            // Equal lengths: one group until the slot cap.
            let same = vec![64; 200];
            let ends = plan_groups(&same, packed);
            assert_eq!(*ends.last().unwrap(), 200);
            assert!(ends.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(ends[0], MAX_GROUP_SLOTS / 64);
        }
    }

    #[test]
    fn padded_groups_split_on_large_length_jumps() {
        // Short queries and long passages never share a padded batch.
        let mut lens = vec![10; 8];
        lens.extend(vec![250; 4]);
        assert_eq!(plan_groups(&lens, false), vec![8, 12]);
        // Small differences are absorbed.
        assert_eq!(plan_groups(&[60, 61, 62, 63, 64], false), vec![5]);
        // Packed sequences carry no padding: only the size cap splits them.
        assert_eq!(plan_groups(&lens, true), vec![12]);
    }
}
