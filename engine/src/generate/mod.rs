//! Text generation: a GGUF decoder served by one scheduler loop with continuous batching, a
//! paged KV cache, chunked prefill, prefix caching and per-request LoRA adapters.

mod sampling;
mod stop;
mod template;
mod tokenizer;

pub use sampling::SamplingParams;
pub use template::ChatMessage;
