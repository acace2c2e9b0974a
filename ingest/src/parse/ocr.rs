//! OCR: scanned PDF pages and images (PNG, JPEG, TIFF) recognised by Tesseract, and PDF pages
//! rasterised by poppler's `pdftoppm`, both Debian packages (tesseract-ocr with one
//! tesseract-ocr-LANG package per language, poppler-utils).
//!
//! Both run as children of the extraction process, so under its address-space limit, each with
//! a time limit of its own per page; the image or document reaches them through an anonymous
//! in-memory file. Tesseract is started once per page: loading its models costs ~0.1 s against
//! ~0.9 s for recognising a 150 dpi A4 page (measured on this project's 2-core machines), and a
//! process per page keeps a crash in the recogniser to that page.
//!
//! Tesseract's OpenMP threads must be limited to one: with its default of one per core, a page
//! took 6.8 s instead of 0.9 s on 2 cores (most of it spinning in the kernel); documents are
//! parallel already, one per extraction process.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pdf::join_lines;
use super::{Block, Extracted, OcrSummary, Options, push_block};
use crate::sniff::DocKind;

/// The engine's name, as records show it.
pub(crate) const TESSERACT: &str = "tesseract OCR";
/// How long recognising or rendering one page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The resolution PDF pages are rendered at: enough for body text, 2 MB a gray A4 page.
const DPI: u32 = 150;
/// The largest rendered page read back: a gray page of ~64 megapixels (a page over 1.3 m a
/// side at 150 dpi). Larger pages are skipped with a warning.
const MAX_RENDER_BYTES: u64 = 64 << 20;
/// The largest image recognised, in pixels: a 600 dpi A3 scan is 70 million.
pub(crate) const MAX_IMAGE_PIXELS: u64 = 80_000_000;
/// Tesseract's own limit on either side.
pub(crate) const MAX_IMAGE_SIDE: u64 = 32_767;

/// The recognised text of one page.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub page: u32,
    pub paragraphs: Vec<String>,
    /// Sum of the word confidences (0-100) and the number of words.
    pub conf_sum: f64,
    pub words: u32,
}

impl Page {
    fn confidence(&self) -> f64 {
        if self.words == 0 {
            0.0
        } else {
            self.conf_sum / f64::from(self.words)
        }
    }
}

/// An image document: every page of it (a TIFF may have several) recognised.
pub(super) fn image(kind: DocKind, bytes: &[u8], opts: &Options) -> Result<Extracted, String> {
    if let Some((w, h)) = image_size(bytes) {
        check_image_size(w, h)?;
    }
    let file = MemFile::new("hearth-image", bytes)?;
    let pages = tesseract(&file.path(), &opts.ocr_languages, None)?.ok_or_else(not_installed)?;
    let mut out = Extracted {
        engine: Some(TESSERACT.to_owned()),
        ..Extracted::default()
    };
    let mut summary = OcrSummary::default();
    for p in &pages {
        summary.add(p);
        for para in &p.paragraphs {
            push_block(&mut out.blocks, para, Some(p.page), &[]);
        }
    }
    if out.blocks.is_empty() {
        return Err(format!(
            "OCR found no text in the {} image",
            kind.as_str().to_ascii_uppercase()
        ));
    }
    out.pages = pages.iter().map(|p| p.page).max();
    out.ocr = Some(summary);
    Ok(out)
}

/// The width and height an image's header declares.
pub(crate) fn image_size(bytes: &[u8]) -> Option<(u64, u64)> {
    imagesize::blob_size(bytes)
        .ok()
        .map(|s| (s.width as u64, s.height as u64))
}

/// Refuses an image too large to recognise in bounded memory.
pub(crate) fn check_image_size(w: u64, h: u64) -> Result<(), String> {
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || w.saturating_mul(h) > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the image is {w} x {h} pixels; OCR reads images of up to {} million pixels and {MAX_IMAGE_SIDE} pixels a side (scale it down: 300 dpi is enough for text)",
            MAX_IMAGE_PIXELS / 1_000_000
        ));
    }
    Ok(())
}

/// The languages Tesseract has data for on this node, or `None` when it is not installed.
pub(crate) fn installed_languages() -> Option<Vec<String>> {
    let out = Command::new("tesseract")
        .arg("--list-langs")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // The first line says where the data lives; `osd` is orientation detection, no language.
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "osd")
            .map(str::to_owned)
            .collect(),
    )
}

fn not_installed() -> String {
    "OCR is not available on this node: install Debian's tesseract-ocr and the language packages (tesseract-ocr-eng, ...)".to_owned()
}

/// Recognises the pages of a PDF whose text layer is missing, thin or garbled, and keeps for
/// each the better of its text layer and the recognised text. `pictures` are the pages that
/// draw a picture the size of a scan or that pdf-extract could not read (`None`: unknown, so
/// any page may be one). Does nothing
/// when Tesseract or pdftoppm is not installed (the text layer stays, with a warning when
/// pages needed OCR).
pub(super) fn pdf_pages(
    bytes: &[u8],
    ex: &mut Extracted,
    pictures: Option<&BTreeSet<u32>>,
    opts: &Options,
) {
    let Some(total) = ex.pages else { return };
    let layers = layers(ex, total);
    let weak: Vec<u32> = (1..=total)
        .filter(|&p| {
            let picture = pictures.is_none_or(|s| s.contains(&p));
            weak_page(&layers[p as usize - 1], picture)
        })
        .collect();
    drop(layers);
    if weak.is_empty() || cfg!(feature = "fuzzing") {
        return;
    }
    let file = match MemFile::new("hearth-pdf", bytes) {
        Ok(f) => f,
        Err(e) => {
            ex.warnings.push(e);
            return;
        }
    };
    let mut summary = OcrSummary::default();
    let mut replaced = 0u32;
    let mut problems = Vec::new();
    for (i, &page) in weak.iter().enumerate() {
        if let Some(report) = &opts.progress {
            report(i as u32, weak.len() as u32);
        }
        let recognised = match recognise_pdf_page(&file, page, &opts.ocr_languages) {
            Ok(Some(p)) => p,
            Ok(None) => {
                ex.warnings.push(format!(
                    "{} pages have no usable text layer; OCR is not available on this node (install Debian's tesseract-ocr and poppler-utils)",
                    weak.len()
                ));
                return;
            }
            Err(e) => {
                problems.push(format!("page {page}: {e}"));
                continue;
            }
        };
        summary.add(&recognised);
        let layer: String = page_text(ex, page);
        let ocr_text = recognised.paragraphs.join("\n");
        // The recognised text wins when it holds more words, weighed by how sure the
        // recogniser is of them.
        if word_chars(&ocr_text) as f64 * recognised.confidence() / 100.0
            > word_chars(&layer) as f64
        {
            replace_page(ex, page, &recognised.paragraphs);
            replaced += 1;
        }
    }
    if let Some(report) = &opts.progress {
        report(weak.len() as u32, weak.len() as u32);
    }
    ex.warnings.extend(problems);
    if summary.pages > 0 {
        ex.ocr = Some(summary);
    }
    if replaced > 0 {
        let base = ex.engine.take().unwrap_or_else(|| "pdf-extract".to_owned());
        ex.engine = Some(if replaced == total {
            TESSERACT.to_owned()
        } else {
            format!("{base} + {TESSERACT} ({replaced} of {total} pages)")
        });
    }
}

/// A page worth recognising: its text layer is garbled (fonts without a Unicode map, which
/// rendering reads), or it draws a scan-sized picture and its text layer is thin (under 40
/// characters) or mostly not words (a scanner's bad OCR layer).
///
/// Pages without a picture are not judged by their share of words: code listings, tables
/// and indexes have few, and recognising them made a sample of 147 digital PDFs extract 51x
/// slower (5.5 instead of 295 pages/s) for nothing. An empty page without a picture has
/// nothing to read.
fn weak_page(layer: &Layer, picture: bool) -> bool {
    let Layer {
        chars,
        unreadable,
        words,
    } = *layer;
    if chars >= 40 && unreadable * 10 > chars {
        return true;
    }
    picture && (chars < 40 || words * 2 < chars)
}

/// What a page's text layer holds: non-space characters, unreadable ones (replacement and
/// private-use characters), and characters in words ([`word_chars`]).
#[derive(Clone, Copy, Default)]
struct Layer {
    chars: usize,
    unreadable: usize,
    words: usize,
}

/// Every page's [`Layer`] (index: page - 1), in one pass over the blocks. (Collecting each
/// page's text by scanning every block is quadratic in pages; on the 2,415-page R reference
/// manual both take ~20 s, nearly all of it in pdf-extract, so this bounds the worst case.)
fn layers(ex: &Extracted, total: u32) -> Vec<Layer> {
    let mut out = vec![Layer::default(); total as usize];
    for b in &ex.blocks {
        let Some(l) = b
            .page
            .and_then(|p| p.checked_sub(1))
            .and_then(|i| out.get_mut(i as usize))
        else {
            continue;
        };
        for c in b.text.chars().filter(|c| !c.is_whitespace()) {
            l.chars += 1;
            if c == '\u{fffd}' || ('\u{e000}'..='\u{f8ff}').contains(&c) {
                l.unreadable += 1;
            }
        }
        l.words += word_chars(&b.text);
    }
    out
}

fn page_text(ex: &Extracted, page: u32) -> String {
    let mut s = String::new();
    for b in ex.blocks.iter().filter(|b| b.page == Some(page)) {
        s.push_str(&b.text);
        s.push('\n');
    }
    s
}

/// Characters in tokens that read as words: two or more letters, maybe with trailing
/// punctuation. Garbage from a bad text layer ("ﬁ3#@!", single letters) counts little.
fn word_chars(text: &str) -> usize {
    text.split_whitespace()
        .map(|t| t.trim_matches(|c: char| c.is_ascii_punctuation()))
        .filter(|t| t.chars().count() >= 2 && t.chars().all(char::is_alphabetic))
        .map(|t| t.chars().count())
        .sum()
}

/// Puts the recognised paragraphs where the page's blocks were.
fn replace_page(ex: &mut Extracted, page: u32, paragraphs: &[String]) {
    let at = ex
        .blocks
        .iter()
        .position(|b| b.page.is_some_and(|p| p >= page))
        .unwrap_or(ex.blocks.len());
    ex.blocks.retain(|b| b.page != Some(page));
    let mut new: Vec<Block> = Vec::new();
    for para in paragraphs {
        push_block(&mut new, para, Some(page), &[]);
    }
    ex.blocks.splice(at..at, new);
}

fn recognise_pdf_page(file: &MemFile, page: u32, langs: &[String]) -> Result<Option<Page>, String> {
    let Some(image) = render(file, page)? else {
        return Ok(None);
    };
    if is_blank(&image) {
        // An empty page (the back of a duplex scan): nothing to recognise, and Tesseract
        // would take ~0.12 s to say so, 6x the rendering.
        return Ok(Some(Page {
            page,
            ..Page::default()
        }));
    }
    let img = MemFile::new("hearth-page", &image)?;
    drop(image);
    let Some(mut pages) = tesseract(&img.path(), langs, Some(DPI))? else {
        return Ok(None);
    };
    let mut p = pages.pop().unwrap_or_default();
    p.page = page;
    Ok(Some(p))
}

/// One page of the PDF as a gray PGM image, or `None` when pdftoppm is not installed.
fn render(file: &MemFile, page: u32) -> Result<Option<Vec<u8>>, String> {
    let n = page.to_string();
    let dpi = DPI.to_string();
    let mut cmd = Command::new("pdftoppm");
    cmd.args(["-q", "-gray", "-r", &dpi, "-f", &n, "-l", &n])
        .arg(file.path());
    let Some(out) = run(cmd, "pdftoppm", MAX_RENDER_BYTES)? else {
        return Ok(None);
    };
    if out.len() as u64 >= MAX_RENDER_BYTES {
        return Err(format!(
            "the page is too large to render for OCR (over {} MiB at {DPI} dpi)",
            MAX_RENDER_BYTES >> 20
        ));
    }
    if out.is_empty() {
        return Err("pdftoppm rendered nothing".to_owned());
    }
    Ok(Some(out))
}

/// Whether a rendered page (binary PGM, as pdftoppm writes it) is blank: under 1 in 10,000
/// pixels darker than mid-gray. A short line of text at 150 dpi darkens ~1,000 of a page's
/// 2 million.
fn is_blank(pgm: &[u8]) -> bool {
    let Some(pixels) = pgm_pixels(pgm) else {
        return false;
    };
    let dark = pixels.iter().filter(|&&p| p < 128).count();
    dark * 10_000 < pixels.len()
}

/// The pixels of an 8-bit binary PGM image (`P5 W H 255`, then W x H bytes).
fn pgm_pixels(pgm: &[u8]) -> Option<&[u8]> {
    let mut fields = Vec::with_capacity(4);
    let mut at = 0;
    while fields.len() < 4 {
        while pgm.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !pgm.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        fields.push(std::str::from_utf8(&pgm[start..at]).ok()?);
    }
    let [magic, w, h, max] = fields[..] else {
        return None;
    };
    let (w, h): (usize, usize) = (w.parse().ok()?, h.parse().ok()?);
    if magic != "P5" || max != "255" {
        return None;
    }
    // One whitespace byte ends the header.
    pgm.get(at + 1..at + 1 + w.checked_mul(h)?)
}

/// Runs Tesseract on an image file; `None` when it is not installed.
fn tesseract(path: &str, langs: &[String], dpi: Option<u32>) -> Result<Option<Vec<Page>>, String> {
    let langs = if langs.is_empty() {
        "eng".to_owned()
    } else {
        langs.join("+")
    };
    let mut cmd = Command::new("tesseract");
    cmd.arg(path).arg("stdout").args(["-l", &langs]);
    if let Some(dpi) = dpi {
        cmd.args(["--dpi", &dpi.to_string()]);
    }
    cmd.arg("tsv").env("OMP_THREAD_LIMIT", "1");
    let Some(out) = run(cmd, "tesseract", 256 << 20)? else {
        return Ok(None);
    };
    Ok(Some(parse_tsv(&String::from_utf8_lossy(&out))))
}

/// Tesseract's TSV: one row per page, block, paragraph, line and word; words (level 5) carry
/// a confidence and the text. Paragraphs are rebuilt from the words, hyphenation undone.
pub(crate) fn parse_tsv(tsv: &str) -> Vec<Page> {
    let mut pages: Vec<Page> = Vec::new();
    let mut para_key = None;
    let mut line_key = None;
    let mut para = String::new();
    let flush = |pages: &mut Vec<Page>, para: &mut String| {
        if let Some(p) = pages.last_mut() {
            let text = join_lines(para);
            if !text.trim().is_empty() {
                p.paragraphs.push(text);
            }
        }
        para.clear();
    };
    for row in tsv.lines().skip(1) {
        let f: Vec<&str> = row.splitn(12, '\t').collect();
        if f.len() < 12 {
            continue;
        }
        let num = |i: usize| f[i].parse::<u32>().unwrap_or(0);
        let (level, page) = (num(0), num(1));
        if pages.last().is_none_or(|p| p.page != page) {
            flush(&mut pages, &mut para);
            pages.push(Page {
                page,
                ..Page::default()
            });
            para_key = None;
            line_key = None;
        }
        if level != 5 {
            continue;
        }
        let word = f[11].trim();
        if word.is_empty() {
            continue;
        }
        let pk = (num(2), num(3));
        if para_key != Some(pk) {
            flush(&mut pages, &mut para);
            para_key = Some(pk);
            line_key = None;
        }
        let lk = num(4);
        if line_key != Some(lk) {
            if !para.is_empty() {
                para.push('\n');
            }
            line_key = Some(lk);
        } else {
            para.push(' ');
        }
        para.push_str(word);
        if let (Ok(conf), Some(p)) = (f[10].parse::<f64>(), pages.last_mut())
            && conf >= 0.0
        {
            p.conf_sum += conf;
            p.words += 1;
        }
    }
    flush(&mut pages, &mut para);
    pages
}

impl OcrSummary {
    fn add(&mut self, p: &Page) {
        self.pages += 1;
        self.words += p.words;
        self.conf_sum += p.conf_sum;
        self.confidence = if self.words == 0 {
            0.0
        } else {
            (self.conf_sum / f64::from(self.words)) as f32
        };
    }
}

/// Runs a program with a time limit, reading at most `max` bytes of its standard output;
/// `None` when the program is not installed.
fn run(mut cmd: Command, name: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot start {name}: {e}")),
    };
    let mut stdout = child.stdout.take().ok_or("started without a pipe")?;
    let mut stderr = child.stderr.take().ok_or("started without a pipe")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(max).read_to_end(&mut out);
        // Whatever is left is drained, so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut err);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        err
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PAGE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} took longer than {} s",
                    PAGE_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{name} failed ({status}): {}", last.trim()));
    }
    Ok(Some(out))
}

/// An anonymous in-memory file a child opens by its `/dev/fd` path. Not close-on-exec, so
/// children inherit it; the extraction process handles one document at a time.
pub(super) struct MemFile(std::fs::File);

impl MemFile {
    pub(super) fn new(name: &str, bytes: &[u8]) -> Result<Self, String> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(name, MFdFlags::empty())
            .map_err(|e| format!("cannot create an in-memory file: {e}"))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)
            .map_err(|e| format!("cannot fill the in-memory file: {e}"))?;
        Ok(Self(file))
    }

    pub(super) fn path(&self) -> String {
        format!("/dev/fd/{}", self.0.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_rows_become_paragraphs_with_confidence() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
1\t1\t0\t0\t0\t0\t0\t0\t100\t100\t-1\t\n\
5\t1\t1\t1\t1\t1\t0\t0\t1\t1\t90\tAn\n\
5\t1\t1\t1\t1\t2\t0\t0\t1\t1\t80\texam-\n\
5\t1\t1\t1\t2\t1\t0\t0\t1\t1\t70\tple.\n\
5\t1\t2\t1\t1\t1\t0\t0\t1\t1\t60\tNext\n\
1\t2\t0\t0\t0\t0\t0\t0\t100\t100\t-1\t\n\
5\t2\t1\t1\t1\t1\t0\t0\t1\t1\t50\tTwo\n";
        let pages = parse_tsv(tsv);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].paragraphs, ["An example.", "Next"]);
        assert_eq!(pages[0].words, 4);
        assert!((pages[0].confidence() - 75.0).abs() < 1e-9);
        assert_eq!(
            (pages[1].page, pages[1].paragraphs.clone()),
            (2, vec!["Two".to_owned()])
        );
    }

    #[test]
    fn blank_pages_are_told_from_pages_with_a_line_of_text() {
        let page = |dark: usize| {
            let mut p = b"P5\n100 200\n255\n".to_vec();
            p.extend((0..20_000).map(|i| if i < dark { 0u8 } else { 250 }));
            p
        };
        assert!(is_blank(&page(0)));
        assert!(is_blank(&page(1)));
        assert!(!is_blank(&page(20)));
        assert!(!is_blank(b"P5\n100 200\n255\n"), "truncated");
        assert!(!is_blank(b"P6\n1 1\n255\n\xff\xff\xff"), "not gray");
    }

    #[test]
    fn word_chars_discount_garbage() {
        assert_eq!(word_chars("Hello, world!"), 10);
        assert_eq!(word_chars("ﬁ3#@! a 1234 x_y"), 0);
    }

    #[test]
    fn an_image_too_large_is_refused_with_what_to_do() {
        let err = check_image_size(30_000, 30_000).unwrap_err();
        assert!(err.contains("30000 x 30000 pixels"), "{err}");
        assert!(check_image_size(4960, 7016).is_ok());
    }

    /// Word accuracy of `got` against `truth`: 1 - (word edit distance / truth words), words
    /// compared with the punctuation around them trimmed.
    fn word_accuracy(got: &str, truth: &str) -> f64 {
        let words = |t: &str| -> Vec<String> {
            t.split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned())
                .filter(|w| !w.is_empty())
                .collect()
        };
        let (a, b) = (words(got), words(truth));
        let mut prev: Vec<usize> = (0..=a.len()).collect();
        for (j, wb) in b.iter().enumerate() {
            let mut cur = vec![j + 1; a.len() + 1];
            for (i, wa) in a.iter().enumerate() {
                cur[i + 1] = (prev[i] + usize::from(wa != wb))
                    .min(prev[i + 1] + 1)
                    .min(cur[i] + 1);
            }
            prev = cur;
        }
        1.0 - prev[a.len()] as f64 / b.len().max(1) as f64
    }

    fn scans(f: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/scans");
        std::fs::read(dir.join(f)).unwrap()
    }

    fn text_of(ex: &Extracted) -> String {
        ex.blocks
            .iter()
            .map(|b| b.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn langs(l: &[&str]) -> Options {
        Options {
            ocr_languages: l.iter().map(|s| (*s).to_owned()).collect(),
            ..Options::default()
        }
    }

    #[test]
    fn scans_at_150_dpi_read_at_word_accuracy_of_0_9_in_english_and_german() {
        // Needs Debian's tesseract-ocr, tesseract-ocr-eng and -deu, and poppler-utils.
        for (name, lang) in [("gzip-manual-scan", "eng"), ("gzip-de-scan", "deu")] {
            let ex = super::super::parse_with(
                DocKind::Pdf,
                &scans(&format!("{name}.pdf")),
                &langs(&[lang]),
            )
            .unwrap();
            assert_eq!(
                ex.engine.as_deref(),
                Some(TESSERACT),
                "{name}: {:?}",
                ex.warnings
            );
            assert_eq!(ex.pages, Some(3));
            let truth = String::from_utf8(scans(&format!("{name}.txt"))).unwrap();
            let acc = word_accuracy(&text_of(&ex), &truth);
            let ocr = ex.ocr.clone().unwrap();
            eprintln!(
                "{name}: word accuracy {acc:.3}, {} words, confidence {:.1}",
                ocr.words, ocr.confidence
            );
            assert!(acc >= 0.9, "{name}: word accuracy {acc:.3}");
            assert_eq!(ocr.pages, 3);
            assert!(ocr.confidence > 80.0, "{ocr:?}");
            // Page numbers are kept.
            assert!(ex.blocks.iter().any(|b| b.page == Some(3)));
        }
    }

    #[test]
    fn png_jpeg_and_multi_page_tiff_images_are_read() {
        let truth_page = "preserves the mode and modification timestamp";
        for f in ["gzip-manual-page.png", "gzip-manual-page.jpg"] {
            let kind = crate::sniff::sniff(&scans(f), f).unwrap();
            let ex = super::super::parse_with(kind, &scans(f), &langs(&["eng"])).unwrap();
            assert!(text_of(&ex).contains(truth_page), "{f}: {}", text_of(&ex));
            assert_eq!(ex.engine.as_deref(), Some(TESSERACT));
        }
        let ex = super::super::parse_with(
            DocKind::Tiff,
            &scans("gzip-de-pages.tiff"),
            &langs(&["deu"]),
        )
        .unwrap();
        assert_eq!(ex.pages, Some(2));
        assert!(ex.blocks.iter().any(|b| b.page == Some(2)));
        assert!(text_of(&ex).contains("Datei"), "{}", text_of(&ex));
    }

    #[test]
    fn a_pdf_of_text_and_scanned_pages_reads_each_page_its_way_and_reports_progress() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let seen = Rc::new(RefCell::new(Vec::new()));
        let log = seen.clone();
        let opts = Options {
            ocr_languages: vec!["eng".into()],
            progress: Some(Box::new(move |d, t| log.borrow_mut().push((d, t)))),
            ..Options::default()
        };
        let ex =
            super::super::parse_with(DocKind::Pdf, &scans("gzip-manual-mixed.pdf"), &opts).unwrap();
        assert_eq!(
            ex.engine.as_deref(),
            Some("pdf-extract + tesseract OCR (1 of 2 pages)")
        );
        assert_eq!(*seen.borrow(), [(0, 1), (1, 1)]);
        let page = |n| {
            ex.blocks
                .iter()
                .filter(|b| b.page == Some(n))
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let truth = String::from_utf8(scans("gzip-manual-mixed-page2.txt")).unwrap();
        let acc = word_accuracy(&page(2), &truth);
        assert!(acc >= 0.9, "page 2: word accuracy {acc:.3}");
        assert!(!page(1).is_empty());
        assert_eq!(ex.ocr.as_ref().map(|o| o.pages), Some(1));
    }

    #[test]
    fn a_bad_text_layer_is_weak_and_a_good_one_is_not() {
        let mut ex = Extracted::default();
        push_block(
            &mut ex.blocks,
            &format!(
                "{} ﬁ3#@! x y z 1 2 3 4 5 6 7 8 9 0 q w e r t y u i o p",
                "\u{e001}".repeat(20)
            ),
            Some(1),
            &[],
        );
        push_block(
            &mut ex.blocks,
            "A page of ordinary words with a sentence or two in it, well over forty characters.",
            Some(2),
            &[],
        );
        push_block(
            &mut ex.blocks,
            "fn main() { let x = 1 + 2; println!(\"{x}\"); } // 0x1f 0x2e 0x3d 0x4c 0x5b",
            Some(4),
            &[],
        );
        let layers = layers(&ex, 4);
        for picture in [true, false] {
            assert!(weak_page(&layers[0], picture), "garbled");
            assert!(!weak_page(&layers[1], picture), "words");
        }
        // Empty: read if it shows a picture.
        assert!(weak_page(&layers[2], true));
        assert!(!weak_page(&layers[2], false));
        // Code, not words: read only as a scan's layer.
        assert!(weak_page(&layers[3], true));
        assert!(!weak_page(&layers[3], false));
        replace_page(&mut ex, 1, &["Recognised words".to_owned()]);
        assert_eq!(ex.blocks[0].text, "Recognised words");
        assert_eq!(ex.blocks[1].page, Some(2));
    }
}
