//! The speculative-decoding options every command shares, and the checks on a draft model
//! before anything is built from it.

use std::path::PathBuf;

use super::draft::{DraftModel, VocabMismatch};
use super::lookup::PromptLookup;
use super::suffix_cache::SuffixCache;
use super::{Proposers, Speculation};
use crate::engine::build::{Loaded, ModelSpec};
use crate::format::{ModelConfig, ModelError};
use crate::graph::Model;
use crate::tokenizer::Tokenizer;

/// Most tokens a step may propose (the verify pass scores them and the token before).
pub const MAX_DRAFT: usize = crate::engine::session::MAX_VERIFY_ROWS - 1;

#[derive(Clone, Debug)]
pub struct SpeculationOptions {
    /// A smaller model with the same tokenizer that proposes tokens for the target to
    /// verify in one pass (the output is unchanged).
    pub draft: Option<ModelSpec>,
    /// Most tokens proposed per step (1 to [`MAX_DRAFT`]).
    pub draft_max: usize,
    /// Propose the tokens that followed the last few tokens earlier in the text (prompt
    /// lookup; no draft needed, combines with one).
    pub lookup: bool,
    /// Always propose `draft_max` tokens instead of following the acceptance rate.
    pub draft_fixed: bool,
    /// Propose what followed the text's last tokens in earlier requests' prompts and
    /// outputs (an index of at most this many recent tokens; see `suffix_cache`).
    pub suffix_cache: Option<usize>,
}

impl Default for SpeculationOptions {
    fn default() -> Self {
        SpeculationOptions {
            draft: None,
            draft_max: 8,
            lookup: false,
            draft_fixed: false,
            suffix_cache: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpeculationError {
    #[error("--draft-max: {0} is outside 1 to {MAX_DRAFT}")]
    DraftMax(usize),
    #[error("loading the draft model {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(
        "the draft model {path} does not share the target's vocabulary ({why}); a draft must use the target's tokenizer"
    )]
    Vocabulary { path: String, why: String },
    #[error(transparent)]
    Engine(#[from] VocabMismatch),
}

impl SpeculationOptions {
    /// Whether any speculation was asked for.
    pub fn enabled(&self) -> bool {
        self.draft.is_some() || self.lookup || self.suffix_cache.is_some()
    }

    pub fn validate(&self) -> Result<(), SpeculationError> {
        if !(1..=MAX_DRAFT).contains(&self.draft_max) {
            return Err(SpeculationError::DraftMax(self.draft_max));
        }
        Ok(())
    }

    /// Loads the draft model file, refusing one whose vocabulary differs from `target`'s.
    pub fn load_draft(&self, target: &Model) -> Result<Option<Model>, SpeculationError> {
        let Some(ModelSpec::File(path)) = &self.draft else {
            return Ok(None);
        };
        let draft = Model::load(path).map_err(|source| SpeculationError::Load {
            path: path.clone(),
            source,
        })?;
        vocabulary_difference(
            &draft.config,
            Some(&draft.tokenizer),
            &target.config,
            Some(&target.tokenizer),
        )
        .map_or(Ok(Some(draft)), |why| {
            Err(SpeculationError::Vocabulary {
                path: path.display().to_string(),
                why,
            })
        })
    }

    /// The same check on a draft loaded by `build` (tokenizers compared when both have one,
    /// the logits' width always).
    pub(crate) fn check_vocabulary(
        &self,
        spec: &ModelSpec,
        draft: &ModelConfig,
        draft_tok: Option<&Tokenizer>,
        target: &Loaded,
    ) -> Result<(), SpeculationError> {
        match vocabulary_difference(draft, draft_tok, &target.config, target.tokenizer.as_ref()) {
            None => Ok(()),
            Some(why) => Err(SpeculationError::Vocabulary {
                path: match spec {
                    ModelSpec::File(p) => p.display().to_string(),
                    ModelSpec::Random(r) => format!("random:{}", r.shape),
                },
                why,
            }),
        }
    }

    /// The engine's speculation from these options and the draft; `None` when nothing was
    /// asked for.
    pub fn speculation(&self, draft: Option<DraftModel>) -> Option<Speculation> {
        if !self.enabled() && draft.is_none() {
            return None;
        }
        Some(Speculation::with_proposers(
            Proposers {
                lookup: self.lookup.then(PromptLookup::default),
                suffix: self.suffix_cache.map(SuffixCache::new),
                draft,
            },
            self.draft_max,
            !self.draft_fixed,
        ))
    }
}

/// Why a draft cannot propose for a target, if it cannot.
fn vocabulary_difference(
    draft: &ModelConfig,
    draft_tok: Option<&Tokenizer>,
    target: &ModelConfig,
    target_tok: Option<&Tokenizer>,
) -> Option<String> {
    let tokens = match (draft_tok, target_tok) {
        (Some(d), Some(t)) => d.vocabulary_difference(t),
        _ => None,
    };
    tokens.or_else(|| {
        (draft.vocab_size != target.vocab_size).then(|| {
            format!(
                "{} output logits against {}",
                draft.vocab_size, target.vocab_size
            )
        })
    })
}
