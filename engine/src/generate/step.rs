//! What one forward step is made of, as the model, the attention and the LoRA side path all
//! see it: the sequences whose token rows the step carries, in order.
//!
//! A step's rows are its sequences' tokens laid end to end (a prefill chunk, or one decode
//! token, each); every per-row buffer of the forward pass follows that order.

use rayon::prelude::*;

use super::lora::{Adapter, Module};

/// One sequence's part of a step.
pub(crate) struct StepSeq<'a> {
    /// Its tokens in this step (a prefill chunk, or one decode token).
    pub(crate) tokens: &'a [u32],
    /// Position of the first of them.
    pub(crate) start_pos: usize,
    /// Its KV blocks, covering at least `start_pos + tokens.len()` positions.
    pub(crate) blocks: &'a [u32],
    /// Whether the step should return logits for its last token.
    pub(crate) logits: bool,
    /// Its LoRA adapter, if any.
    pub(crate) adapter: Option<&'a Adapter>,
}

/// Adds every row's adapter delta for `module` of `layer` to `out` (`rows × out`), whose
/// input was `x` (`rows × in`); rows are those of `seqs`, in order. Rows of sequences without
/// an adapter, or whose adapter leaves this projection alone, are untouched.
pub(crate) fn add_adapter_deltas(
    module: Module,
    layer: usize,
    x: &[f32],
    out: &mut [f32],
    seqs: &[StepSeq<'_>],
) {
    let Some(first) = seqs
        .iter()
        .find_map(|s| s.adapter.and_then(|a| a.pair(layer, module)))
    else {
        return;
    };
    let (in_dim, out_dim) = first.dims();
    out.par_chunks_mut(out_dim)
        .zip(x.par_chunks(in_dim))
        .enumerate()
        .with_min_len(4)
        .for_each(|(r, (o, x))| {
            // The sequence this row belongs to.
            let mut end = 0;
            let Some(seq) = seqs.iter().find(|s| {
                end += s.tokens.len();
                r < end
            }) else {
                return;
            };
            if let Some(pair) = seq.adapter.and_then(|a| a.pair(layer, module)) {
                pair.add_to_row(x, o);
            }
        });
}
