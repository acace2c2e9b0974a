//! Ingestion configuration.

use serde::Deserialize;

use crate::error::{IngestError, Result};

/// How documents are accepted, extracted and chunked.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted document, in bytes. Default: 256 MiB.
    pub max_document_bytes: u64,
    /// Maximum tokens per chunk of a new collection, counted with the embedding model's
    /// tokenizer and including its special tokens, and shortened to what the model reads so
    /// that the embedder never truncates a chunk (MiniLM's collections get 256, EmbeddingGemma's
    /// and multilingual-e5-small's 384). A collection keeps the chunking it was made with.
    /// Default: 384.
    pub chunk_tokens: u32,
    /// Tokens repeated from the end of one chunk at the start of the next, at `chunk_tokens`
    /// (a chunk shortened for its model gets a proportional share: 32 of 256). Default: 48.
    pub chunk_overlap: u32,
    /// Documents processed at once (extraction processes and chunking threads).
    /// Default: 0, meaning the number of CPU cores.
    pub workers: usize,
    /// Wall-clock limit for extracting one document, in seconds. Default: 120.
    pub extract_timeout_secs: u64,
    /// Address-space limit of each extraction process, in MiB. Default: 2048.
    pub extract_memory_mib: u64,
    /// Largest text one document may yield, in bytes; more means a decompression bomb or a
    /// generated file. Default: 64 MiB.
    pub max_text_bytes: u64,
    /// Tesseract languages OCR reads scans and images in, for collections that name none
    /// (`eng`, `deu`, `fra`, ...: one Debian package tesseract-ocr-LANG each). Default: `eng`.
    pub ocr_languages: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 256 * 1024 * 1024,
            chunk_tokens: 384,
            chunk_overlap: 48,
            workers: 0,
            extract_timeout_secs: 120,
            extract_memory_mib: 2048,
            max_text_bytes: 64 * 1024 * 1024,
            ocr_languages: vec!["eng".to_owned()],
        }
    }
}

impl IngestConfig {
    /// Checks the settings; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(IngestError::InvalidInput(m));
        if self.max_document_bytes == 0 {
            return bad("ingest.max_document_bytes must be greater than 0".into());
        }
        if !(16..=8192).contains(&self.chunk_tokens) {
            return bad(format!(
                "ingest.chunk_tokens must be between 16 and 8192, got {}",
                self.chunk_tokens
            ));
        }
        if self.chunk_overlap * 2 > self.chunk_tokens {
            return bad(format!(
                "ingest.chunk_overlap ({}) must be at most half of ingest.chunk_tokens ({})",
                self.chunk_overlap, self.chunk_tokens
            ));
        }
        if self.extract_timeout_secs == 0 {
            return bad("ingest.extract_timeout_secs must be greater than 0".into());
        }
        if self.extract_memory_mib < 64 {
            return bad(format!(
                "ingest.extract_memory_mib must be at least 64, got {}",
                self.extract_memory_mib
            ));
        }
        if self.max_text_bytes == 0 {
            return bad("ingest.max_text_bytes must be greater than 0".into());
        }
        if self.ocr_languages.is_empty() {
            return bad(
                "ingest.ocr_languages must name at least one language (e.g. [\"eng\"])".into(),
            );
        }
        check_language_names(&self.ocr_languages, "ingest.ocr_languages")?;
        Ok(())
    }

    /// The effective number of workers (`workers`, or the core count when 0).
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, usize::from)
        }
    }
}

/// Checks that OCR language names are Tesseract names (`eng`, `chi_sim`): letters, digits and
/// underscores, at most 8 of them.
fn check_language_names(languages: &[String], key: &str) -> Result<()> {
    if languages.len() > 8 {
        return Err(IngestError::InvalidInput(format!(
            "{key} names {} languages; at most 8 are allowed",
            languages.len()
        )));
    }
    for l in languages {
        let ok = !l.is_empty()
            && l.len() <= 16
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(IngestError::InvalidInput(format!(
                "{key}: {l:?} is not a Tesseract language name (like eng, deu, fra, chi_sim)"
            )));
        }
    }
    Ok(())
}

/// Checks OCR language names, and that Tesseract and each language's data are installed on
/// this node; the error says which Debian package to install.
pub(crate) fn check_ocr_languages(languages: &[String], key: &str) -> Result<()> {
    check_language_names(languages, key)?;
    let installed = crate::parse::installed_ocr_languages().ok_or_else(|| {
        IngestError::InvalidInput(format!(
            "{key}: OCR is not available on this node (install Debian's tesseract-ocr)"
        ))
    })?;
    let missing: Vec<&String> = languages
        .iter()
        .filter(|l| !installed.contains(l))
        .collect();
    if let Some(first) = missing.first() {
        return Err(IngestError::InvalidInput(format!(
            "{key}: OCR language {first} is not installed on this node (installed: {}; Debian package tesseract-ocr-{})",
            installed.join(", "),
            first.replace('_', "-")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ocr_language_names_are_tesseract_names_and_few() {
        let names = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_language_names(&names(&["eng", "deu", "chi_sim"]), "k").is_ok());
        for bad in [
            "../eng",
            "eng+deu",
            "",
            "abcdefghijklmnopq",
            "eng deu",
            "dé",
        ] {
            let err = check_language_names(&names(&[bad]), "k")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not a Tesseract language name"),
                "{bad}: {err}"
            );
        }
        let nine = names(&["eng"; 9]);
        let err = check_language_names(&nine, "k").unwrap_err().to_string();
        assert!(err.contains("at most 8"), "{err}");
    }
}
