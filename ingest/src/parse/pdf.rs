//! PDF via `pdf-extract`, page by page, so one unreadable page costs that page, not the
//! document. Panics inside the parser are caught per page; loops and memory blow-ups are the
//! business of the extraction process's limits.
//!
//! A second engine takes over when pdf-extract cannot read the file (a damaged cross-reference
//! table, a crash), loses pages, or yields little or garbled text: poppler's `pdftotext`
//! (Debian's poppler-utils), run as a child of the extraction process (so under its memory
//! limit) with a time limit of its own, reading the document from an in-memory file. Its text
//! is kept only when it has more readable text; the record names the engine that produced the
//! text.
//!
//! pdf-extract gets half the document's time limit, on a thread of its own: past it, it is
//! asked to stop at its next page and poppler reads the document instead. A page that never
//! ends leaves its thread running; the extraction process retires after its reply, which ends
//! the thread (see `extract.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pdf_extract::PlainTextOutput;

use super::text::split_paragraphs;
use super::{Extracted, push_block};

/// The second engine's name, as records show it.
pub(crate) const POPPLER: &str = "poppler pdftotext";
/// How long the second engine may take for one document. After pdf-extract it gets what is
/// left of the document's time limit less a tenth (kept for OCR and the reply): pdf-extract
/// has had at most half and its thread at most a tenth to stop, so poppler gets at least 3/10.
/// (A fixed 3/10 lost an 8,000-page PDF on a loaded CI machine: 2.4 s for a 0.5 s job.)
const POPPLER_TIMEOUT: Duration = Duration::from_secs(60);
/// Set when pdf-extract's thread did not stop when asked: the process must end to end it.
pub(super) static LEFT_RUNNING: AtomicBool = AtomicBool::new(false);
/// Stack of pdf-extract's thread: the main thread's 8 MiB, for deeply nested objects.
const STACK_BYTES: usize = 8 << 20;

pub(super) fn parse(bytes: &[u8], opts: &super::Options) -> Result<Extracted, String> {
    let (mut ex, pictures) = match &opts.without_pdf_extract {
        Some(why) => second_engine_only(bytes, why, opts.time_limit)?,
        None => text_layer(bytes, opts.time_limit, opts.stage.as_deref())?,
    };
    super::ocr::pdf_pages(bytes, &mut ex, pictures.as_ref(), opts);
    Ok(ex)
}

/// The text layer, by pdf-extract or poppler, whichever reads more, and the pages that may
/// need OCR whatever their text layer says.
fn text_layer(
    bytes: &[u8],
    limit: Option<Duration>,
    stage: Option<&dyn Fn(&str)>,
) -> Result<(Extracted, PictureSet), String> {
    let started = Instant::now();
    let (primary, pictures) = match parse_pdf_extract_within(bytes, limit) {
        Ok((ex, pictures)) => (Ok(ex), pictures),
        Err(e) => (Err(e), None),
    };
    let why = match &primary {
        // A password stops both engines alike.
        Err(e) if e.starts_with("encrypted PDF") => return Err(e.clone()),
        Err(e) => e.clone(),
        Ok(ex) => match weakness(ex) {
            Some(why) => why,
            None => return primary.map(|ex| (ex, pictures)),
        },
    };
    let poppler_limit = limit.map_or(POPPLER_TIMEOUT, |l| {
        let left = l.saturating_sub(started.elapsed()).saturating_sub(l / 10);
        POPPLER_TIMEOUT.min(left.max(l * 3 / 10))
    });
    if let Some(stage) = stage {
        let why = why.strip_prefix("pdf-extract ").unwrap_or(&why);
        stage(&format!("pdf-extract {why}; {POPPLER} was reading it"));
    }
    let Ok(Some(mut alt)) = poppler(bytes, poppler_limit) else {
        return primary.map(|ex| (ex, pictures));
    };
    let better = match &primary {
        Err(_) => alt.text_bytes() > 0,
        Ok(ex) => readable_chars(&alt) > readable_chars(ex) + readable_chars(ex) / 4,
    };
    if !better {
        return primary.map(|ex| (ex, pictures));
    }
    if let Ok(ex) = &primary {
        alt.title = ex.title.clone();
    }
    alt.engine = Some(POPPLER.to_owned());
    let why = match why.starts_with("pdf-extract") {
        true => why,
        false => format!("pdf-extract {why}"),
    };
    alt.warnings
        .insert(0, format!("text from {POPPLER}: {why}"));
    Ok((alt, pictures))
}

/// The text by poppler alone, when pdf-extract ended the process that tried it (`why`). Which
/// pages draw pictures is unknown: lopdf is not trusted with the file either.
fn second_engine_only(
    bytes: &[u8],
    why: &str,
    limit: Option<Duration>,
) -> Result<(Extracted, PictureSet), String> {
    let limit = limit.map_or(POPPLER_TIMEOUT, |l| POPPLER_TIMEOUT.min(l * 4 / 5));
    match poppler(bytes, limit) {
        // No text (a bomb, or a scan): the first reason stands; OCR is not tried on a file
        // that already ended one process.
        Ok(Some(mut alt)) if alt.text_bytes() > 0 => {
            alt.engine = Some(POPPLER.to_owned());
            alt.warnings
                .insert(0, format!("text from {POPPLER}: pdf-extract {why}"));
            Ok((alt, None))
        }
        Ok(_) => Err(format!(
            "pdf-extract {why}, and no second engine could read the PDF"
        )),
        Err(e) => Err(format!("pdf-extract {why}, and {e}")),
    }
}

/// Why pdf-extract's result is worth a second opinion: pages it could not read, or little
/// or garbled text for the pages there are.
fn weakness(ex: &Extracted) -> Option<String> {
    let pages = ex.pages.unwrap_or(1).max(1) as usize;
    let unreadable = ex.warnings.len();
    if unreadable > 0 {
        return Some(format!("could not read {unreadable} of {pages} pages"));
    }
    let chars: usize = ex.blocks.iter().map(|b| b.text.chars().count()).sum();
    if chars < 40 * pages {
        return Some(format!("found only {chars} characters in {pages} pages"));
    }
    let readable = readable_chars(ex);
    if readable * 10 < chars * 9 {
        return Some(format!(
            "yielded garbled text ({} % unreadable characters)",
            100 - readable * 100 / chars.max(1)
        ));
    }
    None
}

/// Characters that read as text: not replacement characters, private-use code points (fonts
/// without a Unicode map) or controls.
fn readable_chars(ex: &Extracted) -> usize {
    ex.blocks
        .iter()
        .flat_map(|b| b.text.chars())
        .filter(|&c| {
            c != '\u{fffd}'
                && !('\u{e000}'..='\u{f8ff}').contains(&c)
                && (!c.is_control() || c == '\n' || c == '\t')
        })
        .count()
}

/// The text of every page by `pdftotext`, or `None` when it is not installed. Pages are
/// separated by form feeds in its output, so page numbers are kept.
fn poppler(bytes: &[u8], limit: Duration) -> Result<Option<Extracted>, String> {
    // The fuzz targets exercise hearth's own code; a program per input would only slow them.
    if cfg!(feature = "fuzzing") {
        return Ok(None);
    }
    let Some(text) = run_pdftotext(bytes, limit)? else {
        return Ok(None);
    };
    let mut out = Extracted::default();
    let mut pages = 0u32;
    for (i, page) in text.split('\x0c').enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if !page.trim().is_empty() {
            pages = pages.max(n);
        }
        for para in split_paragraphs(page) {
            push_block(&mut out.blocks, &join_lines(para), Some(n), &[]);
        }
    }
    // Every page ends with a form feed, empty ones too.
    let feeds = u32::try_from(text.matches('\x0c').count()).unwrap_or(u32::MAX);
    out.pages = Some(pages.max(feeds));
    Ok(Some(out))
}

/// Runs `pdftotext` on the document held in an anonymous in-memory file (memfd), which the
/// child opens by its `/dev/fd` path: the bytes never touch a disk, and poppler gets a
/// seekable file. (On stdin, poppler 22.12 loops without end, allocating, on PDFs with a
/// damaged cross-reference table; a fuzzer input showed it.)
fn run_pdftotext(bytes: &[u8], limit: Duration) -> Result<Option<String>, String> {
    let file = super::ocr::MemFile::new("hearth-pdf", bytes)?;
    let path = file.path();
    let mut child = match Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8", "-eol", "unix"])
        .arg(&path)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot start pdftotext: {e}")),
    };
    let mut stdout = child
        .stdout
        .take()
        .ok_or("pdftotext started without a pipe")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // Bounded: the extraction's own text limit applies after this.
        let _ = (&mut stdout).take(256 << 20).read_to_end(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "pdftotext took longer than {} s",
                    limit.as_secs_f32()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("pdftotext: {e}")),
        }
    };
    drop(file);
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("pdftotext failed ({status})"));
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// The pages that may need OCR whatever their text layer says: those that draw a scan-sized
/// picture, and those pdf-extract could not read. `None` when the file structure could not
/// be read, so any page may be one.
type PictureSet = Option<BTreeSet<u32>>;

/// pdf-extract's reading under half of `limit` (none: inline, unlimited). Past it, the thread
/// is asked to stop before its next page; one that does not within a tenth of `limit` (at most
/// a second) is left running and [`LEFT_RUNNING`] set.
fn parse_pdf_extract_within(
    bytes: &[u8],
    limit: Option<Duration>,
) -> Result<(Extracted, PictureSet), String> {
    let Some((limit, grace)) = limit.map(|l| (l / 2, (l / 10).min(Duration::from_secs(1)))) else {
        return parse_pdf_extract(bytes, &AtomicBool::new(false));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (owned, asked) = (bytes.to_vec(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name("pdf-extract".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(parse_pdf_extract(&owned, &asked));
        });
    if spawned.is_err() {
        return parse_pdf_extract(bytes, &stop);
    }
    use std::sync::mpsc::RecvTimeoutError;
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(RecvTimeoutError::Disconnected) => Err("the PDF parser crashed".into()),
        Err(RecvTimeoutError::Timeout) => {
            stop.store(true, Ordering::Relaxed);
            if rx.recv_timeout(grace).is_err() {
                LEFT_RUNNING.store(true, Ordering::Relaxed);
            }
            Err(format!(
                "pdf-extract did not finish within {} s (half the extraction time limit)",
                limit.as_secs_f32()
            ))
        }
    }
}

fn parse_pdf_extract(bytes: &[u8], stop: &AtomicBool) -> Result<(Extracted, PictureSet), String> {
    let mut doc = catch_unwind(AssertUnwindSafe(|| lopdf::Document::load_mem(bytes)))
        .map_err(|p| {
            format!(
                "the PDF parser crashed reading the file structure: {}",
                panic_message(&p)
            )
        })?
        .map_err(|e| format!("not a readable PDF: {e}"))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err("encrypted PDF: a password is required to read it".into());
    }
    let page_ids = doc.get_pages();
    if page_ids.is_empty() {
        return Err("the PDF has no pages".into());
    }
    // Pages pdf-extract cannot read join these below: rendering may read them.
    let mut pictures = catch_unwind(AssertUnwindSafe(|| picture_pages(&doc, &page_ids))).ok();
    let pages: Vec<u32> = page_ids.keys().copied().collect();
    let mut out = Extracted {
        title: title(&doc),
        pages: u32::try_from(pages.len()).ok(),
        ..Extracted::default()
    };
    let mut failed = 0usize;
    for &page in &pages {
        if stop.load(Ordering::Relaxed) {
            return Err("stopped".into());
        }
        let mut text = String::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut sink = PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&doc, &mut sink, page)
        }));
        match result {
            Ok(Ok(())) => {
                for para in split_paragraphs(&text) {
                    push_block(&mut out.blocks, &join_lines(para), Some(page), &[]);
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                if let Some(s) = pictures.as_mut() {
                    s.insert(page);
                }
                out.warnings.push(format!("page {page}: {e}"));
            }
            Err(p) => {
                failed += 1;
                if let Some(s) = pictures.as_mut() {
                    s.insert(page);
                }
                out.warnings.push(format!(
                    "page {page}: the PDF parser crashed: {}",
                    panic_message(&p)
                ));
            }
        }
    }
    if failed == pages.len() {
        let first = out.warnings.first().cloned().unwrap_or_default();
        return Err(format!(
            "no page of the PDF could be read ({} pages; first problem: {first})",
            pages.len()
        ));
    }
    Ok((out, pictures))
}

/// Pixels an image must have to count as a picture worth recognising: a third of a letter
/// page at 72 dpi. A scan at 150 dpi has ~2 million; logos and icons have far fewer.
const PICTURE_PIXELS: i64 = 160_000;

/// The pages that draw an image of at least [`PICTURE_PIXELS`], directly or inside a form.
/// Only dictionaries are read, no stream is decoded: ~1 µs a page.
fn picture_pages(doc: &lopdf::Document, pages: &BTreeMap<u32, lopdf::ObjectId>) -> BTreeSet<u32> {
    let mut seen: HashMap<lopdf::ObjectId, bool> = HashMap::new();
    let mut out = BTreeSet::new();
    for (&n, &id) in pages {
        let Ok((own, inherited)) = doc.get_page_resources(id) else {
            continue;
        };
        let mut dicts: Vec<&lopdf::Dictionary> = own.into_iter().collect();
        dicts.extend(inherited.iter().filter_map(|&r| doc.get_dictionary(r).ok()));
        if dicts.iter().any(|r| has_picture(doc, r, 0, &mut seen)) {
            out.insert(n);
        }
    }
    out
}

fn has_picture(
    doc: &lopdf::Document,
    resources: &lopdf::Dictionary,
    depth: u8,
    seen: &mut HashMap<lopdf::ObjectId, bool>,
) -> bool {
    use lopdf::Object;
    let xobjects = match resources.get(b"XObject") {
        Ok(Object::Reference(r)) => doc.get_dictionary(*r).ok(),
        Ok(Object::Dictionary(d)) => Some(d),
        _ => None,
    };
    let Some(xobjects) = xobjects else {
        return false;
    };
    for (_, x) in xobjects.iter() {
        let Ok(id) = x.as_reference() else { continue };
        if let Some(&known) = seen.get(&id) {
            if known {
                return true;
            }
            continue;
        }
        // Marked first, so a form that names itself ends here.
        seen.insert(id, false);
        let Ok(stream) = doc.get_object(id).and_then(Object::as_stream) else {
            continue;
        };
        let dict = &stream.dict;
        let found = match dict.get(b"Subtype").and_then(Object::as_name) {
            Ok(b"Image") => {
                let side = |k: &[u8]| dict.get(k).and_then(Object::as_i64).unwrap_or(0);
                side(b"Width").saturating_mul(side(b"Height")) >= PICTURE_PIXELS
            }
            Ok(b"Form") if depth < 4 => match dict.get(b"Resources") {
                Ok(Object::Dictionary(r)) => has_picture(doc, r, depth + 1, seen),
                Ok(Object::Reference(r)) => doc
                    .get_dictionary(*r)
                    .is_ok_and(|r| has_picture(doc, r, depth + 1, seen)),
                _ => false,
            },
            _ => false,
        };
        seen.insert(id, found);
        if found {
            return true;
        }
    }
    false
}

/// Joins the lines of a paragraph, undoing end-of-line hyphenation ("exam-\nple" → "example").
pub(super) fn join_lines(para: &str) -> String {
    let mut out = String::with_capacity(para.len());
    for line in para.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if out.ends_with('-') && line.starts_with(|c: char| c.is_lowercase()) {
            out.pop();
        } else if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

fn title(doc: &lopdf::Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?.as_reference().ok()?;
    let dict = doc.get_dictionary(info).ok()?;
    let t = lopdf::decode_text_string(dict.get(b"Title").ok()?).ok()?;
    let t = t.trim().to_owned();
    (!t.is_empty()).then_some(t)
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_wrapped_lines_and_hyphenation() {
        assert_eq!(
            join_lines("An exam-\nple of\n  wrapped text"),
            "An example of wrapped text"
        );
        assert_eq!(join_lines("Well-\nKnown"), "Well- Known");
    }

    #[test]
    fn a_pdf_that_pdf_extract_cannot_read_is_read_by_poppler() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        // Every byte offset is 502 bytes off (testdata/sources/make_broken.py).
        let bytes = std::fs::read(dir.join("broken/damaged-xref.pdf")).unwrap();
        assert!(parse_pdf_extract(&bytes, &AtomicBool::new(false)).is_err());
        // The step poppler takes is named first (a time limit that ends it says so).
        let stages = std::cell::RefCell::new(Vec::new());
        let record = |s: &str| stages.borrow_mut().push(s.to_owned());
        let (ex, pictures) = text_layer(&bytes, None, Some(&record)).unwrap();
        let stages = stages.into_inner();
        assert_eq!(stages.len(), 1, "{stages:?}");
        assert!(
            stages[0].starts_with("pdf-extract not a readable PDF")
                && stages[0].ends_with("; poppler pdftotext was reading it"),
            "{stages:?}"
        );
        assert_eq!(pictures, None, "unknown when the structure is unreadable");
        assert_eq!(ex.engine.as_deref(), Some(POPPLER), "needs poppler-utils");
        assert_eq!(ex.pages, Some(3));
        assert!(
            ex.warnings[0]
                .starts_with("text from poppler pdftotext: pdf-extract not a readable PDF")
        );
        let first = ex.blocks.iter().find(|b| b.page == Some(1)).unwrap();
        assert!(
            first.text.contains("Welcome to Halden Health Analytics"),
            "{first:?}"
        );
        assert!(ex.blocks.iter().any(|b| b.page == Some(3)));
        // The intact file is pdf-extract's.
        let good = text_layer(
            &std::fs::read(dir.join("corpus/onboarding-handbook.pdf")).unwrap(),
            None,
            None,
        )
        .unwrap()
        .0;
        assert_eq!(good.engine, None);
    }

    #[test]
    fn scanned_pages_are_told_by_their_pictures_and_logos_are_not_pictures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        // Page 1 is text, page 2 a scan, page 3 text (testdata/sources/scans/make_scans.sh).
        let (_, pictures) = parse_pdf_extract(
            &read("scans/gzip-manual-mixed.pdf"),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(pictures, Some(BTreeSet::from([2])));
        let (_, pictures) =
            parse_pdf_extract(&read("scans/gzip-manual-scan.pdf"), &AtomicBool::new(false))
                .unwrap();
        assert_eq!(pictures, Some(BTreeSet::from([1, 2, 3])));
        let (_, pictures) = parse_pdf_extract(
            &read("corpus/onboarding-handbook.pdf"),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(pictures, Some(BTreeSet::new()));
    }

    #[test]
    fn the_second_engine_ends_on_a_pdf_that_made_poppler_loop_on_stdin() {
        // A fuzzer's input: poppler read from stdin allocated without end on it.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/parse_pdf");
        let bytes = std::fs::read(dir.join("poppler-stdin-loop.pdf")).unwrap();
        let started = Instant::now();
        let _ = text_layer(&bytes, None, None);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn junk_and_truncated_input_get_reasons() {
        let err = text_layer(b"%PDF-1.4\nthis is not really a pdf", None, None).unwrap_err();
        assert!(err.contains("PDF"), "{err}");
    }
}
