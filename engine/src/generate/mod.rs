//! Text generation: a GGUF decoder served by one scheduler loop with continuous batching, a
//! paged KV cache, chunked prefill and prefix caching.
//!
//! [`Generator`] is a cheap-to-clone handle. [`Generator::submit`] tokenises and validates a
//! request on the caller's thread, then hands it to the scheduler thread over a channel and
//! returns a [`Generation`]: a stream of [`GenerationEvent`]s (text pieces as they are
//! decoded, then one final `Done` with usage and timings, or `Failed`). Submitting never
//! blocks: a full queue is [`EngineError::Overloaded`]. Dropping a `Generation` cancels the
//! request; its KV blocks are freed before the next step.
//!
//! LoRA adapters ([`Generator::register_adapter`]) are applied as a side path on the shared
//! base weights, so one batch mixes sequences with different adapters or none.

mod adapters;
mod arch;
mod attention;
mod events;
mod gguf;
mod kv;
mod lora;
mod model;
mod qmatmul;
mod sampling;
mod scheduler;
mod step;
mod stop;
mod template;
mod tokenizer;

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use futures::channel::mpsc::{UnboundedReceiver, unbounded};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};

pub use events::{
    Completion, FinishReason, GenerationEvent, Timings, TokenLogprob, TokenLogprobs, Usage,
};
pub use lora::AdapterInfo;
pub use sampling::{MAX_LOGPROBS, SamplingParams};
pub use template::ChatMessage;

use adapters::Registry;
use gguf::GgufFile;
use kv::KvStore;
use model::Model;
pub(crate) use model::{GemmaEncoder, is_gemma_dir};
use scheduler::{Counters, Request, Scheduler, SchedulerConfig};
use template::ChatTemplate;
use tokenizer::GenTokenizer;

/// What the caller wants generated from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template (the assistant's turn is
    /// opened for the answer).
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenised as is (BOS added when the model wants one).
    Text(String),
}

/// What is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorInfo {
    /// The model's name from its metadata.
    pub name: String,
    /// Its architecture (`llama`, `gemma3`, ...).
    pub architecture: String,
    /// The most tokens (prompt + output) one request may span.
    pub context: usize,
    /// Token ids the model knows.
    pub vocab: usize,
    /// KV cache blocks and their size in tokens.
    pub kv_blocks: usize,
    /// Tokens per KV block.
    pub kv_block_size: usize,
    /// Where the weights live: `cpu` or `cuda:N`.
    pub device: String,
}

/// A snapshot of the scheduler's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneratorStats {
    /// Requests accepted but not yet running.
    pub waiting: usize,
    /// Sequences in the running batch.
    pub running: usize,
    /// KV blocks holding live sequences' rows.
    pub kv_blocks_used: usize,
    /// Forward passes run so far.
    pub steps: usize,
    /// Sequences preempted for lack of KV blocks so far.
    pub preemptions: usize,
}

struct Shared {
    inbox: Mutex<std::sync::mpsc::Sender<Request>>,
    /// Requests whose adapter must be loaded again first, with its name.
    loader: Mutex<std::sync::mpsc::Sender<(String, Request)>>,
    adapters: Arc<Registry>,
    tokenizer: Arc<GenTokenizer>,
    /// Control-token spellings matched in raw text, longest first.
    markers: Vec<String>,
    template: ChatTemplate,
    counters: Arc<Counters>,
    info: GeneratorInfo,
    queue_limit: usize,
}

/// Handle to the generator; clones share one model and one scheduler thread, which stops
/// when the last handle is dropped and its work is done.
#[derive(Clone)]
pub struct Generator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("info", &self.shared.info)
            .finish()
    }
}

impl Generator {
    /// Loads `engine.generator_model` (a GGUF file) with its tokenizer and chat template and
    /// starts the scheduler thread.
    pub fn load(config: &EngineConfig) -> Result<Self> {
        config.validate()?;
        let path = config.generator_model_path();
        let started = Instant::now();
        let device = crate::device::select(&config.device)?;
        let file = GgufFile::open(&path)?;
        let model = Model::load(&file, &device)?;
        let spec = model.spec.clone();
        let tokenizer = match &config.generator_tokenizer {
            Some(p) => GenTokenizer::from_tokenizer_json(&config.resolve_path(p), file.content())?,
            None => GenTokenizer::from_gguf(file.content(), file.path())?,
        };
        if tokenizer.vocab_size() > spec.vocab {
            return Err(EngineError::Corrupt {
                path: path.clone(),
                detail: format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    spec.vocab
                ),
            });
        }
        let template = match &config.chat_template {
            Some(p) => {
                let p = config.resolve_path(p);
                let src = std::fs::read_to_string(&p).map_err(|e| EngineError::Io {
                    path: p.clone(),
                    source: e,
                })?;
                ChatTemplate::from_source(src, &tokenizer)?
            }
            None => ChatTemplate::from_gguf(file.content(), &spec.architecture, &tokenizer)?,
        };
        drop(file);

        let bs = config.kv_block_size;
        let block_bytes = KvStore::block_bytes(
            spec.layers,
            bs,
            spec.kv_heads,
            spec.head_dim,
            config.kv_precision,
        );
        let blocks = (config.kv_cache_mb << 20) / block_bytes;
        let context = match config.max_context {
            0 => spec.context,
            n => n.min(spec.context),
        };
        if blocks < 2 {
            return Err(EngineError::InvalidInput(format!(
                "engine.kv_cache_mb = {} holds {blocks} blocks of {bs} tokens: too small for {}",
                config.kv_cache_mb, spec.name
            )));
        }
        // A request must fit in the cache alone.
        let context = context.min(blocks * bs);
        let info = GeneratorInfo {
            name: spec.name.clone(),
            architecture: spec.architecture.clone(),
            context,
            vocab: spec.vocab,
            kv_blocks: blocks,
            kv_block_size: bs,
            device: crate::device::label(&device),
        };
        let tokenizer = Arc::new(tokenizer);
        let counters = Arc::new(Counters::default());
        let adapters = Arc::new(Registry::new(spec.clone(), config.lora_resident));
        let sched = Scheduler::new(
            model,
            tokenizer.clone(),
            SchedulerConfig {
                block_size: bs,
                blocks,
                precision: config.kv_precision,
                max_batch_tokens: config.max_batch_tokens,
                max_running: config.max_running,
            },
            counters.clone(),
            context,
        );
        let threads = config.resolved_gen_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hearth-gen-{i}"))
            .build()
            .map_err(|e| EngineError::Internal(format!("generator thread pool: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hearth-scheduler".into())
            .spawn(move || pool.install(|| sched.run(rx)))
            .map_err(|e| EngineError::Internal(format!("generator thread: {e}")))?;
        let loader = spawn_loader(adapters.clone(), tx.clone(), counters.clone())?;
        tracing::info!(
            model = %info.name,
            architecture = %info.architecture,
            device = %crate::device::label(&device),
            kv_blocks = blocks,
            context,
            threads,
            load_ms = started.elapsed().as_millis() as u64,
            "generator ready"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                inbox: Mutex::new(tx),
                loader: Mutex::new(loader),
                adapters,
                markers: tokenizer.control_markers(),
                tokenizer,
                template,
                counters,
                info,
                queue_limit: config.gen_queue,
            }),
        })
    }

    /// What is loaded.
    pub fn info(&self) -> &GeneratorInfo {
        &self.shared.info
    }

    /// The scheduler's current load.
    pub fn stats(&self) -> GeneratorStats {
        let c = &self.shared.counters;
        GeneratorStats {
            waiting: c.waiting.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            kv_blocks_used: c.blocks_used.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
            preemptions: c.preemptions.load(Ordering::Relaxed),
        }
    }

    /// The prompt text a conversation renders to.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.shared.template.render(messages, true)
    }

    /// `text` with every control-token marker of the vocabulary (`<|im_start|>`,
    /// `<end_of_turn>`, ...) broken by a word joiner (U+2060) after its first character, so
    /// that text from documents or users is tokenised as the characters it shows and can never
    /// open or close a turn of the chat template.
    pub fn escape_markers(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for m in &self.shared.markers {
            if out.contains(m.as_str()) {
                let split = m.chars().next().map_or(0, char::len_utf8);
                let broken = format!("{}\u{2060}{}", &m[..split], &m[split..]);
                out = out.replace(m.as_str(), &broken);
            }
        }
        out
    }

    /// Token ids of a prompt, as the model will see it.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let text = match prompt {
            Prompt::Chat(m) => self.render_chat(m)?,
            Prompt::Text(t) => t.clone(),
        };
        self.shared.tokenizer.encode(&text)
    }

    /// Starts generating with the base model. Fails at once, with nothing queued, on invalid
    /// parameters, a prompt that does not fit the context, or a full queue.
    pub fn submit(&self, prompt: &Prompt, params: SamplingParams) -> Result<Generation> {
        self.submit_with_adapter(prompt, params, None)
    }

    /// Starts generating, through the registered LoRA adapter `adapter` when one is named
    /// ([`EngineError::UnknownAdapter`] if there is none of that name). An adapter that was
    /// unloaded is loaded again on the loader thread before the request joins the batch.
    pub fn submit_with_adapter(
        &self,
        prompt: &Prompt,
        params: SamplingParams,
        adapter: Option<&str>,
    ) -> Result<Generation> {
        self.submit_scoped(prompt, params, adapter, 0)
    }

    /// [`Self::submit_with_adapter`] within a cache scope: requests of different scopes never
    /// share cached prompt prefixes, so neither `cached_tokens` nor the time to the first token
    /// tells one scope what another's prompts held. Give callers who must not learn of each
    /// other's prompts (API keys) different scopes; requests of one scope share as before.
    pub fn submit_scoped(
        &self,
        prompt: &Prompt,
        params: SamplingParams,
        adapter: Option<&str>,
        cache_scope: u64,
    ) -> Result<Generation> {
        let submitted = Instant::now();
        let info = &self.shared.info;
        params.validate(info.vocab)?;
        let loaded = match adapter {
            Some(name) => Some(self.shared.adapters.get(name)?),
            None => None,
        };
        let tokens = self.tokenize(prompt)?;
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("the prompt is empty".into()));
        }
        if tokens.len() + params.max_tokens > info.context {
            return Err(EngineError::InvalidInput(format!(
                "the prompt ({} tokens) plus max_tokens ({}) exceeds the context of {} tokens",
                tokens.len(),
                params.max_tokens,
                info.context
            )));
        }
        let counters = &self.shared.counters;
        if counters.waiting.fetch_add(1, Ordering::Relaxed) >= self.shared.queue_limit {
            counters.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded(format!(
                "{} generation requests are already waiting",
                self.shared.queue_limit
            )));
        }
        let (tx, rx) = unbounded();
        let mut request = Request {
            prompt: tokens,
            params,
            adapter: None,
            cache_scope,
            events: tx,
            submitted,
        };
        let poisoned = || EngineError::Internal("generator handle poisoned".into());
        let sent = match (adapter, loaded) {
            (Some(name), Some(None)) => self
                .shared
                .loader
                .lock()
                .map_err(|_| poisoned())?
                .send((name.to_owned(), request))
                .is_ok(),
            (_, loaded) => {
                request.adapter = loaded.flatten();
                self.shared
                    .inbox
                    .lock()
                    .map_err(|_| poisoned())?
                    .send(request)
                    .is_ok()
            }
        };
        if !sent {
            counters.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Internal(
                "the generator thread has stopped".into(),
            ));
        }
        Ok(Generation { events: rx })
    }

    /// Loads the PEFT LoRA adapter in `dir` (`adapter_config.json` and
    /// `adapter_model.safetensors`), checks it against the model and registers it as `name`,
    /// replacing an adapter of that name (requests already running keep the old one). The
    /// files must stay in `dir` while it is registered: an adapter unloaded to respect
    /// `engine.lora_resident` is read from there again. This reads files: call it from a
    /// blocking context, not from async code.
    pub fn register_adapter(&self, name: &str, dir: &Path) -> Result<AdapterInfo> {
        self.shared.adapters.register(name, dir)
    }

    /// Unregisters an adapter; requests already running with it finish with it. False when no
    /// adapter had that name.
    pub fn remove_adapter(&self, name: &str) -> bool {
        self.shared.adapters.remove(name)
    }

    /// The registered adapters, by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.shared.adapters.list()
    }
}

/// Starts the thread that loads unloaded adapters again and then passes their requests on to
/// the scheduler.
fn spawn_loader(
    adapters: Arc<Registry>,
    scheduler: std::sync::mpsc::Sender<Request>,
    counters: Arc<Counters>,
) -> Result<std::sync::mpsc::Sender<(String, Request)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(String, Request)>();
    std::thread::Builder::new()
        .name("hearth-lora-loader".into())
        .spawn(move || {
            for (name, mut request) in rx {
                if request.events.is_closed() {
                    counters.waiting.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                match adapters.reload(&name) {
                    Ok(a) => {
                        request.adapter = Some(a);
                        if let Err(lost) = scheduler.send(request) {
                            counters.waiting.fetch_sub(1, Ordering::Relaxed);
                            let _ = lost.0.events.unbounded_send(GenerationEvent::Failed(
                                EngineError::Internal("the generator thread has stopped".into()),
                            ));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(adapter = %name, error = %e, "adapter failed to load");
                        counters.waiting.fetch_sub(1, Ordering::Relaxed);
                        let _ = request.events.unbounded_send(GenerationEvent::Failed(e));
                    }
                }
            }
        })
        .map_err(|e| EngineError::Internal(format!("adapter loader thread: {e}")))?;
    Ok(tx)
}

/// A running request: a stream of [`GenerationEvent`]s. Dropping it cancels the request.
pub struct Generation {
    events: UnboundedReceiver<GenerationEvent>,
}

impl Stream for Generation {
    type Item = GenerationEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Generation {
    /// Waits for the whole answer on the current thread (for the CLI and tests; async callers
    /// poll the stream instead).
    pub fn wait(self) -> Result<(String, Completion)> {
        self.wait_with_logprobs()
            .map(|(text, completion, _)| (text, completion))
    }

    /// [`Self::wait`], with the [`TokenLogprobs`] of every generated token (empty unless the
    /// request asked for [`SamplingParams::logprobs`]).
    pub fn wait_with_logprobs(self) -> Result<(String, Completion, Vec<TokenLogprobs>)> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        for event in futures::executor::block_on_stream(self) {
            match event {
                GenerationEvent::Text(t) => text.push_str(&t),
                GenerationEvent::Logprobs(l) => logprobs.push(l),
                GenerationEvent::Done(c) => return Ok((text, c, logprobs)),
                GenerationEvent::Failed(e) => return Err(e),
            }
        }
        Err(EngineError::Internal(
            "the generator stopped before finishing the request".into(),
        ))
    }
}

#[cfg(test)]
mod lora_tests;
#[cfg(test)]
mod reference_tests;
