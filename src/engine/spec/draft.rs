//! The draft model of speculative decoding: a small model sharing the target's vocabulary
//! that proposes the next few tokens by decoding them itself. Its KV cache follows the
//! text: before each proposal it runs only the tokens it has not seen (usually the one the
//! target just picked), and proposals the target kept stay in its cache.

use super::rejection::draw;
use crate::backend::BackendError;
use crate::engine::sampler::{NO_TOKEN, Rng, SamplingParams, argmax, distribution};
use crate::engine::session::{Pick, Rows, Session, StepInput};

pub struct DraftModel {
    session: Box<dyn Session>,
    /// The tokens whose KV the draft's cache holds, in order.
    cached: Vec<u32>,
    logits: Vec<f32>,
}

/// A draft whose vocabulary is not the target's.
#[derive(Debug, thiserror::Error)]
#[error(
    "the draft model's vocabulary ({draft} tokens) differs from the target's ({target}); a draft must share the target's tokenizer"
)]
pub struct VocabMismatch {
    pub draft: usize,
    pub target: usize,
}

impl DraftModel {
    /// A draft for a target with `target_vocab` logits per position.
    pub fn new(
        session: Box<dyn Session>,
        target_vocab: usize,
    ) -> Result<DraftModel, VocabMismatch> {
        let vocab = session.vocab_size();
        if vocab != target_vocab {
            return Err(VocabMismatch {
                draft: vocab,
                target: target_vocab,
            });
        }
        Ok(DraftModel {
            session,
            cached: Vec::new(),
            logits: vec![0.0; vocab],
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    /// Propose up to `k` tokens continuing `history` (fewer when the draft's context ends).
    /// Greedy (`sampling` is `None`): the draft's argmax at each step. Sampled: each token
    /// is drawn from the draft's filtered distribution, which is pushed to `q` (one row per
    /// proposed token) for the rejection test.
    pub fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        sampling: Option<(&SamplingParams, &mut Rng)>,
        out: &mut Vec<u32>,
        q: &mut Vec<Vec<(u32, f32)>>,
    ) -> Result<(), BackendError> {
        out.clear();
        q.clear();
        let room = self.session.ctx().saturating_sub(history.len());
        let k = k.min(room);
        if k == 0 || history.is_empty() {
            return Ok(());
        }
        // Catch up on the tokens the cache lacks; at least the last one runs, for logits.
        let common = self
            .cached
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count();
        let start = common.min(history.len() - 1);
        self.cached.truncate(start);
        let greedy = sampling.is_none();
        // Catch up in chunks; the last chunk's pick (greedy) is the first proposal.
        let batch = self.session.max_batch();
        let mut pos = start;
        let mut next = None;
        while pos < history.len() {
            let end = (pos + batch).min(history.len());
            next = self.run(&history[pos..end], pos, greedy && end == history.len())?;
            pos = end;
        }
        self.cached.extend_from_slice(&history[start..]);
        let Some((params, rng)) = sampling else {
            return self.propose_greedy(next, k, out);
        };
        // Sampled: each token drawn on the host from the last step's logits.
        loop {
            let mut row = Vec::new();
            distribution(params, &self.logits, &mut row);
            let token = draw(&row, rng).unwrap_or_else(|| argmax(&self.logits));
            q.push(row);
            // All-NaN draft logits give no token: the draft has nothing more to propose.
            if token == NO_TOKEN {
                q.pop();
                return Ok(());
            }
            out.push(token);
            if out.len() == k {
                return Ok(());
            }
            // The last proposal need not run: the next call catches up if it was kept.
            let at = self.cached.len();
            self.run(&[token], at, false)?;
            self.cached.push(token);
        }
    }

    /// The greedy proposals after `first` (the draft's pick after the history; none, or
    /// no token when its logits were all NaN, proposes nothing): up to `k - 1` decode
    /// steps as one run
    /// ([`Session::decode_run`]), which a GPU session queues each before reading the last
    /// one's pick, so the draft's steps follow each other on the device without waiting for
    /// the host. The last proposal is not run (the next call catches up if it was kept);
    /// a step the run made past a stop is not counted as cached.
    fn propose_greedy(
        &mut self,
        first: Option<u32>,
        k: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), BackendError> {
        let Some(first) = first.filter(|&t| t != NO_TOKEN) else {
            return Ok(());
        };
        out.push(first);
        if k == 1 {
            return Ok(());
        }
        let at = self.cached.len();
        let greedy = SamplingParams::greedy();
        let mut picked = |t: u32| {
            // All-NaN draft logits give no token: nothing more to propose.
            if t == NO_TOKEN {
                return false;
            }
            out.push(t);
            out.len() < k
        };
        self.session
            .decode_run(first, at, &greedy, k - 1, &mut picked)?;
        // Each proposal but the last ran, at the positions after the history.
        let ran = out.len() - 1;
        self.cached.extend_from_slice(&out[..ran]);
        Ok(())
    }

    /// Runs `tokens` at `pos`: greedy, the session's argmax of the last row; sampled, the
    /// logits into `self.logits` for the host's draw.
    fn run(
        &mut self,
        tokens: &[u32],
        pos: usize,
        argmax: bool,
    ) -> Result<Option<u32>, BackendError> {
        let input = StepInput { tokens, pos };
        if argmax {
            return Ok(self.session.step(input, Pick::Argmax, Rows::Last)?.token());
        }
        self.session
            .step(input, Pick::Logits(&mut self.logits), Rows::Last)?;
        Ok(None)
    }
}
