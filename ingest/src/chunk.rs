//! Token-aware chunking.
//!
//! Chunks are cut to fit the embedding model: at most `max_tokens` tokens as the model counts
//! them, special tokens included, so nothing is truncated at embedding time. Cuts prefer, in
//! order: a change of section (heading; always when it starts a new page, as each slide of a
//! presentation does), a paragraph boundary, a sentence boundary; a sentence
//! longer than a whole chunk is cut between tokens, at a space where possible. Consecutive chunks
//! of one section share up to `overlap` tokens of whole sentences.

use hearth_index::{Chunk, DocId};
use unicode_segmentation::UnicodeSegmentation;

use crate::normalize::NormalizedDoc;

/// Counts tokens the way the embedding model does.
pub trait TokenCounter: Send + Sync {
    /// Tokenizes `text` without special tokens; returns each token's end byte offset in `text`.
    fn token_ends(&self, text: &str) -> Result<Vec<usize>, String>;
    /// Special tokens the model adds around one sequence (2 for BERT: `[CLS]`, `[SEP]`).
    fn special_tokens(&self) -> usize;
}

/// Chunk size settings.
#[derive(Clone, Copy, Debug)]
pub struct ChunkParams {
    /// Maximum tokens per chunk, special tokens included.
    pub max_tokens: usize,
    /// Tokens of overlap between consecutive chunks of one section.
    pub overlap: usize,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    end: usize,
    tokens: usize,
    block: usize,
}

/// Cuts a normalised document into chunks.
pub(crate) fn chunk(
    doc_id: DocId,
    doc: &NormalizedDoc,
    counter: &dyn TokenCounter,
    params: ChunkParams,
) -> Result<Vec<Chunk>, String> {
    let specials = counter.special_tokens();
    let budget = params.max_tokens.saturating_sub(specials).max(1);
    let units = units(doc, counter, budget)?;
    let mut chunks = Vec::new();
    let mut chars = CharIndex::default();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_tokens = 0usize;

    for i in 0..units.len() {
        let u = units[i];
        if let Some(&first) = cur.first() {
            let new_block = u.block != units[i - 1].block;
            let heading_change =
                new_block && doc.blocks[u.block].heading != doc.blocks[units[first].block].heading;
            let block_rest: usize = units[i..]
                .iter()
                .take_while(|v| v.block == u.block)
                .map(|v| v.tokens)
                .sum();
            let fill = cur_tokens * 100 / budget;
            let overflow = cur_tokens + u.tokens > budget;
            // A new section that starts a new page (a slide) always starts a new chunk: a
            // slide is what users cite, however short.
            let new_page =
                new_block && doc.blocks[u.block].page != doc.blocks[units[i - 1].block].page;
            let cut = overflow
                || (heading_change && (fill >= 25 || new_page))
                || (new_block && cur_tokens + block_rest > budget && fill >= 60);
            if cut {
                chunks.push(make_chunk(
                    doc_id,
                    doc,
                    &units,
                    &cur,
                    chunks.len(),
                    specials,
                    &mut chars,
                )?);
                let mut carry = Vec::new();
                let mut carry_tokens = 0;
                if !heading_change {
                    for &j in cur.iter().rev() {
                        if carry_tokens + units[j].tokens > params.overlap
                            || carry.len() + 1 >= cur.len()
                        {
                            break;
                        }
                        carry_tokens += units[j].tokens;
                        carry.push(j);
                    }
                    carry.reverse();
                    if carry_tokens + u.tokens > budget {
                        carry.clear();
                        carry_tokens = 0;
                    }
                }
                cur = carry;
                cur_tokens = carry_tokens;
            }
        }
        cur.push(i);
        cur_tokens += u.tokens;
    }
    if !cur.is_empty() {
        chunks.push(make_chunk(
            doc_id,
            doc,
            &units,
            &cur,
            chunks.len(),
            specials,
            &mut chars,
        )?);
    }
    Ok(chunks)
}

/// Sentences of every block with their token counts; over-long sentences are split.
fn units(
    doc: &NormalizedDoc,
    counter: &dyn TokenCounter,
    budget: usize,
) -> Result<Vec<Unit>, String> {
    let mut out = Vec::new();
    for (bi, b) in doc.blocks.iter().enumerate() {
        let text = &doc.text[b.start..b.end];
        let ends = counter.token_ends(text)?;
        let count = |from: usize, to: usize| {
            ends.partition_point(|&e| e <= to) - ends.partition_point(|&e| e <= from)
        };
        for (s, sentence) in text.split_sentence_bound_indices() {
            let e = s + sentence.trim_end().len();
            if e == s {
                continue;
            }
            let tokens = count(s, e);
            if tokens <= budget {
                out.push(Unit {
                    start: b.start + s,
                    end: b.start + e,
                    tokens,
                    block: bi,
                });
                continue;
            }
            // Too long for one chunk: cut between tokens, preferring a cut before a space.
            let first = ends.partition_point(|&x| x <= s);
            let last = ends.partition_point(|&x| x <= e);
            let mut from_tok = first;
            let mut from_byte = s;
            while from_tok < last {
                let mut to_tok = (from_tok + budget).min(last);
                if to_tok < last {
                    let floor = from_tok + budget * 3 / 4;
                    if let Some(t) = (floor..to_tok)
                        .rev()
                        .find(|&t| text[ends[t - 1]..].starts_with(' '))
                    {
                        to_tok = t;
                    }
                }
                let to_byte = if to_tok == last { e } else { ends[to_tok - 1] };
                let piece = &text[from_byte..to_byte];
                let lead = piece.len() - piece.trim_start().len();
                out.push(Unit {
                    start: b.start + from_byte + lead,
                    end: b.start + to_byte,
                    tokens: to_tok - from_tok,
                    block: bi,
                });
                from_tok = to_tok;
                from_byte = to_byte;
            }
        }
    }
    Ok(out)
}

fn make_chunk(
    doc_id: DocId,
    doc: &NormalizedDoc,
    units: &[Unit],
    members: &[usize],
    ordinal: usize,
    specials: usize,
    chars: &mut CharIndex,
) -> Result<Chunk, String> {
    let first = units[members[0]];
    let last = units[*members.last().ok_or("empty chunk")?];
    let blocks = &doc.blocks[first.block..=last.block];
    let tokens: usize = members.iter().map(|&m| units[m].tokens).sum::<usize>() + specials;
    let pages = blocks.iter().filter_map(|b| b.page);
    Ok(Chunk {
        doc_id,
        ordinal: u32::try_from(ordinal).map_err(|_| "too many chunks")?,
        text: doc.text[first.start..last.end].to_owned(),
        page_start: pages.clone().min(),
        page_end: pages.max(),
        heading: doc.blocks[first.block].heading.clone(),
        span_start: chars.char_offset(&doc.text, first.start),
        span_end: chars.char_offset(&doc.text, last.end),
        token_count: u32::try_from(tokens).map_err(|_| "chunk too large")?,
        embedding: None,
    })
}

/// Converts byte offsets to char offsets, walking from the previous answer.
#[derive(Default)]
struct CharIndex {
    byte: usize,
    char: u64,
}

impl CharIndex {
    fn char_offset(&mut self, text: &str, byte: usize) -> u64 {
        if byte >= self.byte {
            self.char += text[self.byte..byte].chars().count() as u64;
        } else {
            self.char -= text[byte..self.byte].chars().count() as u64;
        }
        self.byte = byte;
        self.char
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::parse::{Block, Extracted};

    /// One token per whitespace-separated word; no special tokens beyond 2.
    struct Words;
    impl TokenCounter for Words {
        fn token_ends(&self, text: &str) -> Result<Vec<usize>, String> {
            Ok(text
                .split_word_bound_indices()
                .filter(|(_, w)| !w.trim().is_empty())
                .map(|(i, w)| i + w.len())
                .collect())
        }
        fn special_tokens(&self) -> usize {
            2
        }
    }

    fn doc(blocks: &[(&str, &[&str])]) -> NormalizedDoc {
        normalize(&Extracted {
            blocks: blocks
                .iter()
                .map(|(t, h)| Block {
                    text: (*t).into(),
                    page: Some(1),
                    heading: h.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            ..Extracted::default()
        })
    }

    fn sentence(i: usize) -> String {
        format!("Sentence number {i} has exactly eight words here.")
    }

    #[test]
    fn chunks_fit_the_budget_cover_the_text_and_overlap() {
        let para: String = (0..40).map(sentence).collect::<Vec<_>>().join(" ");
        let d = doc(&[(&para, &["A"])]);
        let params = ChunkParams {
            max_tokens: 34,
            overlap: 10,
        };
        let chunks = chunk(DocId::of_bytes(b"x"), &d, &Words, params).unwrap();
        assert!(chunks.len() > 10);
        for (i, c) in chunks.iter().enumerate() {
            assert!(
                c.token_count as usize <= 34,
                "chunk {i} has {} tokens",
                c.token_count
            );
            assert_eq!(c.ordinal as usize, i);
            let chars: String = d
                .text
                .chars()
                .skip(c.span_start as usize)
                .take((c.span_end - c.span_start) as usize)
                .collect();
            assert_eq!(chars, c.text, "span of chunk {i}");
            assert!(
                c.text.starts_with("Sentence") && c.text.ends_with('.'),
                "cut mid-sentence: {:?}",
                c.text
            );
        }
        // Consecutive chunks share a sentence (9 tokens of overlap fit in 10).
        for w in chunks.windows(2) {
            assert!(
                w[1].span_start < w[0].span_end,
                "no overlap between {} and {}",
                w[0].ordinal,
                w[1].ordinal
            );
        }
        assert_eq!(
            chunks.last().unwrap().span_end as usize,
            d.text.chars().count()
        );
    }

    #[test]
    fn sections_start_new_chunks_without_overlap() {
        let a: String = (0..2).map(sentence).collect::<Vec<_>>().join(" ");
        let b: String = (2..4).map(sentence).collect::<Vec<_>>().join(" ");
        let d = doc(&[(&a, &["A"]), (&b, &["B"])]);
        let chunks = chunk(
            DocId::of_bytes(b"x"),
            &d,
            &Words,
            ChunkParams {
                max_tokens: 64,
                overlap: 16,
            },
        )
        .unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].heading, ["A"]);
        assert_eq!(chunks[1].heading, ["B"]);
        assert!(chunks[1].text.starts_with("Sentence number 2"));
    }

    #[test]
    fn an_endless_sentence_is_cut_between_tokens() {
        let long = "word ".repeat(1000);
        let d = doc(&[(&long, &[])]);
        let chunks = chunk(
            DocId::of_bytes(b"x"),
            &d,
            &Words,
            ChunkParams {
                max_tokens: 50,
                overlap: 8,
            },
        )
        .unwrap();
        assert_eq!(
            chunks
                .iter()
                .map(|c| c.token_count as usize - 2)
                .sum::<usize>(),
            1000
        );
        assert!(
            chunks
                .iter()
                .all(|c| c.token_count <= 50 && c.text.starts_with("word"))
        );
    }
}
