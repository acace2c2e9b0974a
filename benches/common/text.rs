//! Corpus text for the benches and the engine's device check (`engine/examples/gpu_check.rs`
//! includes this file by path): the words of `testdata/corpus`, passages of a token budget cut
//! from them, and percentiles. Depends on std and `hearth_engine` only.

use std::path::Path;

use hearth_engine::Tokenizer;

/// The whitespace-separated words of the text files of a corpus directory (.md, .txt, .html
/// with tags stripped crudely, and extension-less plain-text files; PDFs are skipped), in
/// file-name order.
pub fn corpus_words(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut words = Vec::new();
    for f in files {
        let ext = f
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let text = match ext.as_str() {
            "md" | "txt" | "" => std::fs::read_to_string(&f).unwrap_or_default(),
            "html" | "htm" => strip_html(&std::fs::read_to_string(&f).unwrap_or_default()),
            _ => continue,
        };
        words.extend(text.split_whitespace().map(str::to_owned));
    }
    words
}

/// Crude HTML to text: drops `<script>`/`<style>` contents and all tags, decodes a few entities.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        if html.as_bytes()[i] == b'<' {
            let skip_to = ["script", "style"].iter().find_map(|t| {
                lower[i + 1..].starts_with(t).then(|| {
                    lower[i..]
                        .find(&format!("</{t}"))
                        .map_or(html.len(), |p| i + p + 2 + t.len())
                })
            });
            let from = skip_to.unwrap_or(i);
            i = lower[from..].find('>').map_or(html.len(), |p| from + p + 1);
            out.push(' ');
        } else {
            let next = html[i..].find('<').map_or(html.len(), |p| i + p);
            out.push_str(&html[i..next]);
            i = next;
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// `n` passages of at most `target` tokens (special tokens included, as close to `target` as a
/// word boundary allows), consecutive in the word stream from `start` (wrapping around).
pub fn passages(
    tok: &Tokenizer,
    words: &[String],
    start: usize,
    n: usize,
    target: usize,
) -> Vec<String> {
    let budget = target - tok.special_tokens_per_sequence();
    let mut cursor = start;
    (0..n)
        .map(|_| {
            // `budget` words always hold at least `budget` tokens (each word is one or more).
            let mut text = String::new();
            let mut word_ends = Vec::with_capacity(budget);
            for k in 0..budget {
                if k > 0 {
                    text.push(' ');
                }
                text.push_str(&words[(cursor + k) % words.len()]);
                word_ends.push(text.len());
            }
            let token_ends = tok.token_ends(&text).expect("tokenizing a passage");
            let fits = word_ends
                .iter()
                .rposition(|&w| token_ends.partition_point(|&t| t <= w) <= budget)
                .unwrap_or(0);
            cursor += fits + 1;
            text.truncate(word_ends[fits]);
            text
        })
        .collect()
}

/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
