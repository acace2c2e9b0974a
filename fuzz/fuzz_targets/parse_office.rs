//! The Office, OpenDocument and e-mail parsers (DOCX, PPTX, XLSX, XLS, ODT, ODP, ODS, CSV, EML,
//! MBOX): the kind is what sniffing says (the seeds are real files), DOCX when it says something
//! else.
#![no_main]

use hearth_ingest::DocKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kind = match hearth_ingest::sniff(data, "upload") {
        Ok(
            k @ (DocKind::Docx
            | DocKind::Pptx
            | DocKind::Xlsx
            | DocKind::Xls
            | DocKind::Odt
            | DocKind::Odp
            | DocKind::Ods
            | DocKind::Eml
            | DocKind::Mbox),
        ) => k,
        _ if data.first() == Some(&b'C') => DocKind::Csv,
        _ => DocKind::Docx,
    };
    hearth_ingest::fuzz::parse_bytes(kind, data);
});
