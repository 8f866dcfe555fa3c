//! The proposer of `bench --replay-acceptance`, and only of it: it forces a recorded run's
//! (proposed, kept) steps on whatever weights the bench runs, so random weights of a real
//! shape pay every real cost (draft steps, K+1-row verify passes, rollbacks) at the
//! acceptance measured with real weights. The text is then meaningless; the production
//! decode loop knows nothing of this beyond the [`Proposer`] trait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tachyon::backend::BackendError;
use tachyon::engine::sampler::{Rng, SamplingParams};
use tachyon::engine::spec::{Proposer, Source};

/// The steps still to replay, shared with the bench that refills them per prompt.
pub type Steps = Arc<Mutex<VecDeque<(usize, usize)>>>;

pub struct ReplayProposer {
    /// Proposes the tokens (a draft model pays its real cost); without a draft, prompt
    /// lookup, which costs nothing, as in the recording.
    inner: Box<dyn Proposer>,
    steps: Steps,
    /// What the current step keeps.
    kept: usize,
}

impl ReplayProposer {
    pub fn new(inner: Box<dyn Proposer>, steps: Steps) -> ReplayProposer {
        ReplayProposer {
            inner,
            steps,
            kept: 0,
        }
    }
}

impl Proposer for ReplayProposer {
    /// The recorded length (0, a plain step, once the record runs out).
    fn length(&mut self, _want: usize) -> usize {
        let (proposed, kept) = self
            .steps
            .lock()
            .map(|mut s| s.pop_front())
            .ok()
            .flatten()
            .unwrap_or((0, 0));
        self.kept = kept;
        proposed
    }

    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        sampling: Option<(&SamplingParams, &mut Rng)>,
        out: &mut Vec<u32>,
        q: &mut Vec<Vec<(u32, f32)>>,
    ) -> Result<Option<Source>, BackendError> {
        let source = self.inner.propose(history, k, sampling, out, q)?;
        if out.len() >= k {
            return Ok(source);
        }
        // Fewer tokens than recorded (nothing to look up): any tokens will do, only the
        // verify pass over k rows is measured.
        let pending = history.last().copied().unwrap_or(0);
        out.resize(k, pending);
        Ok(source.or(Some(Source::Lookup)))
    }

    fn keep(&mut self, proposed: usize, _agreed: usize) -> usize {
        self.kept.min(proposed)
    }
}
