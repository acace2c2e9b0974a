//! The generator's tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata (or a
//! `tokenizer.json`), and incremental detokenisation.
