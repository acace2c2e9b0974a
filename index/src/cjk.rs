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
pub(crate) struct CjkTokenizer;

/// The tokens of one text, made when the stream is created.
pub(crate) struct CjkTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl Tokenizer for CjkTokenizer {
    type TokenStream<'a> = CjkTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CjkTokenStream {
        CjkTokenStream {
            tokens: tokens(text),
            next: 0,
        }
    }
}

impl TokenStream for CjkTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    let mut push = |from: usize, to: usize| {
        out.push(Token {
            offset_from: from,
            offset_to: to,
            position: out.len(),
            text: text[from..to].to_owned(),
            position_length: 1,
        });
    };
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if is_cjk(c) {
            // The run's characters, as (start, end) byte offsets.
            let mut run = vec![(at, at + c.len_utf8())];
            while let Some(&(at, c)) = chars.peek() {
                if !is_cjk(c) {
                    break;
                }
                run.push((at, at + c.len_utf8()));
                chars.next();
            }
            if run.len() == 1 {
                push(run[0].0, run[0].1);
            }
            for pair in run.windows(2) {
                push(pair[0].0, pair[1].1);
            }
        } else if c.is_alphanumeric() {
            let mut end = at + c.len_utf8();
            while let Some(&(at, c)) = chars.peek() {
                if !c.is_alphanumeric() || is_cjk(c) {
                    break;
                }
                end = at + c.len_utf8();
                chars.next();
            }
            push(at, end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        let mut t = CjkTokenizer;
        let mut stream = t.token_stream(s);
        let mut out = Vec::new();
        while let Some(tok) = stream.next() {
            assert_eq!(&s[tok.offset_from..tok.offset_to], tok.text);
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
