//! Speculative decoding: a proposer guesses the next few tokens, the target checks them all
//! in one forward pass over K+1 positions, and the text stays exactly the target's.
//!
//! The path of a step: `decode` (the loop: ask the [`Proposer`], verify, keep, roll back)
//! -> a proposer: `lookup` (prompt lookup, free) and/or `draft` (a small model decoding)
//! -> the target's verify pass (`Session::step` over K+1 rows) -> `rejection` (what is
//! kept: the greedy prefix, or rejection sampling) -> `length` (the next proposal's
//! length). `options` holds the options every command shares and the draft's vocabulary
//! check, `stats` what a generation counted.

pub mod decode;
pub mod draft;
pub mod length;
pub mod lookup;
pub mod options;
pub mod rejection;
pub mod stats;

pub use draft::{DraftModel, VocabMismatch};
pub use lookup::PromptLookup;
pub use options::{MAX_DRAFT, SpeculationError, SpeculationOptions};
pub use stats::SpecStats;

use crate::backend::BackendError;
use crate::engine::sampler::{Rng, SamplingParams};

/// Which proposer a step used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Lookup,
    Draft,
}

/// What proposes tokens for the decode loop. Production decoding uses [`Proposers`]; a
/// benchmark may wrap one to force recorded step lengths and acceptance (the defaults of
/// `length` and `keep` change nothing).
pub trait Proposer: Send {
    /// Up to `k` tokens continuing `history` into `out` (cleared first), and which proposer
    /// made them (`None`: nothing proposed, the loop takes a plain step). Sampled
    /// (`sampling` is set): a draft pushes, per proposed token, the distribution it drew it
    /// from into `q` for the rejection test; a proposer that pushes nothing is a point
    /// mass on its tokens.
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        sampling: Option<(&SamplingParams, &mut Rng)>,
        out: &mut Vec<u32>,
        q: &mut Vec<Vec<(u32, f32)>>,
    ) -> Result<Option<Source>, BackendError>;

    /// The proposal length for this step, given the one the loop wants.
    fn length(&mut self, want: usize) -> usize {
        want
    }

    /// Greedy: how many of `proposed` tokens to keep, given that the target agreed with the
    /// first `agreed`.
    fn keep(&mut self, proposed: usize, agreed: usize) -> usize {
        let _ = proposed;
        agreed
    }
}

/// Prompt lookup and/or a draft model: lookup goes first (it costs nothing), the draft
/// proposes when lookup finds nothing.
pub struct Proposers {
    pub lookup: Option<PromptLookup>,
    pub draft: Option<DraftModel>,
}

impl Proposer for Proposers {
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        sampling: Option<(&SamplingParams, &mut Rng)>,
        out: &mut Vec<u32>,
        q: &mut Vec<Vec<(u32, f32)>>,
    ) -> Result<Option<Source>, BackendError> {
        out.clear();
        q.clear();
        if let Some(lookup) = &self.lookup {
            lookup.propose(history, k, out);
            if !out.is_empty() {
                return Ok(Some(Source::Lookup));
            }
        }
        if let Some(draft) = self.draft.as_mut() {
            draft.propose(history, k, sampling, out, q)?;
            if !out.is_empty() {
                return Ok(Some(Source::Draft));
            }
        }
        Ok(None)
    }
}

/// What proposes tokens, and how many at most.
pub struct Speculation {
    pub proposer: Box<dyn Proposer>,
    /// Longest proposal per step (`--draft-max`), at most `MAX_VERIFY_ROWS - 1`.
    pub max_len: usize,
    /// Whether the proposal length follows the acceptance rate (else always `max_len`).
    pub adaptive: bool,
}

impl Speculation {
    /// Speculation by prompt lookup and/or a draft model.
    pub fn new(
        draft: Option<DraftModel>,
        lookup: Option<PromptLookup>,
        max_len: usize,
        adaptive: bool,
    ) -> Speculation {
        Speculation {
            proposer: Box::new(Proposers { lookup, draft }),
            max_len,
            adaptive,
        }
    }
}
