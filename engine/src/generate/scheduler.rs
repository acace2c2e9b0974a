//! The scheduler: one loop on its own thread that owns the model and the KV cache and runs
//! iteration-level continuous batching.
//!
//! Every step it (1) takes new requests and drops those whose caller went away, (2) plans a
//! batch under a token budget: one token for each running decode, then prefill chunks for
//! sequences still reading their prompt, then newly admitted requests, (3) runs one forward
//! pass over all those rows, and (4) samples, detokenises and streams a token for every
//! sequence whose prompt is complete. Requests therefore join and leave between steps, and a
//! long prompt is fed in chunks so that running decodes keep producing a token every step.
//!
//! Memory: KV blocks are allocated as positions are reached. A request is admitted only when
//! the blocks its prompt still needs are free; when a running decode needs a block and none is
//! free, the most recently admitted sequence is preempted: its blocks are released and it goes
//! back to the front of the queue, to be recomputed (cheaply, through the prefix cache, when
//! its blocks were not reused meanwhile). Nothing waits on memory that cannot come.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;

use crate::error::EngineError;

use super::events::{
    Completion, FinishReason, GenerationEvent, Timings, TokenLogprob, TokenLogprobs, Usage,
};
use super::kv::{BlockKey, BlockPool, CacheSalt, KvPrecision, KvStore, block_key};
use super::lora::Adapter;
use super::model::{Model, Workspace};
use super::sampling::{Sampler, SamplingParams, log_partition_and_top};
use super::step::StepSeq;
use super::stop::StopMatcher;
use super::tokenizer::{GenTokenizer, IncrementalDecoder};

/// A request as the scheduler receives it: already tokenised and validated.
pub(crate) struct Request {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: SamplingParams,
    /// Its LoRA adapter, loaded.
    pub(crate) adapter: Option<Arc<Adapter>>,
    /// Whose cached prefixes it may share (see [`CacheSalt`]).
    pub(crate) cache_scope: u64,
    pub(crate) events: UnboundedSender<GenerationEvent>,
    pub(crate) submitted: Instant,
}

/// Knobs of the loop.
#[derive(Clone, Debug)]
pub(crate) struct SchedulerConfig {
    pub(crate) block_size: usize,
    pub(crate) blocks: usize,
    pub(crate) precision: KvPrecision,
    pub(crate) max_batch_tokens: usize,
    pub(crate) max_running: usize,
}

/// Counters the handle reads without talking to the loop.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) waiting: AtomicUsize,
    pub(crate) running: AtomicUsize,
    pub(crate) blocks_used: AtomicUsize,
    pub(crate) steps: AtomicUsize,
    pub(crate) preemptions: AtomicUsize,
}

struct Seq {
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Leading tokens whose keys and values are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    /// Keys of the full blocks, in order (as far as they have been computed).
    keys: Vec<BlockKey>,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    params: SamplingParams,
    adapter: Option<Arc<Adapter>>,
    cache_scope: u64,
    events: UnboundedSender<GenerationEvent>,
    submitted: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    cached_tokens: usize,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to feed through the model.
    fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// What its cached KV blocks are keyed by besides the tokens: keys and values computed
    /// through an adapter are that adapter's, and a scope's blocks are that scope's.
    fn cache_salt(&self) -> CacheSalt {
        CacheSalt {
            adapter: self.adapter.as_ref().map_or(0, |a| a.id),
            scope: self.cache_scope,
        }
    }
}

/// The step plan's lists, reused every step.
#[derive(Default)]
struct StepBuffers {
    /// (index in `running`, tokens this step).
    plan: Vec<(usize, usize)>,
    /// `running` indices, decodes first.
    order: Vec<usize>,
    /// Sequences that finished this step.
    finished: Vec<usize>,
}

pub(crate) struct Scheduler {
    model: Model,
    bufs: StepBuffers,
    /// The forward pass's buffers, reused every step.
    ws: Workspace,
    tokenizer: Arc<GenTokenizer>,
    kv: KvStore,
    pool: BlockPool,
    config: SchedulerConfig,
    counters: Arc<Counters>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// The most positions a sequence may reach.
    max_positions: usize,
}

impl Scheduler {
    pub(crate) fn new(
        model: Model,
        tokenizer: Arc<GenTokenizer>,
        config: SchedulerConfig,
        counters: Arc<Counters>,
        max_positions: usize,
    ) -> Self {
        let spec = &model.spec;
        let kv = KvStore::new(
            spec.layers,
            config.blocks,
            config.block_size,
            spec.kv_heads,
            spec.head_dim,
            config.precision,
        );
        let pool = BlockPool::new(config.blocks);
        Self {
            model,
            bufs: StepBuffers::default(),
            ws: Workspace::default(),
            tokenizer,
            kv,
            pool,
            config,
            counters,
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_positions,
        }
    }

    /// Runs until every handle is gone and no work is left.
    pub(crate) fn run(mut self, inbox: Receiver<Request>) {
        let mut open = true;
        loop {
            // (1) Intake: block only when there is nothing to do.
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match inbox.recv_timeout(Duration::from_secs(1)) {
                    Ok(r) => self.accept(r),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(r) => self.accept(r),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            self.step();
            self.publish_counters();
        }
    }

    fn accept(&mut self, r: Request) {
        let vocab = self.model.spec.vocab;
        let sampler = Sampler::new(&r.params, &r.prompt, vocab);
        let stop = StopMatcher::new(&r.params.stop);
        self.waiting.push_back(Seq {
            prompt_len: r.prompt.len(),
            tokens: r.prompt,
            computed: 0,
            blocks: Vec::new(),
            keys: Vec::new(),
            sampler,
            decoder: IncrementalDecoder::new(),
            stop,
            params: r.params,
            adapter: r.adapter,
            cache_scope: r.cache_scope,
            events: r.events,
            submitted: r.submitted,
            first_scheduled: None,
            first_token: None,
            cached_tokens: 0,
        });
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.counters.waiting.fetch_sub(gone, Ordering::Relaxed);
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let seq = self.running.remove(i);
                self.release(seq);
            } else {
                i += 1;
            }
        }
    }

    fn release(&mut self, seq: Seq) {
        for &b in &seq.blocks {
            self.pool.release(b);
        }
    }

    /// Puts `seq` back at the front of the queue without any KV blocks: whatever it had
    /// computed is recomputed when it is admitted again (through the prefix cache where its
    /// blocks survive).
    fn requeue(&mut self, mut seq: Seq) {
        for b in seq.blocks.drain(..) {
            self.pool.release(b);
        }
        seq.keys.clear();
        seq.computed = 0;
        self.waiting.push_front(seq);
    }

    fn publish_counters(&self) {
        self.counters
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.counters
            .blocks_used
            .store(self.pool.in_use(), Ordering::Relaxed);
    }

    /// Makes sure `seq` has blocks for positions `..upto`; false when the pool ran dry (the
    /// blocks it did get are kept).
    fn grow(pool: &mut BlockPool, seq: &mut Seq, upto: usize, bs: usize) -> bool {
        while seq.blocks.len() * bs < upto {
            match pool.allocate() {
                Some(b) => seq.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Takes the most recently admitted running sequence (other than `keep`) off the batch:
    /// its blocks are released and it waits at the front of the queue to be recomputed.
    fn preempt(&mut self, keep: usize) -> bool {
        let Some(victim) = (0..self.running.len()).rev().find(|&i| i != keep) else {
            return false;
        };
        let seq = self.running.remove(victim);
        self.requeue(seq);
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        self.counters.preemptions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Shares cached blocks for the longest block-aligned prefix of the sequence's tokens that
    /// is in the prefix cache; the last token is always left to compute (its logits are
    /// needed).
    fn reuse_prefix(&mut self, seq: &mut Seq) {
        let bs = self.config.block_size;
        let reusable = (seq.tokens.len() - 1) / bs;
        let mut prev = None;
        let salt = seq.cache_salt();
        for i in 0..reusable {
            let key = block_key(prev, &seq.tokens[i * bs..(i + 1) * bs], salt);
            match self.pool.share(key) {
                Some(b) => {
                    seq.blocks.push(b);
                    seq.keys.push(key);
                    prev = Some(key);
                }
                None => break,
            }
        }
        seq.computed = seq.blocks.len() * bs;
        seq.cached_tokens = seq.cached_tokens.max(seq.computed.min(seq.prompt_len));
    }

    /// Plans and runs one step, with the plan's buffers kept from step to step.
    fn step(&mut self) {
        let mut bufs = std::mem::take(&mut self.bufs);
        self.plan_and_run(&mut bufs);
        self.bufs = bufs;
    }

    fn plan_and_run(&mut self, bufs: &mut StepBuffers) {
        let bs = self.config.block_size;
        let mut budget = self.config.max_batch_tokens;
        let StepBuffers {
            plan,
            order,
            finished,
        } = bufs;
        plan.clear();
        finished.clear();

        // (2a) Decodes first (one token each), then prefill chunks, in admission order.
        order.clear();
        order.extend(0..self.running.len());
        order.sort_by_key(|&i| usize::from(self.running[i].pending() > 1));
        let mut i = 0;
        while i < order.len() && budget > 0 {
            let idx = order[i];
            if idx >= self.running.len() {
                i += 1;
                continue;
            }
            let n = self.running[idx].pending().min(budget);
            let upto = self.running[idx].computed + n;
            let seq = &mut self.running[idx];
            if !Self::grow(&mut self.pool, seq, upto, bs) {
                // Out of blocks: make room by preempting the newest other sequence, then retry.
                if self.preempt(idx) {
                    // Indices after the removed one shifted; replan from scratch.
                    plan.clear();
                    budget = self.config.max_batch_tokens;
                    order.clear();
                    order.extend(0..self.running.len());
                    order.sort_by_key(|&i| usize::from(self.running[i].pending() > 1));
                    i = 0;
                    continue;
                }
                // Alone and still out of blocks: it cannot fit in the cache at all.
                let seq = self.running.remove(idx);
                let _ =
                    seq.events
                        .unbounded_send(GenerationEvent::Failed(EngineError::Overloaded(
                            "the KV cache cannot hold this sequence; raise engine.kv_cache_mb"
                                .into(),
                        )));
                self.release(seq);
                plan.clear();
                return;
            }
            plan.push((idx, n));
            budget -= n;
            i += 1;
        }

        // (2b) Admit waiting requests while there is budget, room and a free slot.
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            self.reuse_prefix(&mut seq);
            let needed = seq.tokens.len().div_ceil(bs) - seq.blocks.len();
            // One spare block so that admitted decodes are not immediately preempted.
            if self.pool.free() < needed + 1 && !self.running.is_empty() {
                self.requeue(seq);
                break;
            }
            let n = seq.pending().min(budget);
            let upto = seq.computed + n;
            if !Self::grow(&mut self.pool, &mut seq, upto, bs) {
                self.requeue(seq);
                break;
            }
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            seq.first_scheduled.get_or_insert_with(Instant::now);
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        if plan.is_empty() {
            return;
        }

        // (3) One forward pass over every planned row.
        let steps: Vec<StepSeq<'_>> = plan
            .iter()
            .map(|&(idx, n)| {
                let s = &self.running[idx];
                StepSeq {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start_pos: s.computed,
                    blocks: &s.blocks,
                    logits: s.computed + n == s.tokens.len(),
                    adapter: s.adapter.as_deref(),
                }
            })
            .collect();
        let (model, kv, ws, rows) = (&self.model, &mut self.kv, &mut self.ws, &steps);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            // Moved out of the capture: the closure is FnOnce, so the logits it returns may
            // borrow the workspace.
            let ws = ws;
            model.forward(rows, kv, ws)
        }));
        drop(steps);
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match result {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.fail_planned(plan, &e.to_string()),
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned());
                return self.fail_planned(plan, &format!("panic in the forward pass: {msg}"));
            }
        };

        // (4) Advance, sample, stream; finished sequences leave.
        let vocab = self.model.spec.vocab;
        let mut row = 0;
        for &(idx, n) in plan.iter() {
            let seq = &mut self.running[idx];
            seq.computed += n;
            // Publish the blocks this step completed, for prefix sharing.
            while seq.keys.len() < seq.computed / bs {
                let i = seq.keys.len();
                let key = block_key(
                    seq.keys.last().copied(),
                    &seq.tokens[i * bs..(i + 1) * bs],
                    seq.cache_salt(),
                );
                self.pool.publish(seq.blocks[i], key);
                seq.keys.push(key);
            }
            if seq.computed < seq.tokens.len() {
                continue;
            }
            let l = &mut logits[row * vocab..(row + 1) * vocab];
            row += 1;
            if emit_next(seq, l, &self.tokenizer, self.max_positions) {
                finished.push(idx);
            }
        }
        finished.sort_unstable();
        for &idx in finished.iter().rev() {
            let seq = self.running.remove(idx);
            self.release(seq);
        }
    }

    fn fail_planned(&mut self, plan: &[(usize, usize)], msg: &str) {
        tracing::error!(error = msg, "generator step failed");
        let mut idxs: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
        idxs.sort_unstable();
        for idx in idxs.into_iter().rev() {
            let seq = self.running.remove(idx);
            let _ = seq
                .events
                .unbounded_send(GenerationEvent::Failed(EngineError::Internal(
                    msg.to_owned(),
                )));
            self.release(seq);
        }
    }
}

/// Samples the next token of `seq` and streams it; true when the sequence is finished (its
/// final event sent).
fn emit_next(seq: &mut Seq, logits: &mut [f32], tok: &GenTokenizer, max_positions: usize) -> bool {
    let now = Instant::now();
    seq.first_token.get_or_insert(now);
    // The row as the model gave it: sampling rewrites it in place.
    let raw = seq.params.logprobs.map(|n| {
        let vocab = tok.vocab_size().min(logits.len());
        (n, logits[..vocab].to_vec())
    });
    let t = seq.sampler.sample(logits);
    if let Some((n, raw)) = raw {
        let (log_z, top) = log_partition_and_top(&raw, n);
        let entry = |token: u32| TokenLogprob {
            token,
            text: tok.token_text(token),
            logprob: raw
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |l| (l - log_z).min(0.0)),
        };
        let _ = seq
            .events
            .unbounded_send(GenerationEvent::Logprobs(TokenLogprobs {
                chosen: entry(t),
                top: top.iter().map(|&(id, _)| entry(id)).collect(),
            }));
    }
    seq.sampler.accept(t);
    let is_end = tok.end_tokens().contains(&t) || seq.params.stop_token_ids.contains(&t);
    if is_end {
        seq.tokens.push(t);
        return finish(seq, FinishReason::Stop, true);
    }
    seq.tokens.push(t);
    match seq.decoder.push(tok, t) {
        Ok(Some(text)) => {
            let out = seq.stop.push(&text);
            if !out.emit.is_empty() {
                let _ = seq
                    .events
                    .unbounded_send(GenerationEvent::Text(out.emit.to_owned()));
            }
            if out.stopped {
                return finish(seq, FinishReason::Stop, false);
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = seq.events.unbounded_send(GenerationEvent::Failed(e));
            return true;
        }
    }
    if seq.generated() >= seq.params.max_tokens || seq.tokens.len() >= max_positions {
        return finish(seq, FinishReason::Length, true);
    }
    false
}

fn finish(seq: &mut Seq, reason: FinishReason, flush: bool) -> bool {
    if flush {
        // Generation ended for another reason than a stop string: what the stop matcher held
        // back is text after all, and so is an unfinished character (as U+FFFD).
        let mut text = String::new();
        if let Some(tail) = seq.decoder.finish() {
            let out = seq.stop.push(&tail);
            text.push_str(out.emit);
            if out.stopped {
                send_text(seq, text);
                return report(seq, FinishReason::Stop);
            }
        }
        text.push_str(&seq.stop.flush());
        send_text(seq, text);
    }
    report(seq, reason)
}

fn send_text(seq: &Seq, text: String) {
    if !text.is_empty() {
        let _ = seq.events.unbounded_send(GenerationEvent::Text(text));
    }
}

fn report(seq: &mut Seq, reason: FinishReason) -> bool {
    let done = Instant::now();
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let first_scheduled = seq.first_scheduled.unwrap_or(done);
    let first_token = seq.first_token.unwrap_or(done);
    // The token counted at `first_token` is the first; the rest are decode tokens.
    let completion = seq.generated();
    let decode_ms = ms(first_token, done);
    let timings = Timings {
        queue_ms: ms(seq.submitted, first_scheduled),
        prefill_ms: ms(first_scheduled, first_token),
        ttft_ms: ms(seq.submitted, first_token),
        decode_ms,
        decode_tokens_per_s: if completion > 1 && decode_ms > 0.0 {
            (completion - 1) as f64 / (decode_ms / 1e3)
        } else {
            0.0
        },
        total_ms: ms(seq.submitted, done),
    };
    let usage = Usage {
        prompt_tokens: seq.prompt_len,
        completion_tokens: completion,
        cached_prompt_tokens: seq.cached_tokens,
    };
    let _ = seq.events.unbounded_send(GenerationEvent::Done(Completion {
        finish_reason: reason,
        usage,
        timings,
    }));
    true
}
