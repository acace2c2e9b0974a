//! Citations: the `[n]` markers an answer carries, and attribution of unmarked sentences to
//! the passage they draw on.

use std::collections::HashSet;

use hearth_index::Hit;

/// The passage numbers an answer cites, in order of first citation, each once: `[2]`,
/// `[1, 3]`, `[1][2]` and `[1-3]` forms; numbers outside `1..=passages` are ignored.
pub(crate) fn markers(answer: &str, passages: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = answer;
    // Each `]` closes the nearest `[` before it, so `[[2]]` is a citation of 2.
    while let Some(close) = rest.find(']') {
        let head = &rest[..close];
        rest = &rest[close + 1..];
        let Some(open) = head.rfind('[') else {
            continue;
        };
        let inner = &head[open + 1..];
        if !is_marker(inner) {
            continue;
        }
        for part in inner.split(',') {
            let part = part.trim();
            let range = part
                .split_once(['-', '–'])
                .map(|(a, b)| (a.trim().parse::<usize>(), b.trim().parse::<usize>()));
            let (a, b) = match range {
                Some((Ok(a), Ok(b))) if a <= b && b - a < 64 => (a, b),
                Some(_) => continue,
                None => match part.parse::<usize>() {
                    Ok(n) => (n, n),
                    Err(_) => continue,
                },
            };
            for n in a..=b {
                if (1..=passages).contains(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// Whether the text between `[` and `]` is a citation marker's: passage numbers, commas,
/// spaces and ranges, at most 32 bytes.
pub(crate) fn is_marker(inner: &str) -> bool {
    !inner.is_empty()
        && inner.len() <= 32
        && inner
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ',' | ' ' | '-' | '–'))
}

/// A citation found in or added to an answer: passage `n` (from 1), and whether the model
/// wrote the marker or hearth attributed a sentence to the passage ([`attribute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The passage number.
    pub n: usize,
    /// True when hearth matched an unmarked sentence to the passage.
    pub attributed: bool,
}

/// The answer's citations. The markers the model wrote count first ([`markers`]); when it wrote
/// none, each sentence of the answer that shares enough distinctive words with a passage is
/// attributed to the best such passage and gets its marker appended, so the answer still
/// carries `[n]` markers that lead to sources. Returns the answer (with any added markers) and
/// the citations in order of first appearance.
pub(crate) fn attribute(answer: &str, passages: &[Hit]) -> (String, Vec<Marker>) {
    let marked = markers(answer, passages.len());
    if !marked.is_empty() {
        let c = marked
            .into_iter()
            .map(|n| Marker {
                n,
                attributed: false,
            })
            .collect();
        return (answer.to_owned(), c);
    }
    let vocab: Vec<HashSet<String>> = passages
        .iter()
        .map(|h| content_words(&h.chunk.text))
        .collect();
    let mut out = String::with_capacity(answer.len() + 16);
    let mut citations: Vec<Marker> = Vec::new();
    for sentence in sentences(answer) {
        let words = content_words(sentence);
        let best = vocab
            .iter()
            .enumerate()
            .map(|(i, v)| (words.iter().filter(|w| v.contains(*w)).count(), i))
            .max_by_key(|&(shared, i)| (shared, std::cmp::Reverse(i)));
        let trimmed = sentence.trim_end();
        match best {
            Some((shared, i)) if shared >= 3 || (shared >= 2 && shared * 2 >= words.len()) => {
                let n = i + 1;
                // The marker goes before the sentence's closing punctuation and whitespace.
                let body = trimmed.trim_end_matches(['.', '!', '?', ':', ';', ',']);
                out.push_str(body);
                out.push_str(&format!(" [{n}]"));
                out.push_str(&trimmed[body.len()..]);
                out.push_str(&sentence[trimmed.len()..]);
                if !citations.iter().any(|c| c.n == n) {
                    citations.push(Marker {
                        n,
                        attributed: true,
                    });
                }
            }
            _ => out.push_str(sentence),
        }
    }
    (out, citations)
}

/// Splits text after sentence ends (`.`, `!`, `?` followed by whitespace) and line breaks,
/// keeping every character.
pub(crate) fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_ws = chars.peek().is_none_or(|(_, n)| n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && next_ws) {
            // Swallow the whitespace that follows into this sentence.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if !n.is_whitespace() {
                    break;
                }
                end = j + n.len_utf8();
                chars.next();
            }
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Lower-cased words of at least four characters (or containing a digit) that are not common
/// function words: the words that make two texts about the same thing.
fn content_words(text: &str) -> HashSet<String> {
    const COMMON: &[&str] = &[
        "about",
        "after",
        "also",
        "been",
        "before",
        "being",
        "between",
        "both",
        "could",
        "does",
        "each",
        "from",
        "have",
        "here",
        "into",
        "just",
        "like",
        "make",
        "many",
        "more",
        "most",
        "much",
        "must",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "very",
        "want",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
        "following",
        "example",
        "using",
        "used",
        "use",
        "can",
    ];
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| {
            (w.chars().count() >= 4 || (w.len() >= 2 && w.chars().any(|c| c.is_ascii_digit())))
                && !COMMON.contains(&w.as_str())
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn citation_markers() {
        assert_eq!(
            markers("Paris [2]. Also [1, 3] and [1][4].", 4),
            [2, 1, 3, 4]
        );
        assert_eq!(markers("see [2-4]", 5), [2, 3, 4]);
        assert_eq!(markers("[0] [7] [x] [1 2] [", 3), Vec::<usize>::new());
        assert_eq!(markers("a[1]b[1]c", 1), [1]);
        assert_eq!(markers("[[2]]", 2), [2]);
        assert_eq!(markers("[3-1] [1-999999]", 3), Vec::<usize>::new());
        assert!(markers("", 3).is_empty());
    }

    /// A hit holding `text`, for tests.
    pub(crate) fn hit(text: &str) -> Hit {
        Hit {
            chunk: hearth_index::Chunk {
                doc_id: hearth_index::DocId::of_bytes(text.as_bytes()),
                ordinal: 0,
                text: text.into(),
                page_start: None,
                page_end: None,
                heading: Vec::new(),
                span_start: 0,
                span_end: 0,
                token_count: 0,
                embedding: None,
            },
            source: "s".into(),
            title: None,
            metadata: Default::default(),
            score: 0.0,
            dense: None,
            bm25: None,
        }
    }

    #[test]
    fn unmarked_sentences_are_attributed_to_the_passage_they_draw_on() {
        let passages = [
            hit("The kitchen closes at six in the evening on weekdays."),
            hit("qemu-img convert -O qcow2 input.raw output.qcow2 converts a disk image."),
        ];
        let answer = "Run qemu-img convert with -O qcow2 to convert the disk image. \
                      Bananas are yellow.\nThe kitchen closes at six!";
        let (text, c) = attribute(answer, &passages);
        assert_eq!(
            text,
            "Run qemu-img convert with -O qcow2 to convert the disk image [2]. \
             Bananas are yellow.\nThe kitchen closes at six [1]!"
        );
        assert_eq!(
            c,
            [
                Marker {
                    n: 2,
                    attributed: true
                },
                Marker {
                    n: 1,
                    attributed: true
                }
            ]
        );
        // Markers written by the model win, and nothing is added then.
        let (text, c) = attribute("It converts images [2].", &passages);
        assert_eq!(text, "It converts images [2].");
        assert_eq!(
            c,
            [Marker {
                n: 2,
                attributed: false
            }]
        );
        // Nothing in common: no citation.
        assert_eq!(attribute("Bananas are yellow.", &passages).1, []);
        assert_eq!(sentences("a. b\n\nc"), ["a. ", "b\n\n", "c"]);
    }
}
