//! The API's JSON request bodies (search, ask, chat, embeddings, collections, metadata).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hearth_api::http::fuzz::request_json(data);
});
