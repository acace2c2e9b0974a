//! Citations: the `[n]` markers an answer carries, and the sentences they belong to (checked
//! against the passages in `verify`).

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
    pub(crate) fn hit(text: &str) -> hearth_index::Hit {
        hearth_index::Hit {
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
    fn sentences_keep_every_character() {
        assert_eq!(sentences("a. b\n\nc"), ["a. ", "b\n\n", "c"]);
    }
}
