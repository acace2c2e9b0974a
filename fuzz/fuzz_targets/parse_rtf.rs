//! The RTF reader, then normalisation and chunking of what it extracts.
#![no_main]

use hearth_ingest::DocKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hearth_ingest::fuzz::parse_bytes(DocKind::Rtf, data);
});
