//! Speculative decoding: a proposer guesses the next few tokens, the target checks them all
//! in one forward pass over K+1 positions, and the text stays exactly the target's.
//!
//! The path of a step: `decode` (the loop: ask the [`Proposer`], verify, keep, roll back)
//! -> a proposer: `lookup` (prompt lookup, free), `suffix_cache` (earlier requests'
//! streams, free) and/or `draft` (a small model decoding)
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
pub mod suffix_cache;

pub use draft::{DraftModel, VocabMismatch};
pub use lookup::PromptLookup;
pub use options::{MAX_DRAFT, SpeculationError, SpeculationOptions};
pub use stats::SpecStats;
pub use suffix_cache::SuffixCache;

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

    /// A request ended; `stream` is its prompt and what was generated (a proposer that
    /// learns from earlier requests indexes it).
    fn record(&mut self, stream: &[u32]) {
        let _ = stream;
    }
}

/// Prompt lookup, earlier requests (the suffix cache) and/or a draft model, the free ones
/// first: a long (4+ token) match in earlier requests, then prompt lookup, then a short
/// match in earlier requests, then the draft when nothing matched.
pub struct Proposers {
    pub lookup: Option<PromptLookup>,
    pub suffix: Option<SuffixCache>,
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
        if let Some(s) = &self.suffix
            && s.propose(history, k, 4, out) > 0
        {
            return Ok(Some(Source::Lookup));
        }
        if let Some(lookup) = &self.lookup {
            lookup.propose(history, k, out);
            if !out.is_empty() {
                return Ok(Some(Source::Lookup));
            }
        }
        if let Some(s) = &self.suffix
            && s.propose(history, k, 1, out) > 0
        {
            return Ok(Some(Source::Lookup));
        }
        if let Some(draft) = self.draft.as_mut() {
            draft.propose(history, k, sampling, out, q)?;
            if !out.is_empty() {
                return Ok(Some(Source::Draft));
            }
        }
        Ok(None)
    }

    fn record(&mut self, stream: &[u32]) {
        if let Some(s) = self.suffix.as_mut() {
            s.record(stream);
        }
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
            proposer: Box::new(Proposers {
                lookup,
                suffix: None,
                draft,
            }),
            max_len,
            adaptive,
        }
    }

    /// Speculation by any of the proposers (see [`Proposers`]).
    pub fn with_proposers(proposers: Proposers, max_len: usize, adaptive: bool) -> Speculation {
        Speculation {
            proposer: Box::new(proposers),
            max_len,
            adaptive,
        }
    }
}
