//! The speculative-decoding options `tachyon generate` and `tachyon serve` share, and the
//! checks on a draft model before anything is built from it.

use std::path::PathBuf;

use super::draft::DraftModel;
use super::spec_decode::Speculation;
use super::speculative::PromptLookup;
use crate::format::ModelError;
use crate::graph::Model;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SpeculationArgs {
    /// A smaller model with the same tokenizer that proposes tokens for the target to
    /// verify in one pass (speculative decoding; the output is unchanged).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Most tokens proposed per step (1 to 15).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub draft_max: u8,
    /// Propose tokens by matching the last few tokens against the prompt and the text so
    /// far (prompt lookup; no draft model needed, combines with one).
    #[arg(long)]
    pub lookup: bool,
    /// Always propose --draft-max tokens instead of following the acceptance rate.
    #[arg(long)]
    pub draft_fixed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeculationError {
    #[error("loading the draft model {path}: {source}")]
    Load { path: PathBuf, source: ModelError },
    #[error(
        "the draft model {path} does not share the target's vocabulary ({why}); a draft must use the target's tokenizer"
    )]
    Vocabulary { path: PathBuf, why: String },
}

impl SpeculationArgs {
    /// Whether any speculation was asked for.
    pub fn enabled(&self) -> bool {
        self.draft_model.is_some() || self.lookup
    }

    /// Loads `--draft-model`, refusing one whose vocabulary differs from `target`'s.
    pub fn load_draft(&self, target: &Model) -> Result<Option<Model>, SpeculationError> {
        let Some(path) = &self.draft_model else {
            return Ok(None);
        };
        let draft = Model::load(path).map_err(|source| SpeculationError::Load {
            path: path.clone(),
            source,
        })?;
        let why = draft
            .tokenizer
            .vocabulary_difference(&target.tokenizer)
            .or_else(|| {
                (draft.config.vocab_size != target.config.vocab_size).then(|| {
                    format!(
                        "{} output logits against {}",
                        draft.config.vocab_size, target.config.vocab_size
                    )
                })
            });
        match why {
            Some(why) => Err(SpeculationError::Vocabulary {
                path: path.clone(),
                why,
            }),
            None => Ok(Some(draft)),
        }
    }

    /// The engine's speculation from these options and the draft (built from
    /// [`SpeculationArgs::load_draft`]'s model); `None` when nothing was asked for.
    pub fn speculation(&self, draft: Option<DraftModel>) -> Option<Speculation> {
        if draft.is_none() && !self.lookup {
            return None;
        }
        Some(Speculation {
            draft,
            lookup: self.lookup.then(PromptLookup::default),
            max_len: usize::from(self.draft_max),
            adaptive: !self.draft_fixed,
            replay: None,
        })
    }
}
