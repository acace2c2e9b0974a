//! Spreadsheets (XLSX, XLSM, XLSB, XLS, ODS through calamine) and delimited text (CSV, TSV
//! through the csv crate): each sheet is a heading, each row a block that names its columns
//! (`Header: value; ...`), so a question about one cell finds its row.

use std::io::Cursor;

use calamine::{Data, DataType, Ods, Range, Reader, Xls, Xlsb, Xlsx};

use super::package::{Labeller, labelled_rows};
use super::{Extracted, push_block};

/// The workbook formats.
pub(super) enum Book {
    /// XLSX, XLSM or XLSB.
    Xlsx,
    Xls,
    Ods,
}

/// Columns a sheet may have (XFD, the last column of Excel's grid).
const MAX_COLUMNS: usize = 16_384;

/// Streams every sheet of an XLSX or XLSB book through [`stream_cells`]. A macro because
/// calamine's two cell readers share no trait.
macro_rules! stream_book {
    ($book:ident, $out:ident, $max_text:ident) => {
        for name in $book.sheet_names() {
            let unreadable = |e: &dyn std::fmt::Display| unreadable(&name, e);
            let mut cells = $book
                .worksheet_cells_reader(&name)
                .map_err(|e| unreadable(&e))?;
            stream_cells(&mut $out, &name, $max_text, || {
                let cell = cells.next_cell().map_err(|e| unreadable(&e))?;
                Ok(cell.map(|c| (c.get_position(), Data::from(c.get_value().clone()))))
            })?;
        }
    };
}

/// A workbook's sheets, in order. XLSX and XLSB are read a cell at a time and each row is
/// written as soon as it ends, so memory holds the text, never the sheet's grid: a sheet of
/// two cells at A1 and XFD1048576 is two cells, not 17 billion. XLS and ODS are read a sheet
/// at a time (calamine has no cell reader for them), under the extraction memory limit. The
/// text stops at `max_text` bytes with the reason.
pub(super) fn workbook(kind: Book, bytes: &[u8], max_text: u64) -> Result<Extracted, String> {
    let data = Cursor::new(bytes);
    let opened = |e: &dyn std::fmt::Display| format!("cannot open the workbook: {e}");
    let mut out = Extracted::default();
    match kind {
        Book::Xls => read_ranges(Xls::new(data).map_err(|e| opened(&e))?, &mut out, max_text)?,
        Book::Ods => read_ranges(Ods::new(data).map_err(|e| opened(&e))?, &mut out, max_text)?,
        Book::Xlsx => match Xlsx::new(data.clone()) {
            Ok(mut book) => stream_book!(book, out, max_text),
            // The binary variant (XLSB) holds xl/workbook.bin instead.
            Err(xlsx) => match Xlsb::new(data) {
                Ok(mut book) => stream_book!(book, out, max_text),
                Err(_) => return Err(opened(&xlsx)),
            },
        },
    }
    Ok(out)
}

fn unreadable(sheet: &str, e: &dyn std::fmt::Display) -> String {
    format!("sheet {sheet:?} cannot be read: {e}")
}

/// One sheet from its cells, in the order the file holds them (row by row).
fn stream_cells(
    out: &mut Extracted,
    name: &str,
    max_text: u64,
    mut next: impl FnMut() -> Result<Option<((u32, u32), Data)>, String>,
) -> Result<(), String> {
    let mut sheet = SheetOut::new(out, name, max_text);
    let mut row: Vec<String> = Vec::new();
    let mut at = None;
    while let Some(((r, c), value)) = next()? {
        if at != Some(r) {
            sheet.row(std::mem::take(&mut row))?;
            at = Some(r);
        }
        let c = c as usize;
        if c >= MAX_COLUMNS {
            return Err(format!(
                "sheet {name:?} has a cell in column {}, beyond the last column (XFD)",
                c + 1
            ));
        }
        let text = cell_text(&value);
        if text.is_empty() {
            continue;
        }
        if row.len() <= c {
            row.resize(c + 1, String::new());
        }
        row[c] = text;
    }
    sheet.row(row)?;
    sheet.finish();
    Ok(())
}

/// Every sheet of a workbook, in order, each read whole and written before the next is read.
fn read_ranges<RS, R>(mut book: R, out: &mut Extracted, max_text: u64) -> Result<(), String>
where
    RS: std::io::Read + std::io::Seek,
    R: Reader<RS>,
    R::Error: std::fmt::Display,
{
    for name in book.sheet_names() {
        let range: Range<Data> = book
            .worksheet_range(&name)
            .map_err(|e| unreadable(&name, &e))?;
        let mut sheet = SheetOut::new(out, &name, max_text);
        for r in range.rows() {
            sheet.row(r.iter().map(cell_text).collect())?;
        }
        sheet.finish();
    }
    Ok(())
}

/// Writes one sheet's rows as blocks as they come: the sheet's name as the heading (once it
/// has a row with text), each row a block that names its columns.
struct SheetOut<'a> {
    out: &'a mut Extracted,
    heading: Vec<String>,
    labeller: Labeller,
    text: u64,
    max_text: u64,
}

impl<'a> SheetOut<'a> {
    fn new(out: &'a mut Extracted, name: &str, max_text: u64) -> Self {
        let text = out.text_bytes() as u64;
        SheetOut {
            out,
            heading: vec![name.to_owned()],
            labeller: Labeller::default(),
            text,
            max_text,
        }
    }

    fn row(&mut self, row: Vec<String>) -> Result<(), String> {
        if row.iter().all(|c| c.is_empty()) {
            return Ok(());
        }
        if matches!(self.labeller, Labeller::Start) {
            let name = self.heading[0].clone();
            self.push(&name);
        }
        for line in self.labeller.push(row) {
            self.push(&line);
        }
        if self.text > self.max_text {
            return Err(super::too_much_text(self.max_text));
        }
        Ok(())
    }

    fn push(&mut self, line: &str) {
        self.text += line.len() as u64;
        push_block(&mut self.out.blocks, line, None, &self.heading);
    }

    fn finish(mut self) {
        if let Some(line) = std::mem::take(&mut self.labeller).finish() {
            self.push(&line);
        }
    }
}

/// A cell as text: dates as ISO dates (and times when they have one), whole floats without a
/// fraction, errors as their code.
fn cell_text(d: &Data) -> String {
    match d {
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::DateTime(_) => match d.as_datetime() {
            Some(t) if t.time() == chrono::NaiveTime::MIN => t.date().to_string(),
            Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
            None => d.to_string(),
        },
        Data::Int(_)
        | Data::Float(_)
        | Data::String(_)
        | Data::Bool(_)
        | Data::DateTimeIso(_)
        | Data::DurationIso(_)
        | Data::Error(_)
        | Data::Empty => d.to_string().trim().to_owned(),
    }
}

/// CSV or TSV text. A CSV whose first line has more semicolons than commas (what spreadsheet
/// programs write in locales with a decimal comma) is read with semicolons.
pub(super) fn delimited(text: &str, tab: bool) -> Result<Extracted, String> {
    let delimiter = if tab {
        b'\t'
    } else {
        let first = text.lines().next().unwrap_or("");
        let count = |c: char| first.chars().filter(|&x| x == c).count();
        if count(';') > count(',') { b';' } else { b',' }
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("row {} cannot be read: {e}", i + 1))?;
        rows.push(record.iter().map(|c| c.trim().to_owned()).collect());
    }
    let mut out = Extracted::default();
    for line in labelled_rows(rows) {
        push_block(&mut out.blocks, &line, None, &[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// An XLSX workbook of `sheets` sheets, each with one inline-string cell.
    fn workbook_of(sheets: usize) -> Vec<u8> {
        let data = |i: usize| {
            format!(
                r#"<row r="1"><c r="A1" t="inlineStr"><is><t>cell of sheet {i}</t></is></c></row>"#
            )
        };
        xlsx(sheets, data)
    }

    /// An XLSX workbook of `sheets` sheets whose `sheetData` is `data(i)`.
    fn xlsx(sheets: usize, data: impl Fn(usize) -> String) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut put = |name: &str, body: String| {
            w.start_file(name, opts).unwrap();
            w.write_all(body.as_bytes()).unwrap();
        };
        let ns = r#"xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships""#;
        let rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
        put(
            "[Content_Types].xml",
            r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>"#.into(),
        );
        put(
            "_rels/.rels",
            format!(
                r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
            ),
        );
        let list: String = (1..=sheets)
            .map(|i| format!(r#"<sheet name="S{i}" sheetId="{i}" r:id="rId{i}"/>"#))
            .collect();
        put(
            "xl/workbook.xml",
            format!("<workbook {ns}><sheets>{list}</sheets></workbook>"),
        );
        let rels: String = (1..=sheets)
            .map(|i| format!(r#"<Relationship Id="rId{i}" Type="{rel}/worksheet" Target="worksheets/sheet{i}.xml"/>"#))
            .collect();
        put(
            "xl/_rels/workbook.xml.rels",
            format!(
                r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>"#
            ),
        );
        for i in 1..=sheets {
            put(
                &format!("xl/worksheets/sheet{i}.xml"),
                format!(
                    r#"<worksheet {ns}><sheetData>{}</sheetData></worksheet>"#,
                    data(i)
                ),
            );
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn ten_thousand_sheets_are_read_in_order() {
        let doc = workbook(Book::Xlsx, &workbook_of(10_000), u64::MAX).unwrap();
        assert_eq!(doc.blocks.len(), 20_000);
        let last = &doc.blocks[19_999];
        assert_eq!(last.text, "cell of sheet 10000");
        assert_eq!(last.heading, ["S10000"]);
    }

    #[test]
    fn a_sheet_is_its_cells_not_its_grid() {
        // Two cells, at A1 and XFD1048576: read whole, the grid would be 17 billion cells.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/broken");
        let doc = workbook(
            Book::Xlsx,
            &std::fs::read(dir.join("huge-range.xlsx")).unwrap(),
            u64::MAX,
        )
        .unwrap();
        let texts: Vec<&str> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Offices",
                "top left",
                "bottom right",
                "Per diem",
                "top left",
                "bottom right"
            ]
        );
        // A header row and a later row: labelled as any table is.
        let cells = |i: usize| {
            format!(
                r#"<row r="{i}"><c r="B{i}" t="inlineStr"><is><t>city {i}</t></is></c><c r="C{i}"><v>{i}</v></c></row>"#
            )
        };
        let head = r#"<row r="1"><c r="B1" t="inlineStr"><is><t>City</t></is></c><c r="C1" t="inlineStr"><is><t>Staff</t></is></c></row>"#;
        let body: String = (2..=4).map(cells).collect();
        let doc = workbook(Book::Xlsx, &xlsx(1, |_| format!("{head}{body}")), u64::MAX).unwrap();
        let texts: Vec<&str> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "S1",
                "City: city 2; Staff: 2",
                "City: city 3; Staff: 3",
                "City: city 4; Staff: 4"
            ]
        );
    }

    #[test]
    fn a_sheet_stops_at_the_text_limit_with_the_reason() {
        let rows = |_| {
            (1..=20_000)
                .map(|i| {
                    format!(
                        r#"<row r="{i}"><c r="A{i}"><v>{i}</v></c><c r="B{i}"><v>{}</v></c></row>"#,
                        i * 7
                    )
                })
                .collect::<String>()
        };
        let book = xlsx(3, rows);
        let all = workbook(Book::Xlsx, &book, u64::MAX).unwrap();
        assert!(all.text_bytes() > 300_000, "{}", all.text_bytes());
        let err = workbook(Book::Xlsx, &book, 100_000).unwrap_err();
        assert_eq!(err, super::super::too_much_text(100_000));
    }

    #[test]
    fn delimited_text_picks_its_separator() {
        let doc = delimited("City;Rate\nVienna;52,5\nMadrid;49\n", false).unwrap();
        let texts: Vec<_> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            ["City: Vienna; Rate: 52,5", "City: Madrid; Rate: 49"]
        );
        let doc = delimited("a,b\n\"x, y\",z\n", false).unwrap();
        assert_eq!(doc.blocks[0].text, "a: x, y; b: z");
    }
}
