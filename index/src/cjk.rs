//! The word splitter under every BM25 analyzer: runs of letters and digits, as tantivy's
//! `SimpleTokenizer` makes them, except that Chinese, Japanese and Korean script becomes
//! overlapping character bigrams.
//!
//! Those scripts do not put spaces between words: a whole Chinese sentence is one run of
//! letters, so the plain splitter made it a single token, longer than the 64-byte limit and
//! dropped: BM25 found nothing in Chinese or Japanese text. Bigrams ("压缩文件" → 压缩, 缩文,
//! 文件) need no dictionary, work for the three scripts and for text that mixes them with
//! Latin, and are what search engines without a segmenter index (a question's bigrams then
//! match wherever its words occur). A run of one character stays a unigram.

use std::iter::Peekable;
use std::str::CharIndices;

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Whether `c` is written without spaces between words: Han ideographs, kana, Hangul.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3005..=0x3007      // 々 〆 〇
        | 0x3040..=0x30FF    // Hiragana, Katakana (ー included)
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // halfwidth katakana (NFKC folds them, queries included)
        | 0x1100..=0x11FF    // Hangul jamo
        | 0x3130..=0x318F    // Hangul compatibility jamo
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2FA1F  // CJK extensions B-F, compatibility supplement
    )
}

/// Splits on what is neither a letter nor a digit, and cuts CJK runs into bigrams.
#[derive(Clone, Default)]
pub(crate) struct CjkTokenizer {
    token: Token,
}

/// The tokens of one text, made as they are asked for.
pub(crate) struct CjkTokenStream<'a> {
    text: &'a str,
    chars: Peekable<CharIndices<'a>>,
    token: &'a mut Token,
    /// Inside a CJK run: where its last character so far starts and ends.
    run: Option<(usize, usize)>,
}

impl Tokenizer for CjkTokenizer {
    type TokenStream<'a> = CjkTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CjkTokenStream<'a> {
        self.token.reset();
        CjkTokenStream {
            text,
            chars: text.char_indices().peekable(),
            token: &mut self.token,
            run: None,
        }
    }
}

impl CjkTokenStream<'_> {
    fn emit(&mut self, from: usize, to: usize) -> bool {
        self.token.offset_from = from;
        self.token.offset_to = to;
        self.token.text.push_str(&self.text[from..to]);
        true
    }

    /// The next character if it is CJK, taken: its start and end.
    fn next_cjk(&mut self) -> Option<(usize, usize)> {
        let &(at, c) = self.chars.peek()?;
        if !is_cjk(c) {
            return None;
        }
        self.chars.next();
        Some((at, at + c.len_utf8()))
    }
}

impl TokenStream for CjkTokenStream<'_> {
    fn advance(&mut self) -> bool {
        self.token.text.clear();
        self.token.position = self.token.position.wrapping_add(1);
        if let Some((from, _)) = self.run.take()
            && let Some((at, to)) = self.next_cjk()
        {
            self.run = Some((at, to));
            return self.emit(from, to);
        }
        while let Some((at, c)) = self.chars.next() {
            let end = at + c.len_utf8();
            if is_cjk(c) {
                // A run's first bigram, or a lone character.
                return match self.next_cjk() {
                    Some((next, to)) => {
                        self.run = Some((next, to));
                        self.emit(at, to)
                    }
                    None => self.emit(at, end),
                };
            }
            if c.is_alphanumeric() {
                let mut to = end;
                while let Some(&(next, c)) = self.chars.peek() {
                    if !c.is_alphanumeric() || is_cjk(c) {
                        break;
                    }
                    to = next + c.len_utf8();
                    self.chars.next();
                }
                return self.emit(at, to);
            }
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        let mut t = CjkTokenizer::default();
        let mut stream = t.token_stream(s);
        let mut out = Vec::new();
        while let Some(tok) = stream.next() {
            assert_eq!(&s[tok.offset_from..tok.offset_to], tok.text);
            assert_eq!(tok.position, out.len());
            out.push(tok.text.clone());
        }
        out
    }

    #[test]
    fn latin_text_splits_as_before() {
        assert_eq!(
            texts("Hello, happy tax-payer! café 2x --strip-components"),
            [
                "Hello",
                "happy",
                "tax",
                "payer",
                "café",
                "2x",
                "strip",
                "components"
            ]
        );
        assert!(texts("  ...  ").is_empty());
    }

    /// Outside CJK script the tokens (text, offsets, positions) are exactly tantivy's simple
    /// splitter's, so English, European and Cyrillic retrieval is unchanged.
    #[test]
    fn the_same_tokens_as_the_simple_splitter_outside_cjk() {
        use tantivy::tokenizer::SimpleTokenizer;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/multilingual/docs");
        let mut compared = 0;
        for lang in ["de", "fr", "pl", "ru"] {
            for e in std::fs::read_dir(format!("{dir}/{lang}")).unwrap() {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                let (mut ours, mut simple) = (CjkTokenizer::default(), SimpleTokenizer::default());
                let (mut a, mut b) = (ours.token_stream(&text), simple.token_stream(&text));
                loop {
                    match (a.next().cloned(), b.next().cloned()) {
                        (None, None) => break,
                        (x, y) => assert_eq!(x, y),
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared > 10_000, "{compared}");
    }

    #[test]
    fn cjk_runs_become_bigrams_beside_latin_words() {
        assert_eq!(texts("压缩文件"), ["压缩", "缩文", "文件"]);
        assert_eq!(
            texts("GNU软件的通用帮助"),
            ["GNU", "软件", "件的", "的通", "通用", "用帮", "帮助"]
        );
        // Kana and kanji together; a lone character is kept.
        assert_eq!(
            texts("ファイルを削除 (字)"),
            ["ファ", "ァイ", "イル", "ルを", "を削", "削除", "字"]
        );
        assert_eq!(texts("한국어 검색"), ["한국", "국어", "검색"]);
        assert_eq!(texts("mtu N  此选项"), ["mtu", "N", "此选", "选项"]);
    }
}
