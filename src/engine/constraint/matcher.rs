//! One request's constraint state: the allowed tokens of the next step, and the tokens the
//! output has taken so far (committed, and rolled back when speculation rejects them).

use llguidance::Matcher;
use llguidance::api::StopReason;

use super::ConstraintError;

/// A compiled constraint following one output. Cloning gives an independent copy in the
/// same state (the grammar itself is shared).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// Logits rows: the mask has `vocab.div_ceil(32)` words.
    vocab: usize,
    /// Lazy constraints: free output until this token, constrained after it.
    trigger: Option<u32>,
    active: bool,
    stop_ids: Vec<u32>,
    /// Lazy constraints: the count of committed tokens when the trigger switched it on
    /// (the matcher holds the tokens after it), so a rollback past it turns it off again.
    active_from: Option<usize>,
    /// Tokens committed so far, free and matched.
    committed: usize,
    mask: Vec<u32>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("vocab", &self.vocab)
            .field("trigger", &self.trigger)
            .field("active", &self.active)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Constraint {
    pub(super) fn new(
        matcher: Matcher,
        vocab: usize,
        trigger: Option<u32>,
        stop_ids: Vec<u32>,
    ) -> Constraint {
        Constraint {
            matcher,
            vocab,
            active: trigger.is_none(),
            trigger,
            stop_ids,
            active_from: None,
            committed: 0,
            mask: vec![0; vocab.div_ceil(32)],
        }
    }

    /// Logits rows the mask covers.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Whether the next step is constrained (always, except a lazy constraint before its
    /// trigger).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The allowed tokens of the next step as a bitmask (bit `i % 32` of word `i / 32` is
    /// token `i`), or `None` when the step is free (a lazy constraint not yet triggered).
    /// Stop tokens are allowed exactly when the output may end here. A mask with no token
    /// allowed is an error, so a caller never samples from nothing.
    pub fn compute_mask(&mut self) -> Result<Option<&[u32]>, ConstraintError> {
        if !self.active {
            return Ok(None);
        }
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::NoAllowedToken(e.to_string()))?;
        let words = vob.as_slice();
        let n = self.mask.len().min(words.len());
        self.mask[..n].copy_from_slice(&words[..n]);
        self.mask[n..].fill(0);
        // Rows past the vocabulary (if the words run over) stay off.
        let tail = self.vocab % 32;
        if tail != 0
            && let Some(last) = self.mask.last_mut()
        {
            *last &= (1u32 << tail) - 1;
        }
        // The trie marks one id as end-of-sequence; any stop token ends alike.
        if self.stop_ids.iter().any(|&t| vob.is_allowed(t)) {
            for &t in &self.stop_ids {
                self.mask[t as usize / 32] |= 1 << (t % 32);
            }
        }
        if self.mask.iter().all(|&w| w == 0) {
            let why = self
                .matcher
                .get_error()
                .unwrap_or_else(|| "the grammar has no continuation".into());
            return Err(ConstraintError::NoAllowedToken(why));
        }
        Ok(Some(&self.mask))
    }

    /// Whether the next step allows stop tokens and nothing else (a grammar that matches
    /// only the empty output, checked at compile time).
    pub(super) fn allows_only_stop(&mut self) -> Result<bool, ConstraintError> {
        let stops = self.stop_ids.clone();
        let Some(mask) = self.compute_mask()? else {
            return Ok(false);
        };
        Ok(mask.iter().enumerate().all(|(w, &bits)| {
            let stop_bits = stops
                .iter()
                .filter(|&&t| t as usize / 32 == w)
                .fold(0u32, |acc, &t| acc | 1 << (t % 32));
            bits & !stop_bits == 0
        }))
    }

    /// Whether the output may end here (a stop token would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        !self.active || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the output is complete: the grammar allows no token but a stop token now, so
    /// generation ends here without running a step only to sample that stop token.
    pub fn is_complete(&self) -> bool {
        self.active
            && matches!(
                self.matcher.stop_reason(),
                StopReason::NoExtension | StopReason::NoExtensionBias
            )
    }

    /// Takes the sampled `token` into the state. Stop tokens end the output and are not
    /// committed. A token the mask did not allow is refused.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if self.stop_ids.contains(&token) {
            return Ok(());
        }
        if !self.active {
            self.committed += 1;
            if Some(token) == self.trigger {
                self.active = true;
                self.active_from = Some(self.committed);
            }
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Refused {
                token,
                reason: e.to_string(),
            })?;
        self.committed += 1;
        Ok(())
    }

    /// How many of `tokens` (a speculative proposal) the constraint accepts in a row from
    /// the current state, without changing it. A stop token ends the count (the output
    /// ends there). Lazy constraints accept free text up to and including the trigger,
    /// and check nothing past it (the proposal is cut there, to be sampled under the mask).
    pub fn validate(&mut self, tokens: &[u32]) -> usize {
        if !self.active {
            return match tokens.iter().position(|&t| Some(t) == self.trigger) {
                Some(i) => i + 1,
                None => tokens.len(),
            };
        }
        let end = tokens
            .iter()
            .position(|t| self.stop_ids.contains(t))
            .unwrap_or(tokens.len());
        self.matcher.validate_tokens(&tokens[..end]).unwrap_or(0)
    }

    /// Undoes the last `n` commits (tokens a speculative step proposed and the verifier
    /// rejected). Rolling back the trigger of a lazy constraint makes it free again.
    pub fn rollback(&mut self, n: usize) -> Result<(), ConstraintError> {
        let n = n.min(self.committed);
        let target = self.committed - n;
        let start = self.active_from.unwrap_or(0);
        let from_matcher = self.committed.saturating_sub(target.max(start));
        if self.active && from_matcher > 0 {
            self.matcher
                .rollback(from_matcher)
                .map_err(|e| ConstraintError::Refused {
                    token: 0,
                    reason: format!("rollback: {e}"),
                })?;
        }
        if self.active_from.is_some_and(|at| target < at) {
            self.active = false;
            self.active_from = None;
        }
        self.committed = target;
        Ok(())
    }
}
