//! The decode loop with speculation: each step, prompt lookup or the draft model proposes
//! up to K tokens after the pending one; the target runs the pending token and the proposal
//! in one forward pass over K+1 positions and keeps the longest prefix it agrees with
//! (greedy) or what rejection sampling keeps (sampled), plus one token of its own. Rejected
//! positions are rolled back by moving the cache length: their KV is simply overwritten by
//! the next step. The text is what the target alone would produce (see `rejection.rs`).
//!
//! Under a constraint (or `logit_bias`) the verify rows' logits come back to the host (one
//! mask per row, each in the matcher's state after the row before: the device picks take
//! one mask per step, so verify rows keep this host path; a greedy step with nothing
//! proposed picks under its mask in the session, as plain decoding does). The
//! proposal is first cut to the prefix the matcher accepts; then row i is masked in the
//! constraint's state after the pending token and `proposal[..i]` (the proposal is committed
//! as the rows are checked, and rolled back past what is kept), so every verified position
//! is picked under its own mask: greedy output is token for token the constrained plain
//! output, and sampled output follows the masked target distribution.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::length::AdaptiveLength;
use super::rejection::{accept_greedy, verify_sampled};
use super::{Source, SpecStats, Speculation};
use crate::engine::constraint::{Constraint, apply_logit_bias, apply_mask};
use crate::engine::sampler::{Rng, Sampler, argmax, distribution};
use crate::engine::session::{MAX_VERIFY_ROWS, MaskedPick, Pick, Rows, StepInput};
use crate::engine::{Emitter, Engine, EngineError, FinishReason, GenerateParams, StreamOptions};

/// Mixed into the request's seed for the rejection tests' random stream.
const VERIFY_SEED: u64 = 0x243F_6A88_85A3_08D3;

impl Engine {
    /// Decode with `spec` after the prompt ran (its logits are in `self.logits`). Returns
    /// why generation ended.
    #[allow(clippy::too_many_arguments)] // the loop's state, passed in from generate_stream
    pub(in crate::engine) fn decode_speculative(
        &mut self,
        spec: &mut Speculation,
        prompt: &[u32],
        params: &GenerateParams,
        opts: &StreamOptions<'_>,
        sampler: &mut Sampler,
        emit: &mut Emitter<'_, '_>,
        stats: &mut SpecStats,
    ) -> Result<FinishReason, EngineError> {
        let sp = &params.sampling;
        let greedy = sp.temperature == 0.0;
        let vocab = self.session.vocab_size();
        let ctx = self.ctx();
        let max_len = spec
            .max_len
            .clamp(1, MAX_VERIFY_ROWS - 1)
            .min(self.session.max_batch().saturating_sub(1));
        let mut length = AdaptiveLength::new(max_len);
        let mut rng = Rng::new(sp.seed ^ VERIFY_SEED);
        let mut history = prompt.to_vec();
        let (mut proposal, mut q_rows, mut inputs, mut rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut p_rows: Vec<Vec<(u32, f32)>> = Vec::new();
        let mut argmaxes = Vec::new();
        let mut constraint = opts.constraint.cloned();
        // A mask or a bias changes the logits before each pick: then every pick is made on
        // the host, from the logits rows.
        let host = constraint.is_some() || !opts.logit_bias.is_empty();
        let shape = |row: &mut [f32], c: &mut Option<Constraint>| -> Result<(), EngineError> {
            apply_logit_bias(row, opts.logit_bias);
            if let Some(c) = c.as_mut()
                && let Some(mask) = c.compute_mask()?
            {
                apply_mask(row, mask);
            }
            Ok(())
        };
        let commit = |c: &mut Option<Constraint>, t: u32| -> Result<(), EngineError> {
            match c.as_mut() {
                Some(c) => Ok(c.commit(t)?),
                None => Ok(()),
            }
        };
        shape(&mut self.logits, &mut constraint)?;
        let mut token = sampler.sample(&mut self.logits);
        loop {
            let end = emit.emit(token);
            if matches!(end, None | Some(FinishReason::Length)) {
                commit(&mut constraint, token)?;
                if constraint.as_ref().is_some_and(Constraint::is_complete) {
                    return Ok(FinishReason::Stop);
                }
            }
            if let Some(end) = end {
                return Ok(end);
            }
            history.push(token);
            let pos = self.cached.len();
            if pos + 1 > ctx {
                return Ok(FinishReason::Length);
            }
            if opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Ok(FinishReason::Cancelled);
            }
            // Room for the proposal: the context, and the tokens still wanted (the target
            // adds one of its own to what it keeps).
            let remaining = params.max_tokens - emit.generated();
            let want = spec.proposer.length(if spec.adaptive {
                length.current()
            } else {
                max_len
            });
            let k = want
                .min(MAX_VERIFY_ROWS - 1)
                .min(ctx - pos - 1)
                .min(remaining.saturating_sub(1));
            proposal.clear();
            q_rows.clear();
            let mut source = None;
            if k > 0 {
                let t = Instant::now();
                source = spec.proposer.propose(
                    &history,
                    k,
                    (!greedy).then_some((sp, &mut rng)),
                    &mut proposal,
                    &mut q_rows,
                )?;
                if source == Some(Source::Draft) {
                    stats.draft_time += t.elapsed();
                }
            }
            // Only the prefix the constraint accepts can be kept: verify no further.
            if let Some(c) = constraint.as_mut() {
                let valid = c.validate(&proposal);
                proposal.truncate(valid);
                q_rows.truncate(valid);
                if proposal.is_empty() {
                    source = None;
                }
            }
            let Some(source) = source else {
                // Nothing proposed: a plain step.
                stats.plain_steps += 1;
                stats.trace.push((0, 0));
                let input = StepInput {
                    tokens: &[token],
                    pos,
                };
                // Greedy picks in the session (on a GPU, on the device), under the
                // constraint's mask when there is one; a bias or a draw needs the logits.
                let next = if greedy && opts.logit_bias.is_empty() {
                    match constraint.as_mut() {
                        None => self.session.step(input, Pick::Argmax, Rows::Last)?.token(),
                        Some(c) => self.step_masked(input, c, MaskedPick::Argmax)?,
                    }
                } else {
                    self.session
                        .step(input, Pick::Logits(&mut self.logits), Rows::Last)?;
                    None
                };
                self.cached.push(token);
                token = match next {
                    Some(t) => t,
                    None => {
                        shape(&mut self.logits, &mut constraint)?;
                        sampler.sample(&mut self.logits)
                    }
                };
                continue;
            };
            // Verify: the pending token and the proposal in one pass.
            let n = 1 + proposal.len();
            inputs.clear();
            inputs.push(token);
            inputs.extend_from_slice(&proposal);
            let t = Instant::now();
            // Greedy needs only each row's argmax, which a GPU session picks on the device;
            // sampled verification, a mask or a bias needs every row's logits on the host.
            let input = StepInput {
                tokens: &inputs,
                pos,
            };
            argmaxes.clear();
            if greedy && !host {
                let picked = self.session.step(input, Pick::Argmax, Rows::All)?;
                argmaxes.extend_from_slice(picked.tokens());
            } else {
                rows.resize(n * vocab, 0.0);
                self.session
                    .step(input, Pick::Logits(&mut rows), Rows::All)?;
            }
            stats.verify_time += t.elapsed();
            self.cached.push(token);
            let (accepted, next) = if greedy && host {
                // Row i's pick in the state after proposal[..i], up to the first
                // disagreement; each agreed token is committed as it is checked.
                let mut pick_row = |i: usize, c: &mut Option<Constraint>| {
                    let row = &mut rows[i * vocab..(i + 1) * vocab];
                    shape(row, c).map(|()| argmax(row))
                };
                let mut agreed = 0;
                loop {
                    let t = pick_row(agreed, &mut constraint)?;
                    argmaxes.push(t);
                    if proposal.get(agreed) != Some(&t) {
                        break;
                    }
                    commit(&mut constraint, t)?;
                    agreed += 1;
                }
                // A proposer may keep other than what was agreed (a replayed benchmark):
                // the constraint follows what is kept.
                let a = spec
                    .proposer
                    .keep(proposal.len(), agreed)
                    .min(proposal.len());
                if let Some(c) = constraint.as_mut() {
                    c.rollback(agreed.saturating_sub(a))?;
                }
                for i in agreed + 1..=a {
                    commit(&mut constraint, proposal[i - 1])?;
                    argmaxes.push(pick_row(i, &mut constraint)?);
                }
                (a, argmaxes[a])
            } else if greedy {
                let agreed = accept_greedy(&proposal, &argmaxes);
                let a = spec
                    .proposer
                    .keep(proposal.len(), agreed)
                    .min(proposal.len());
                (a, argmaxes[a])
            } else {
                p_rows.resize_with(n, Vec::new);
                // Row i's distribution in the state after proposal[..i] (every proposed
                // token is valid: the proposal was cut to what the constraint accepts).
                for (i, (row, p)) in rows
                    .chunks_exact_mut(vocab)
                    .zip(p_rows.iter_mut())
                    .enumerate()
                {
                    if host {
                        if i > 0 {
                            commit(&mut constraint, proposal[i - 1])?;
                        }
                        shape(row, &mut constraint)?;
                    }
                    distribution(sp, row, p);
                }
                let p: Vec<&[(u32, f32)]> = p_rows.iter().map(Vec::as_slice).collect();
                let q: Vec<Option<&[(u32, f32)]>> = match source {
                    Source::Draft => q_rows.iter().map(|r| Some(r.as_slice())).collect(),
                    Source::Lookup => vec![None; proposal.len()],
                };
                let v = verify_sampled(&proposal, &p, &q, &mut rng);
                // Back to the state after what is kept.
                if let Some(c) = constraint.as_mut() {
                    c.rollback(proposal.len() - v.accepted)?;
                }
                (v.accepted, v.next)
            };
            stats.record(source, proposal.len(), accepted);
            length.update(proposal.len(), accepted);
            for (i, &t) in proposal[..accepted].iter().enumerate() {
                let end = emit.emit(t);
                // The constraint is in the state after the last kept token: it is complete
                // there or not at all (a complete grammar accepts no further proposal).
                if i + 1 == accepted
                    && matches!(end, None | Some(FinishReason::Length))
                    && constraint.as_ref().is_some_and(Constraint::is_complete)
                {
                    return Ok(FinishReason::Stop);
                }
                if let Some(end) = end {
                    return Ok(end);
                }
                history.push(t);
                self.cached.push(t);
            }
            token = next;
        }
    }
}
