//! Format detection by content. The file name is only a tie-breaker between text formats
//! (Markdown vs plain text); it never makes binary data pass as a document.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;

/// The document formats hearth reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// PDF.
    Pdf,
    /// HTML.
    Html,
    /// Markdown (CommonMark).
    Markdown,
    /// Plain text.
    Text,
}

impl DocKind {
    /// The media type reported for this kind.
    pub fn media_type(self) -> &'static str {
        match self {
            DocKind::Pdf => "application/pdf",
            DocKind::Html => "text/html",
            DocKind::Markdown => "text/markdown",
            DocKind::Text => "text/plain",
        }
    }
}

const MAGIC: &[(&[u8], &str)] = &[
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (
        b"PK\x03\x04",
        "ZIP archive (DOCX, XLSX, ODT, EPUB and JAR are ZIP files)",
    ),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "legacy Microsoft Office file (DOC/XLS/PPT)",
    ),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"ID3", "MP3 audio"),
    (b"OggS", "Ogg media"),
    (b"\x00asm", "WebAssembly module"),
];

/// Decides what a document is from its bytes, with `name` (a file name or empty) as a hint for
/// telling Markdown from plain text.
pub fn sniff(bytes: &[u8], name: &str) -> Result<DocKind, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let head = &bytes[..bytes.len().min(1024)];
    if find(head, b"%PDF-").is_some() {
        return Ok(DocKind::Pdf);
    }
    for (magic, what) in MAGIC {
        if bytes.starts_with(magic) {
            return Err(Rejection::Unsupported(format!(
                "{what} is not a supported document type"
            )));
        }
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" {
        return Err(Rejection::Unsupported(
            "RIFF media (WebP, WAV, AVI) is not a supported document type".into(),
        ));
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return Err(Rejection::Unsupported(
            "MP4/QuickTime media is not a supported document type".into(),
        ));
    }
    let Some(text) = decode_text_prefix(&bytes[..bytes.len().min(64 * 1024)]) else {
        return Err(Rejection::Unsupported(
            "binary data in no supported format (expected PDF, HTML, Markdown or text)".into(),
        ));
    };
    if looks_like_html(&text) {
        return Ok(DocKind::Html);
    }
    let lower = name.to_ascii_lowercase();
    if [".md", ".markdown", ".mdown", ".mkd"]
        .iter()
        .any(|e| lower.ends_with(e))
        || markdown_signals(&text) >= 2
    {
        return Ok(DocKind::Markdown);
    }
    Ok(DocKind::Text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes the start of a text file, or `None` if it looks binary.
fn decode_text_prefix(prefix: &[u8]) -> Option<String> {
    let decoded = decode(prefix, true)?;
    let control = decoded
        .chars()
        .filter(|&c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c'))
        .count();
    (control * 20 <= decoded.chars().count()).then_some(decoded)
}

/// Decodes text bytes: UTF-8 (with or without BOM), UTF-16 with a BOM, else Latin-1 when the
/// bytes hold no NUL. `None` means the bytes are not text.
pub fn decode_text(bytes: &[u8]) -> Option<String> {
    decode(bytes, false)
}

/// `prefix`: the bytes may end in the middle of a UTF-8 sequence.
fn decode(bytes: &[u8], prefix: bool) -> Option<String> {
    if let Some(rest) = bytes.strip_prefix(b"\xef\xbb\xbf") {
        return Some(utf8_lossy_tail(rest));
    }
    if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
        return Some(decode_utf16(rest, u16::from_le_bytes));
    }
    if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
        return Some(decode_utf16(rest, u16::from_be_bytes));
    }
    if bytes.contains(&0) {
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.to_owned()),
        // A prefix may end inside a multi-byte character; only the tail may be invalid.
        Err(e) if prefix && e.error_len().is_none() => Some(utf8_lossy_tail(bytes)),
        Err(_) => Some(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

fn utf8_lossy_tail(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode_utf16(bytes: &[u8], f: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|c| f([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

fn looks_like_html(text: &str) -> bool {
    let t = text.trim_start().to_ascii_lowercase();
    if t.starts_with("<!doctype html") || t.starts_with("<html") {
        return true;
    }
    let head: String = t.chars().take(1024).collect();
    (t.starts_with('<') || t.starts_with("<?xml"))
        && ["<html", "<head", "<body", "<title", "<meta "]
            .iter()
            .any(|tag| head.contains(tag))
}

fn markdown_signals(text: &str) -> usize {
    let mut atx = false;
    let mut fence = false;
    let mut link = false;
    let mut list = false;
    let mut setext = false;
    for line in text.lines() {
        let l = line.trim_end();
        atx |= l.starts_with("# ") || l.starts_with("## ") || l.starts_with("### ");
        fence |= l.starts_with("```") || l.starts_with("~~~");
        link |= l.contains("](") && l.contains('[');
        list |= l.starts_with("- ") || l.starts_with("* ");
        setext |= l.len() >= 3 && (l.bytes().all(|b| b == b'=') || l.bytes().all(|b| b == b'-'));
    }
    [atx, fence, link, list, setext]
        .iter()
        .filter(|&&b| b)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_content_not_extension() {
        assert_eq!(sniff(b"%PDF-1.7\n...", "notes.txt"), Ok(DocKind::Pdf));
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><p>x</p>", "page.txt"),
            Ok(DocKind::Html)
        );
        assert_eq!(
            sniff(b"  <html lang=en><head><title>t", ""),
            Ok(DocKind::Html)
        );
        assert_eq!(
            sniff(b"# Title\n\nSome [link](x).\n", "README"),
            Ok(DocKind::Markdown)
        );
        assert_eq!(sniff(b"plain words\n", "a.md"), Ok(DocKind::Markdown));
        assert_eq!(
            sniff(b"plain words about <b> tags\n", "a.txt"),
            Ok(DocKind::Text)
        );
    }

    #[test]
    fn rejects_empty_and_binary_with_a_reason() {
        assert_eq!(sniff(b"", "a.txt"), Err(Rejection::Empty));
        let png = sniff(b"\x89PNG\r\n\x1a\n\0\0\0", "pic.md").unwrap_err();
        assert!(png.to_string().contains("PNG"), "{png}");
        let gz = sniff(b"\x1f\x8b\x08\0\0\0", "notes.txt").unwrap_err();
        assert!(gz.to_string().contains("gzip"), "{gz}");
        let junk: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let err = sniff(&junk, "junk.pdf").unwrap_err();
        assert!(err.to_string().contains("binary"), "{err}");
    }

    #[test]
    fn decodes_utf16_and_latin1() {
        let utf16: Vec<u8> = b"\xff\xfe"
            .iter()
            .copied()
            .chain("héllo".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode_text(&utf16).as_deref(), Some("héllo"));
        assert_eq!(decode_text(b"caf\xe9").as_deref(), Some("café"));
        assert_eq!(sniff(&utf16, "x.txt"), Ok(DocKind::Text));
    }
}
