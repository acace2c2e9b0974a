//! Normalisation and token-aware chunking of arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hearth_ingest::fuzz::chunk_text(text);
    }
});
