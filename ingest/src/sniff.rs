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
    /// Word (DOCX, DOCM, DOTX).
    Docx,
    /// PowerPoint (PPTX, PPTM, PPSX).
    Pptx,
    /// Excel workbooks of the Office Open XML family (XLSX, XLSM, XLSB).
    Xlsx,
    /// Excel 97-2003 workbooks (XLS).
    Xls,
    /// OpenDocument text (ODT).
    Odt,
    /// OpenDocument presentation (ODP).
    Odp,
    /// OpenDocument spreadsheet (ODS).
    Ods,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// Rich Text Format.
    Rtf,
    /// One e-mail message (RFC 5322, MIME).
    Eml,
    /// A mailbox of e-mail messages (mbox).
    Mbox,
    /// A PNG image (read by OCR).
    Png,
    /// A JPEG image (read by OCR).
    Jpeg,
    /// A TIFF image, maybe of several pages (read by OCR).
    Tiff,
}

impl DocKind {
    /// The short name of this kind, as records and the API write it (`pdf`, `docx`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Pdf => "pdf",
            DocKind::Html => "html",
            DocKind::Markdown => "markdown",
            DocKind::Text => "text",
            DocKind::Docx => "docx",
            DocKind::Pptx => "pptx",
            DocKind::Xlsx => "xlsx",
            DocKind::Xls => "xls",
            DocKind::Odt => "odt",
            DocKind::Odp => "odp",
            DocKind::Ods => "ods",
            DocKind::Csv => "csv",
            DocKind::Tsv => "tsv",
            DocKind::Rtf => "rtf",
            DocKind::Eml => "eml",
            DocKind::Mbox => "mbox",
            DocKind::Png => "png",
            DocKind::Jpeg => "jpeg",
            DocKind::Tiff => "tiff",
        }
    }

    /// The media type reported for this kind.
    pub fn media_type(self) -> &'static str {
        match self {
            DocKind::Pdf => "application/pdf",
            DocKind::Html => "text/html",
            DocKind::Markdown => "text/markdown",
            DocKind::Text => "text/plain",
            DocKind::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            DocKind::Pptx => {
                "application/vnd.openxmlformats-officedocument.presentationml.presentation"
            }
            DocKind::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            DocKind::Xls => "application/vnd.ms-excel",
            DocKind::Odt => "application/vnd.oasis.opendocument.text",
            DocKind::Odp => "application/vnd.oasis.opendocument.presentation",
            DocKind::Ods => "application/vnd.oasis.opendocument.spreadsheet",
            DocKind::Csv => "text/csv",
            DocKind::Tsv => "text/tab-separated-values",
            DocKind::Rtf => "application/rtf",
            DocKind::Eml => "message/rfc822",
            DocKind::Mbox => "application/mbox",
            DocKind::Png => "image/png",
            DocKind::Jpeg => "image/jpeg",
            DocKind::Tiff => "image/tiff",
        }
    }
}

/// Signatures of formats hearth refuses. One made only of printable letters (`MZ`, `ID3`,
/// `BZh`, `GIF89a`, `OggS`) may just as well begin a text file, so it is trusted only when the
/// format's structure follows it ([`confirms`]) or when the bytes are not text.
const MAGIC: &[(&[u8], &str)] = &[
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (
        b"PK\x03\x04",
        "ZIP archive (not an Office or OpenDocument file)",
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
        "OLE compound file (not an Excel workbook)",
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
    if is_pdf(bytes) {
        return Ok(DocKind::Pdf);
    }
    if let Some(kind) = office_file(bytes) {
        return kind.map_err(Rejection::Unsupported);
    }
    if let Some(kind) = image(bytes) {
        return kind;
    }
    let text = decode_text_prefix(&bytes[..bytes.len().min(64 * 1024)]);
    if let Some(what) = binary_format(bytes, text.is_some()) {
        return Err(Rejection::Unsupported(format!(
            "{what} is not a supported document type"
        )));
    }
    let Some(text) = text else {
        return Err(Rejection::Unsupported(
            "binary data in no supported format (expected PDF, an Office or OpenDocument file, HTML, Markdown or text)".into(),
        ));
    };
    if text.trim_start().starts_with("{\\rtf") {
        return Ok(DocKind::Rtf);
    }
    if let Some(kind) = mail(&text) {
        return Ok(kind);
    }
    if looks_like_html(&text) {
        return Ok(DocKind::Html);
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        return Ok(DocKind::Csv);
    }
    if lower.ends_with(".tsv") || lower.ends_with(".tab") {
        return Ok(DocKind::Tsv);
    }
    if [".md", ".markdown", ".mdown", ".mkd"]
        .iter()
        .any(|e| lower.ends_with(e))
        || markdown_signals(&text) >= 2
    {
        return Ok(DocKind::Markdown);
    }
    Ok(DocKind::Text)
}

/// A PDF starts with `%PDF-`. Two binary preambles some producers put before it are
/// accepted too: a PJL print-job prefix, and a MacBinary header (128 bytes: version 0, a name
/// of 1 to 63 bytes, zeros at 74 and 82). Nothing else: an executable, an archive or a text
/// that holds `%PDF-` somewhere in its first KiB is not a PDF (it would be stored and handed
/// to the PDF parsers as one).
fn is_pdf(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"%PDF-") {
        return true;
    }
    if bytes.starts_with(b"\x1b%-12345X") {
        return find(&bytes[..bytes.len().min(1024)], b"%PDF-").is_some();
    }
    bytes.len() > 128
        && bytes[0] == 0
        && (1..=63).contains(&bytes[1])
        && bytes[74] == 0
        && bytes[82] == 0
        && bytes[128..].starts_with(b"%PDF-")
}

/// A PNG, JPEG or TIFF image, checked for a size OCR can read in bounded memory by its header
/// alone.
fn image(bytes: &[u8]) -> Option<Result<DocKind, Rejection>> {
    let kind = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        DocKind::Png
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        DocKind::Jpeg
    } else if bytes.starts_with(b"II*\x00") || bytes.starts_with(b"MM\x00*") {
        DocKind::Tiff
    } else {
        return None;
    };
    let Some((w, h)) = crate::parse::image_size(bytes) else {
        return Some(Err(Rejection::Unsupported(format!(
            "a damaged {} image (its header declares no size)",
            kind.as_str().to_ascii_uppercase()
        ))));
    };
    Some(
        crate::parse::check_image_size(w, h)
            .map(|()| kind)
            .map_err(Rejection::ImageTooLarge),
    )
}

/// The Office or OpenDocument format of a ZIP package or an OLE compound file: `Some(Ok)` for
/// one hearth reads, `Some(Err(reason))` for one it refuses with a reason more useful than
/// "a ZIP archive", `None` for anything else. Only names are looked at (the ZIP directory and
/// the compound file's directory store them uncompressed); nothing is unpacked here, in the
/// service: the parsers do that in the isolated extraction process.
fn office_file(bytes: &[u8]) -> Option<Result<DocKind, String>> {
    let has = |name: &[u8]| memchr::memmem::find(bytes, name).is_some();
    if bytes.starts_with(b"PK\x03\x04") {
        // OpenDocument: the first entry is `mimetype`, stored, holding the media type.
        if bytes.get(30..38) == Some(b"mimetype") {
            let media = &bytes[38..bytes.len().min(38 + 80)];
            for (prefix, kind) in [
                (
                    &b"application/vnd.oasis.opendocument.text"[..],
                    DocKind::Odt,
                ),
                (
                    b"application/vnd.oasis.opendocument.presentation",
                    DocKind::Odp,
                ),
                (
                    b"application/vnd.oasis.opendocument.spreadsheet",
                    DocKind::Ods,
                ),
            ] {
                if media.starts_with(prefix) {
                    return Some(Ok(kind));
                }
            }
            if media.starts_with(b"application/epub+zip") {
                return Some(Err("EPUB e-books are not a supported document type".into()));
            }
        }
        if has(b"[Content_Types].xml") {
            if has(b"word/document.xml") {
                return Some(Ok(DocKind::Docx));
            }
            if has(b"ppt/presentation.xml") {
                return Some(Ok(DocKind::Pptx));
            }
            if has(b"xl/workbook.xml") || has(b"xl/workbook.bin") {
                return Some(Ok(DocKind::Xlsx));
            }
        }
        return None;
    }
    if bytes.starts_with(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") {
        // Directory entry names are UTF-16LE.
        let entry = |name: &str| {
            has(&name
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>())
        };
        let refused = if entry("EncryptedPackage") {
            "the Office file is encrypted (password-protected): hearth cannot read it; remove the password and upload it again"
        } else if entry("Workbook") || entry("Book") {
            return Some(Ok(DocKind::Xls));
        } else if entry("WordDocument") {
            "legacy Word documents (.doc) are not a supported document type: save it as DOCX or ODT"
        } else if entry("PowerPoint Document") {
            "legacy PowerPoint files (.ppt) are not a supported document type: save it as PPTX or ODP"
        } else {
            return None;
        };
        return Some(Err(refused.into()));
    }
    None
}

/// The format `bytes` are in, if it is one hearth refuses. `text`: whether their start decodes
/// as text.
fn binary_format(bytes: &[u8], text: bool) -> Option<&'static str> {
    let printable = |magic: &[u8]| magic.iter().all(u8::is_ascii_graphic);
    for &(magic, what) in MAGIC {
        if bytes.starts_with(magic) && (!text || !printable(magic) || confirms(magic, bytes)) {
            return Some(what);
        }
    }
    // Containers whose signature is printable and not at the start: trusted only on binary
    // bytes, like the printable signatures above.
    if text || bytes.len() < 12 {
        return None;
    }
    if &bytes[..4] == b"RIFF" {
        return Some("RIFF media (WebP, WAV, AVI)");
    }
    if &bytes[4..8] == b"ftyp" {
        return Some("MP4/QuickTime media");
    }
    None
}

/// Whether the structure behind a printable signature is the format's, so the file is refused
/// even if its first bytes happen to decode as text.
fn confirms(magic: &[u8], bytes: &[u8]) -> bool {
    match magic {
        // "BZh", the block size '1'..='9', then the first block's magic (the digits of pi) or,
        // for an empty stream, the end-of-stream magic (those of sqrt(pi)).
        b"BZh" => {
            bytes.len() >= 10
                && (b'1'..=b'9').contains(&bytes[3])
                && matches!(
                    &bytes[4..10],
                    b"\x31\x41\x59\x26\x53\x59" | b"\x17\x72\x45\x38\x50\x90"
                )
        }
        // An ID3v2 tag header: major version 2 to 4, a revision, flags, then a 28-bit size
        // stored 7 bits a byte.
        b"ID3" => {
            bytes.len() >= 10
                && (2..=4).contains(&bytes[3])
                && bytes[4] != 0xff
                && bytes[6..10].iter().all(|&b| b < 0x80)
        }
        // A DOS header whose `e_lfanew` (at 0x3c) points at the PE signature.
        b"MZ" => {
            let Some(&[a, b, c, d]) = bytes.get(0x3c..0x40) else {
                return false;
            };
            let pe = u32::from_le_bytes([a, b, c, d]) as usize;
            pe.checked_add(4)
                .and_then(|end| bytes.get(pe..end))
                .is_some_and(|sig| sig == b"PE\0\0")
        }
        _ => false,
    }
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

/// An mbox starts with a `From ` separator line followed by a message; a message (EML) starts
/// with a header block holding at least two of the fields every mailer writes. Continuation
/// lines are allowed; anything else before the first blank line means it is not a header.
fn mail(text: &str) -> Option<DocKind> {
    let (first, rest) = text.split_once('\n')?;
    if first.starts_with("From ") && header_fields(rest) >= 2 {
        return Some(DocKind::Mbox);
    }
    (header_fields(text) >= 2).then_some(DocKind::Eml)
}

/// How many well-known fields the header block at the start of `text` holds; 0 when a line of
/// it is no header line.
fn header_fields(text: &str) -> usize {
    const KNOWN: &[&str] = &[
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "delivered-to",
        "reply-to",
        "in-reply-to",
    ];
    let mut known = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            return if i == 0 { 0 } else { known };
        }
        if i > 0 && line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return 0;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return 0;
        }
        known += usize::from(KNOWN.contains(&name.to_ascii_lowercase().as_str()));
        if i > 500 {
            break;
        }
    }
    known
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
        assert!(png.to_string().contains("damaged PNG"), "{png}");
        let gz = sniff(b"\x1f\x8b\x08\0\0\0", "notes.txt").unwrap_err();
        assert!(gz.to_string().contains("gzip"), "{gz}");
        let junk: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let err = sniff(&junk, "junk.pdf").unwrap_err();
        assert!(err.to_string().contains("binary"), "{err}");
    }

    fn refusal(bytes: &[u8]) -> String {
        sniff(bytes, "x.txt").unwrap_err().to_string()
    }

    #[test]
    fn text_that_starts_like_a_binary_signature_is_text() {
        for text in [
            &b"MZ is the ISO 3166 code of Mozambique.\n"[..],
            b"ID3 tags are the metadata blocks at the start of an MP3 file.\n",
            b"BZh9 is how every bzip2 stream with 900k blocks begins.\n",
            b"BZh\n",
            b"GIF89a was the version that added animation.\n",
            b"OggS marks each page of an Ogg stream.\n",
            b"RIFF headers come before the WAVE chunk.\n",
        ] {
            assert_eq!(
                sniff(text, "notes.txt"),
                Ok(DocKind::Text),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(
            sniff(b"# MZ\n\n- a [postcode](x) prefix\n", ""),
            Ok(DocKind::Markdown)
        );
    }

    #[test]
    fn real_executables_audio_and_bzip2_are_still_refused() {
        // A PE file: DOS header, e_lfanew = 0x80, the PE signature there.
        let mut pe = b"MZ".to_vec();
        pe.resize(0x80, b' ');
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe.extend_from_slice(b"PE\0\0");
        pe.extend_from_slice(&[b'x'; 64]);
        assert!(refusal(&pe).contains("Windows executable"));
        assert!(refusal(&pe[..0x84]).contains("Windows executable"));
        // A DOS executable without a PE header: binary, so still refused by name.
        assert!(refusal(b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff").contains("Windows executable"));
        // ID3v2.4 header, then frames.
        let mp3 = b"ID3\x04\x00\x00\x00\x00\x01\x76TIT2\x00\x00\x00\x06\x00\x00\x03Song";
        assert!(refusal(mp3).contains("MP3"));
        assert!(refusal(b"ID3\x03\x00\x00\x00\x00\x00\x20TALB").contains("MP3"));
        // bzip2: block size, then the block magic or the end-of-stream magic.
        assert!(refusal(b"BZh91AY&SY\x8f\x1a\xce\x02").contains("bzip2"));
        assert!(refusal(b"BZh9\x17rE8P\x90\0\0\0\0").contains("bzip2"));
        assert!(refusal(b"BZh11AY&SYthe rest happens to be printable").contains("bzip2"));
        assert!(refusal(b"GIF89a\x01\0\x01\0\x80\0\0").contains("GIF"));
        assert!(refusal(b"RIFF\x24\x08\0\0WAVEfmt \x10\0\0\0").contains("RIFF"));
        assert!(refusal(b"\0\0\0\x18ftypmp42\0\0\0\0").contains("MP4"));
    }

    #[test]
    fn text_that_mentions_the_pdf_header_is_not_a_pdf() {
        assert_eq!(
            sniff(b"A PDF starts with %PDF- and a version.\n", "a.txt"),
            Ok(DocKind::Text)
        );
        assert_eq!(
            sniff(
                b"# Formats\n\n- PDF files begin with `%PDF-1.7`\n- [more](x)\n",
                "formats.md"
            ),
            Ok(DocKind::Markdown)
        );
        assert_eq!(
            sniff(
                b"<!DOCTYPE html><html><body><p>The header: %PDF-1.4</p>",
                "page.html"
            ),
            Ok(DocKind::Html)
        );
        assert_eq!(sniff(b" %PDF-1.4\n", "a.pdf"), Ok(DocKind::Text));
        // UTF-16 text holds NULs but is text all the same.
        let utf16: Vec<u8> = b"\xff\xfe"
            .iter()
            .copied()
            .chain("x".encode_utf16().flat_map(u16::to_le_bytes))
            .chain(*b"%PDF-")
            .chain("1".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_ne!(sniff(&utf16, "a.txt"), Ok(DocKind::Pdf));
    }

    #[test]
    fn pdfs_are_recognised_with_and_without_a_binary_preamble() {
        assert_eq!(
            sniff(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "x"),
            Ok(DocKind::Pdf)
        );
        // MacBinary: a 128-byte header (version byte 0, file name, type codes...).
        let mut macbinary = vec![0u8; 128];
        macbinary[1] = 5;
        macbinary[2..7].copy_from_slice(b"a.pdf");
        macbinary[65..73].copy_from_slice(b"PDF CARO");
        macbinary.extend_from_slice(b"%PDF-1.3\n");
        assert_eq!(sniff(&macbinary, "a.pdf"), Ok(DocKind::Pdf));
        let pjl = b"\x1b%-12345X@PJL JOB\r\n@PJL ENTER LANGUAGE = PDF\r\n%PDF-1.4\n";
        assert_eq!(sniff(pjl, "job.prn"), Ok(DocKind::Pdf));
    }

    #[test]
    fn a_pdf_header_inside_other_binary_data_is_not_a_pdf() {
        // An executable with the PDF header in its first KiB: refused as what it is.
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(200, 0);
        elf.extend_from_slice(b"%PDF-1.4\n1 0 obj\n");
        let err = sniff(&elf, "report.pdf").unwrap_err().to_string();
        assert!(err.contains("ELF executable"), "{err}");
        // gzip data whose stored file name starts with the header.
        let mut gz = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03%PDF-report.pdf\x00".to_vec();
        gz.extend_from_slice(&[0x4b, 0x4c, 0x4a, 0x06, 0x00]);
        let err = sniff(&gz, "report.pdf").unwrap_err().to_string();
        assert!(err.contains("gzip"), "{err}");
        // Binary junk with NULs before the header (the old rule took it for a preamble).
        let mut junk = vec![0u8, 0xff, 0x13, 0x37];
        junk.extend_from_slice(b"%PDF-1.7\n");
        assert_ne!(sniff(&junk, "x.pdf"), Ok(DocKind::Pdf));
    }

    #[test]
    fn test_documents_sniff_as_their_kind() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        let kind = |f: &str| {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            sniff(&bytes, f)
        };
        for f in [
            "corpus/bzip2-manual.pdf",
            "corpus/find-manual.pdf",
            "corpus/gzip-manual.pdf",
            "corpus/onboarding-handbook.pdf",
            "broken/truncated.pdf",
        ] {
            assert_eq!(kind(f), Ok(DocKind::Pdf), "{f}");
        }
        for f in ["corpus/qemu-img.html", "corpus/libffi-basics.txt"] {
            assert_eq!(kind(f), Ok(DocKind::Html), "{f}");
        }
        for f in ["corpus/node-url.md", "corpus/NODE-GLOSSARY"] {
            assert_eq!(kind(f), Ok(DocKind::Markdown), "{f}");
        }
        assert_eq!(
            kind("corpus/politique-conservation-donnees.txt"),
            Ok(DocKind::Text)
        );
        for (f, k) in [
            ("office/runbook.docx", DocKind::Docx),
            ("broken/macros.docm", DocKind::Docx),
            ("office/runbook.odt", DocKind::Odt),
            ("office/runbook.rtf", DocKind::Rtf),
            ("office/release-review.pptx", DocKind::Pptx),
            ("office/release-review.odp", DocKind::Odp),
            ("office/offices.xlsx", DocKind::Xlsx),
            ("office/offices.xls", DocKind::Xls),
            ("office/offices.ods", DocKind::Ods),
            ("office/offices.csv", DocKind::Csv),
            ("office/offices.tsv", DocKind::Tsv),
            ("mail/supplier-contract.eml", DocKind::Eml),
            ("mail/board.mbox", DocKind::Mbox),
            // Content decides, not the name: OCR finds no text in it later.
            ("broken/image.md", DocKind::Png),
            ("scans/gzip-manual-page.png", DocKind::Png),
            ("scans/gzip-manual-page.jpg", DocKind::Jpeg),
            ("scans/gzip-de-pages.tiff", DocKind::Tiff),
        ] {
            assert_eq!(kind(f), Ok(k), "{f}");
        }
        for f in [
            "broken/junk.pdf",
            "broken/random.bin",
            "broken/compressed.txt",
        ] {
            assert!(kind(f).is_err(), "{f}");
        }
        // Refused with a reason that says what to do.
        for (f, says) in [
            ("broken/encrypted.xlsx", "password"),
            ("broken/runbook.doc", "save it as DOCX"),
            ("broken/huge-image.png", "30000 x 30000 pixels"),
        ] {
            let why = kind(f).unwrap_err().to_string();
            assert!(why.contains(says), "{f}: {why}");
        }
    }

    #[test]
    fn kind_names_are_their_serialised_names() {
        use DocKind::*;
        for k in [
            Pdf, Html, Markdown, Text, Docx, Pptx, Xlsx, Xls, Odt, Odp, Ods, Csv, Tsv, Rtf, Eml,
            Mbox, Png, Jpeg, Tiff,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn mail_is_told_from_text_by_its_header_block() {
        let eml = b"Received: from x\r\n\tby y\r\nFrom: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(sniff(eml, "m"), Ok(DocKind::Eml));
        assert_eq!(
            sniff(
                b"From a@b Thu Jan  1 00:00:00 2026\nFrom: a@b\nSubject: x\n\nbody\n",
                "inbox"
            ),
            Ok(DocKind::Mbox)
        );
        // A note that starts with one header-like line is text.
        assert_eq!(
            sniff(
                b"Subject: the budget\n\nWe spent less than planned.\n",
                "note.txt"
            ),
            Ok(DocKind::Text)
        );
        assert_eq!(
            sniff(
                b"From here on, everything is text.\nTo: whom it may concern\n",
                "a.txt"
            ),
            Ok(DocKind::Text)
        );
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
