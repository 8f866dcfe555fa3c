//! The decode loop with speculation: each step, prompt lookup or the draft model proposes
//! up to K tokens after the pending one; the target runs the pending token and the proposal
//! in one forward pass over K+1 positions and keeps the longest prefix it agrees with
//! (greedy) or what rejection sampling keeps (sampled), plus one token of its own. Rejected
//! positions are rolled back by moving the cache length: their KV is simply overwritten by
//! the next step. The text is what the target alone would produce (see `speculative.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::draft::DraftModel;
use super::sampler::{Rng, Sampler, argmax, distribution};
use super::session::MAX_VERIFY_ROWS;
use super::speculative::{AdaptiveLength, PromptLookup, accept_greedy, verify_sampled};
use super::{Emitter, Engine, EngineError, FinishReason, GenerateParams, StreamOptions};

/// What proposes tokens, and how many at most.
pub struct Speculation {
    pub draft: Option<DraftModel>,
    pub lookup: Option<PromptLookup>,
    /// Longest proposal per step (`--draft-max`), at most `MAX_VERIFY_ROWS - 1`.
    pub max_len: usize,
    /// Whether the proposal length follows the acceptance rate (else always `max_len`).
    pub adaptive: bool,
    /// Benchmarks only (greedy): replay a recorded run's (proposed, kept) steps instead of
    /// judging the proposals, so random weights of a real shape pay every real cost (draft
    /// steps, K+1-row verify passes, rollbacks) at the acceptance measured with real
    /// weights. The draft proposes every step (a step lookup proposed in the recording
    /// costs a draft run here); without a draft the proposal is free, as lookup's is. The
    /// text is then meaningless. Consumed from the front; plain decoding when empty.
    pub replay: Option<std::collections::VecDeque<(usize, usize)>>,
}

/// Which proposer a step used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Lookup,
    Draft,
}

/// Counts of one generation with speculation.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Target forward passes over a proposal (K+1 positions).
    pub verify_steps: usize,
    /// Target forward passes of one token (nothing was proposed).
    pub plain_steps: usize,
    pub proposed: usize,
    pub accepted: usize,
    pub lookup_steps: usize,
    pub lookup_proposed: usize,
    pub lookup_accepted: usize,
    pub draft_steps: usize,
    pub draft_proposed: usize,
    pub draft_accepted: usize,
    /// `histogram[a]`: verify steps that kept `a` proposed tokens.
    pub histogram: Vec<usize>,
    /// Every target step in order as (proposed, kept); (0, 0) for a plain step. What a
    /// replayed benchmark (`Speculation::replay`) takes.
    pub trace: Vec<(usize, usize)>,
    /// Time in the draft model and in the target's verify passes.
    pub draft_time: Duration,
    pub verify_time: Duration,
    /// Set when speculation was asked for but could not run, with the reason.
    pub off: Option<&'static str>,
}

impl SpecStats {
    fn record(&mut self, source: Source, proposed: usize, accepted: usize) {
        self.trace.push((proposed, accepted));
        self.verify_steps += 1;
        self.proposed += proposed;
        self.accepted += accepted;
        let (steps, p, a) = match source {
            Source::Lookup => (
                &mut self.lookup_steps,
                &mut self.lookup_proposed,
                &mut self.lookup_accepted,
            ),
            Source::Draft => (
                &mut self.draft_steps,
                &mut self.draft_proposed,
                &mut self.draft_accepted,
            ),
        };
        *steps += 1;
        *p += proposed;
        *a += accepted;
        if self.histogram.len() <= accepted {
            self.histogram.resize(accepted + 1, 0);
        }
        self.histogram[accepted] += 1;
    }

    /// Proposed tokens the target kept, per verify step.
    pub fn mean_accepted(&self) -> f64 {
        if self.verify_steps == 0 {
            0.0
        } else {
            self.accepted as f64 / self.verify_steps as f64
        }
    }

    /// Tokens a verify step produces: the kept proposals plus the target's own token.
    pub fn tokens_per_verify(&self) -> f64 {
        if self.verify_steps == 0 {
            0.0
        } else {
            1.0 + self.mean_accepted()
        }
    }

    /// Share of proposed tokens kept.
    pub fn acceptance_rate(&self) -> f64 {
        if self.proposed == 0 {
            0.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }

    /// Target forward passes of any kind.
    pub fn target_steps(&self) -> usize {
        self.verify_steps + self.plain_steps
    }

    /// The counts as JSON (`--stats-json`, the server's metrics).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "off": self.off,
            "verify_steps": self.verify_steps,
            "plain_steps": self.plain_steps,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "mean_accepted_per_verify": self.mean_accepted(),
            "tokens_per_verify": self.tokens_per_verify(),
            "acceptance_rate": self.acceptance_rate(),
            "accepted_histogram": self.histogram,
            "lookup": { "steps": self.lookup_steps, "proposed": self.lookup_proposed, "accepted": self.lookup_accepted },
            "draft": { "steps": self.draft_steps, "proposed": self.draft_proposed, "accepted": self.draft_accepted },
            "draft_seconds": self.draft_time.as_secs_f64(),
            "verify_seconds": self.verify_time.as_secs_f64(),
        })
    }

    /// One line for stderr.
    pub fn summary(&self) -> String {
        if let Some(why) = self.off {
            return format!("speculation off: {why}");
        }
        format!(
            "speculation: {} verify + {} plain steps | {:.2} of {:.2} proposed tokens kept per verify ({:.0}%) | {:.2} tokens per verify | kept histogram {:?}",
            self.verify_steps,
            self.plain_steps,
            self.mean_accepted(),
            if self.verify_steps == 0 {
                0.0
            } else {
                self.proposed as f64 / self.verify_steps as f64
            },
            100.0 * self.acceptance_rate(),
            self.tokens_per_verify(),
            self.histogram,
        )
    }
}

/// Mixed into the request's seed for the rejection tests' random stream.
const VERIFY_SEED: u64 = 0x243F_6A88_85A3_08D3;

impl Engine {
    /// Decode with `spec` after the prompt ran (its logits are in `self.logits`). Returns
    /// why generation ended.
    #[allow(clippy::too_many_arguments)] // the loop's state, passed in from generate_stream
    pub(super) fn decode_speculative(
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
        let mut token = sampler.sample(&mut self.logits);
        loop {
            if let Some(end) = emit.emit(token) {
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
            let mut want = if spec.adaptive {
                length.current()
            } else {
                max_len
            };
            let mut replayed = None;
            if let Some(replay) = spec.replay.as_mut() {
                let (p, a) = replay.pop_front().unwrap_or((0, 0));
                want = p.min(MAX_VERIFY_ROWS - 1);
                replayed = Some(a);
            }
            let k = want.min(ctx - pos - 1).min(remaining.saturating_sub(1));
            proposal.clear();
            q_rows.clear();
            let mut source = None;
            if k > 0 {
                // A replay forces the length: lookup (which may find fewer) stands aside.
                if let (Some(lookup), None) = (&spec.lookup, replayed) {
                    lookup.propose(&history, k, &mut proposal);
                    source = (!proposal.is_empty()).then_some(Source::Lookup);
                }
                if let (None, Some(draft)) = (source, spec.draft.as_mut()) {
                    let t = Instant::now();
                    draft.propose(
                        &history,
                        k,
                        (!greedy).then_some((sp, &mut rng)),
                        &mut proposal,
                        &mut q_rows,
                    )?;
                    stats.draft_time += t.elapsed();
                    source = (!proposal.is_empty()).then_some(Source::Draft);
                }
                if source.is_none() && replayed.is_some() {
                    // A replayed lookup step on text with nothing to look up: any tokens
                    // will do (lookup costs nothing; only the verify pass is measured).
                    proposal.resize(k, token);
                    source = Some(Source::Lookup);
                }
            }
            let Some(source) = source else {
                // Nothing proposed: a plain step.
                stats.plain_steps += 1;
                stats.trace.push((0, 0));
                let mut next = None;
                if greedy {
                    next = self.session.forward_argmax(token, pos)?;
                }
                if next.is_none() {
                    self.session.forward(&[token], pos, &mut self.logits)?;
                }
                self.cached.push(token);
                token = match next {
                    Some(t) => t,
                    None => sampler.sample(&mut self.logits),
                };
                continue;
            };
            // Verify: the pending token and the proposal in one pass.
            let n = 1 + proposal.len();
            inputs.clear();
            inputs.push(token);
            inputs.extend_from_slice(&proposal);
            let t = Instant::now();
            // Greedy needs only each row's argmax, which a GPU session picks on the device.
            argmaxes.clear();
            argmaxes.resize(n, 0);
            if !(greedy
                && self
                    .session
                    .forward_rows_argmax(&inputs, pos, &mut argmaxes)?)
            {
                rows.resize(n * vocab, 0.0);
                self.session.forward_rows(&inputs, pos, &mut rows)?;
                if greedy {
                    argmaxes.clear();
                    argmaxes.extend(rows.chunks_exact(vocab).map(argmax));
                }
            }
            stats.verify_time += t.elapsed();
            self.cached.push(token);
            let (accepted, next) = if greedy {
                let a = replayed.map_or_else(
                    || accept_greedy(&proposal, &argmaxes),
                    |a| a.min(proposal.len()),
                );
                (a, argmaxes[a])
            } else {
                p_rows.resize_with(n, Vec::new);
                for (row, p) in rows.chunks_exact(vocab).zip(p_rows.iter_mut()) {
                    distribution(sp, row, p);
                }
                let p: Vec<&[(u32, f32)]> = p_rows.iter().map(Vec::as_slice).collect();
                let q: Vec<Option<&[(u32, f32)]>> = match source {
                    Source::Draft => q_rows.iter().map(|r| Some(r.as_slice())).collect(),
                    Source::Lookup => vec![None; proposal.len()],
                };
                let v = verify_sampled(&proposal, &p, &q, &mut rng);
                (v.accepted, v.next)
            };
            stats.record(source, proposal.len(), accepted);
            length.update(proposal.len(), accepted);
            for &t in &proposal[..accepted] {
                if let Some(end) = emit.emit(t) {
                    return Ok(end);
                }
                history.push(t);
                self.cached.push(t);
            }
            token = next;
        }
    }
}
