//! Spreadsheets (XLSX, XLSM, XLSB, XLS, ODS through calamine) and delimited text (CSV, TSV
//! through the csv crate): each sheet is a heading, each row a block that names its columns
//! (`Header: value; ...`), so a question about one cell finds its row.

use std::io::Cursor;

use calamine::{Data, DataType, Ods, Range, Reader, Xls, Xlsb, Xlsx};

use super::package::labelled_rows;
use super::{Extracted, push_block};

/// The workbook formats.
pub(super) enum Book {
    /// XLSX, XLSM or XLSB.
    Xlsx,
    Xls,
    Ods,
}

pub(super) fn workbook(kind: Book, bytes: &[u8]) -> Result<Extracted, String> {
    let data = Cursor::new(bytes);
    let opened = |e: &dyn std::fmt::Display| format!("cannot open the workbook: {e}");
    let mut out = Extracted::default();
    match kind {
        Book::Xls => read_all(Xls::new(data).map_err(|e| opened(&e))?, &mut out)?,
        Book::Ods => read_all(Ods::new(data).map_err(|e| opened(&e))?, &mut out)?,
        Book::Xlsx => match Xlsx::new(data.clone()) {
            Ok(x) => read_all(x, &mut out)?,
            // The binary variant (XLSB) holds xl/workbook.bin instead.
            Err(xlsx) => match Xlsb::new(data) {
                Ok(x) => read_all(x, &mut out)?,
                Err(_) => return Err(opened(&xlsx)),
            },
        },
    }
    Ok(out)
}

/// Every sheet of a workbook, in order, as blocks. Each sheet is read and written before the
/// next is read, so memory holds one sheet at a time.
fn read_all<RS, R>(mut book: R, out: &mut Extracted) -> Result<(), String>
where
    RS: std::io::Read + std::io::Seek,
    R: Reader<RS>,
    R::Error: std::fmt::Display,
{
    for name in book.sheet_names() {
        let range: Range<Data> = book
            .worksheet_range(&name)
            .map_err(|e| format!("sheet {name:?} cannot be read: {e}"))?;
        let rows = range
            .rows()
            .map(|r| r.iter().map(cell_text).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        drop(range);
        sheet_blocks(out, &name, rows);
    }
    Ok(())
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

/// One sheet: its name as the heading, its rows as blocks.
fn sheet_blocks(out: &mut Extracted, name: &str, rows: Vec<Vec<String>>) {
    let heading = vec![name.to_owned()];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .filter(|r| r.iter().any(|c| !c.is_empty()))
        .collect();
    if rows.is_empty() {
        return;
    }
    push_block(&mut out.blocks, name, None, &heading);
    for line in labelled_rows(rows) {
        push_block(&mut out.blocks, &line, None, &heading);
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
                    r#"<worksheet {ns}><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>cell of sheet {i}</t></is></c></row></sheetData></worksheet>"#
                ),
            );
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn ten_thousand_sheets_are_read_in_order() {
        let doc = workbook(Book::Xlsx, &workbook_of(10_000)).unwrap();
        assert_eq!(doc.blocks.len(), 20_000);
        let last = &doc.blocks[19_999];
        assert_eq!(last.text, "cell of sheet 10000");
        assert_eq!(last.heading, ["S10000"]);
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
