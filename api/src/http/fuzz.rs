//! Entry point for the API's JSON fuzz target (feature `fuzzing`; not part of the API): every
//! request body type, parsed as the handlers parse it, then checked as they check it.

use super::collections::CreateBody;
use super::error::parse_json;
use super::openai::{ChatBody, EmbedBody};
use super::qa::{AskBody, SearchBody};

/// The first byte picks the request type; the rest is the body.
pub fn request_json(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(b) = parse_json::<SearchBody>(body) {
                let _ = b.filter.into_filter();
            }
        }
        1 => {
            if let Ok(b) = parse_json::<AskBody>(body) {
                let _ = b.filter.into_filter();
                if let Some(sp) = b.sampling {
                    let _ = sp.validate(49_152);
                }
            }
        }
        2 => {
            if let Ok(b) = parse_json::<ChatBody>(body) {
                let _ = b.sampling();
            }
        }
        3 => {
            let _ = parse_json::<EmbedBody>(body);
        }
        4 => {
            let _ = parse_json::<CreateBody>(body);
        }
        _ => {
            let _ = parse_json::<hearth_ingest::Metadata>(body)
                .map(|m| hearth_ingest::validate_metadata(&m));
        }
    }
}
