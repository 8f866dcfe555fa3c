//! The model's vocabulary as the constraint engine sees it: one byte string per logits row,
//! and the parser factory (with tachyon's limits) that compiles requests against it.

use std::sync::Arc;
use std::time::Instant;

use llguidance::ParserFactory;
use llguidance::api::ParserLimits;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokRxInfo, TokTrie};

use super::ConstraintError;
use super::matcher::Constraint;
use super::spec::ConstraintSpec;
use crate::tokenizer::Tokenizer;

/// Bounds on what one request's constraint may cost. Every figure bounds work, so a hostile
/// schema or grammar is refused in bounded time instead of stalling the engine; `Default`
/// holds the values the server uses (see README "Structured output" for the figures).
#[derive(Clone, Debug, PartialEq)]
pub struct ConstraintLimits {
    /// Longest schema / grammar / regex text accepted, bytes.
    pub max_source_bytes: usize,
    /// Deepest nesting of a schema (JSON levels), a grammar or a regex (brackets): the
    /// compilers recurse over it, so this bounds their stack.
    pub max_nesting: usize,
    /// Grammar symbols after compilation (a JSON schema's size once expanded).
    pub max_grammar_size: usize,
    /// Work spent building the lexer's regexes at compile time (llguidance "fuel", about
    /// 50 units per microsecond).
    pub initial_lexer_fuel: u64,
    /// Lexer work for one token mask (about 14 units per microsecond).
    pub step_lexer_fuel: u64,
    /// Earley items one token mask may create (about 20 per microsecond).
    pub step_max_items: usize,
    /// Lexer DFA states kept (1-2 kB of memory each).
    pub max_lexer_states: usize,
    /// Earley items in one parser row (the grammar's branching factor).
    pub max_items_in_row: usize,
}

impl Default for ConstraintLimits {
    fn default() -> Self {
        ConstraintLimits {
            max_source_bytes: 256 * 1024,
            max_nesting: 64,
            max_grammar_size: 200_000,
            initial_lexer_fuel: 1_000_000,
            step_lexer_fuel: 200_000,
            step_max_items: 50_000,
            max_lexer_states: 50_000,
            max_items_in_row: 2_000,
        }
    }
}

impl ConstraintLimits {
    fn parser_limits(&self) -> ParserLimits {
        ParserLimits {
            max_items_in_row: self.max_items_in_row,
            initial_lexer_fuel: self.initial_lexer_fuel,
            step_lexer_fuel: self.step_lexer_fuel,
            step_max_items: self.step_max_items,
            max_lexer_states: self.max_lexer_states,
            max_grammar_size: self.max_grammar_size,
            // Precomputing large lexemes over the whole vocabulary trades compile time for
            // mask time; compile time is what hostile input attacks.
            precompute_large_lexemes: false,
            // Errors go back to the client: the reason, not the parser's whole state.
            verbose_errors: false,
        }
    }
}

/// A model's vocabulary in a token trie plus the factory that compiles constraints for it.
/// Built once per model (about a second for a 150k vocabulary); shared across requests.
pub struct ConstraintVocab {
    factory: Arc<ParserFactory>,
    /// Logits rows per step: the mask covers this many tokens.
    vocab: usize,
    stop_ids: Vec<u32>,
    limits: ConstraintLimits,
}

impl std::fmt::Debug for ConstraintVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocab")
            .field("vocab", &self.vocab)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl ConstraintVocab {
    /// The trie of `tokenizer`'s vocabulary padded to `logits_vocab` rows (a model's output
    /// may have more rows than the tokenizer has tokens; those rows are never allowed).
    /// Control tokens are marked special, so only a grammar naming them (`<|im_end|>` in
    /// Lark) can produce them; the tokenizer's stop ids end a finished constraint.
    pub fn new(
        tokenizer: &Tokenizer,
        logits_vocab: usize,
        limits: ConstraintLimits,
    ) -> Result<ConstraintVocab, ConstraintError> {
        let n = u32::try_from(logits_vocab)
            .map_err(|_| ConstraintError::Vocab(format!("{logits_vocab} logits rows")))?;
        let stop_ids: Vec<u32> = tokenizer
            .stop_ids()
            .iter()
            .copied()
            .filter(|&id| id < n)
            .collect();
        if stop_ids.is_empty() {
            return Err(ConstraintError::Vocab(
                "the model has no end-of-sequence token".into(),
            ));
        }
        let words: Vec<Vec<u8>> = (0..n).map(|id| token_word(tokenizer, id)).collect();
        let info = TokRxInfo::new(n, stop_ids[0]);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&stop_ids);
        // Tokenizing grammar literals greedily on the trie is only used for forced tokens,
        // which tachyon does not take (every token is sampled under the mask).
        let env = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &(env as llguidance::toktrie::TokEnv),
            InferenceCapabilities::default(),
            &SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| ConstraintError::Vocab(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits.parser_limits();
        Ok(ConstraintVocab {
            factory: Arc::new(factory),
            vocab: logits_vocab,
            stop_ids,
            limits,
        })
    }

    /// Logits rows the masks cover.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Tokens that end a request when the constraint allows it to end.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn limits(&self) -> &ConstraintLimits {
        &self.limits
    }

    /// Compiles `spec` into a fresh per-request constraint. Bounded by the limits: a schema
    /// or grammar over them is a `Compile` error, not a long stall.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint, ConstraintError> {
        let compiled = spec.to_grammar(&self.limits)?;
        let t0 = Instant::now();
        let parser = self
            .factory
            .create_parser(compiled.grammar)
            .map_err(|e| ConstraintError::Compile(clean_error(&e.to_string())))?;
        let matcher = llguidance::Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Compile(clean_error(&e)));
        }
        tracing::debug!(
            "constraint compiled in {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        let mut constraint =
            Constraint::new(matcher, self.vocab, compiled.trigger, self.stop_ids.clone());
        // Such a grammar compiles, but every output would be empty: surely not what the
        // request meant (`start: ` in Lark, a regex of only anchors).
        if constraint.allows_only_stop()? {
            return Err(ConstraintError::Compile(
                "the grammar matches only the empty output".into(),
            ));
        }
        Ok(constraint)
    }
}

/// The bytes the trie holds for `id`: its output bytes, or for control tokens the special
/// marker byte and the piece (`\xff<|im_end|>`), which no text can spell.
fn token_word(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    if id as usize >= tokenizer.vocab_size() {
        return Vec::new();
    }
    if tokenizer.is_control(id) {
        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        w.extend_from_slice(
            tokenizer
                .id_to_piece(id)
                .unwrap_or_else(|| format!("<[{id}]>"))
                .as_bytes(),
        );
        return w;
    }
    tokenizer
        .token_bytes(id)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// llguidance errors are multi-line; a client gets the first lines, bounded in length.
fn clean_error(e: &str) -> String {
    let mut out: String = e.lines().take(3).collect::<Vec<_>>().join("; ");
    if out.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push_str("...");
    }
    out
}
