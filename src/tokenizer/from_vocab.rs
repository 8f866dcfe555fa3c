//! Builds a `Tokenizer` from validated GGUF vocabulary metadata.
//!
//! - `gpt2`: byte-level BPE. Text is split by the pre-tokenizer's regexes, each piece's bytes
//!   are mapped to GPT-2's printable characters, then the stored merges apply.
//! - `llama`: SentencePiece-style BPE. Spaces become "▁" (with one "▁" prepended when
//!   `add_space_prefix`), merges are derived from the scores, and characters outside the
//!   vocabulary fall back to `<0xXX>` byte tokens.
//!
//! Control, user-defined and unknown tokens become added tokens of the `tokenizers` crate so
//! that writing them in a prompt (e.g. `<|im_start|>`) yields their id.

use std::collections::HashSet;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::error::TokenizerError;
use super::gguf_vocab::{GgufVocab, TokenType};
use super::pieces::{PieceKind, PieceStyle, PieceTable};
use super::pretok::{self, PreTokenizerRule};
use super::{Parts, Tokenizer};

/// Builds the tokenizer described by `vocab` (validated first).
pub fn build(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    vocab.validate()?;
    match vocab.model.as_str() {
        "gpt2" => build_byte_level(vocab),
        "llama" => build_sentencepiece(vocab),
        other => Err(TokenizerError::UnsupportedModel(other.to_string())),
    }
}

fn build_byte_level(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let (rule, description) = select_pre_tokenizer(vocab.pre.as_deref());
    let token_ids = vocab_map(vocab);
    let merges = parse_merges(&vocab.merges, &token_ids)?;
    let bpe = BPE::builder()
        .vocab_and_merges(token_ids, merges)
        .ignore_merges(rule.ignore_merges)
        .build()
        .map_err(TokenizerError::backend)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer(&rule)?));
    // Decoding uses the piece table; the decoder makes `inner` a complete tokenizer.json.
    inner.with_decoder(Some(ByteLevel::default()));
    add_special_tokens(&mut inner, vocab);
    let pieces = piece_table(vocab, PieceStyle::ByteLevel, false);
    Ok(Tokenizer::assemble(Parts {
        inner,
        pieces,
        kind: format!("byte-level BPE ({description})"),
        bos: vocab.bos_id,
        eos: vocab.eos_id,
        extra_stops: [vocab.eot_id, vocab.eom_id].into_iter().flatten().collect(),
        // BOS only when the metadata asks for it: a raw prompt must reach the model as written.
        add_bos: vocab.add_bos.unwrap_or(false),
        chat_template: vocab.chat_template.clone(),
    }))
}

fn build_sentencepiece(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let scores = vocab.scores.as_deref().ok_or_else(|| {
        TokenizerError::meta("tokenizer.ggml.scores missing (needed by 'llama' vocabularies)")
    })?;
    let mergeable: Vec<bool> = (0..vocab.tokens.len())
        .map(|i| {
            matches!(
                vocab.token_type(i),
                TokenType::Normal | TokenType::UserDefined | TokenType::Unused
            )
        })
        .collect();
    let merges = super::spm_merges::derive(&vocab.tokens, scores, &mergeable);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_map(vocab), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab.unk_id {
        builder = builder.unk_token(vocab.tokens[unk as usize].clone());
    }
    let bpe = builder.build().map_err(TokenizerError::backend)?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let add_space_prefix = vocab.add_space_prefix.unwrap_or(true);
    let escape_spaces = Replace::new(" ", "\u{2581}").map_err(TokenizerError::backend)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            escape_spaces.into(),
        ])
        .into()
    } else {
        escape_spaces.into()
    };
    inner.with_normalizer(Some(normalizer));
    inner.with_decoder(Some(sentencepiece_decoder(add_space_prefix)?));
    add_special_tokens(&mut inner, vocab);
    let pieces = piece_table(vocab, PieceStyle::SentencePiece, add_space_prefix);
    Ok(Tokenizer::assemble(Parts {
        inner,
        pieces,
        kind: "SentencePiece BPE".to_string(),
        bos: vocab.bos_id,
        eos: vocab.eos_id,
        extra_stops: [vocab.eot_id, vocab.eom_id].into_iter().flatten().collect(),
        // BOS only when the metadata asks for it (SentencePiece GGUFs normally set the flag).
        add_bos: vocab.add_bos.unwrap_or(false),
        chat_template: vocab.chat_template.clone(),
    }))
}

/// SentencePiece decoding as a `tokenizers` decoder (for a complete tokenizer.json; `decode`
/// itself uses the piece table).
fn sentencepiece_decoder(strip_space: bool) -> Result<DecoderWrapper, TokenizerError> {
    let mut steps: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ")
            .map_err(TokenizerError::backend)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if strip_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

/// The pre-tokenizer rule for `pre` and how to describe it. Unknown names fall back to
/// GPT-2's rule with a warning: most byte-level vocabularies descend from it, and refusing
/// to load would be worse than slightly different splits.
fn select_pre_tokenizer(pre: Option<&str>) -> (PreTokenizerRule, String) {
    let name = pre.unwrap_or("default");
    match pretok::lookup(name) {
        Some(rule) => (rule, format!("pre-tokenizer {name}")),
        None => {
            tracing::warn!(
                "unknown tokenizer.ggml.pre '{name}'; using the gpt-2 pre-tokenizer, \
                 tokenization may differ from the model's"
            );
            let rule = pretok::fallback();
            (
                rule,
                format!(
                    "pre-tokenizer {} (fallback for unknown '{name}')",
                    rule.name
                ),
            )
        }
    }
}

fn byte_level_pre_tokenizer(
    rule: &PreTokenizerRule,
) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(rule.regexes.len() + 1);
    for re in rule.regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Backend(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    // The regexes did the splitting; ByteLevel only maps bytes to characters.
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(PreTokenizerSequence::new(steps).into())
}

/// Piece -> id. Where a piece occurs twice the later id wins, as in llama.cpp.
fn vocab_map(vocab: &GgufVocab) -> Vocab {
    vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// Splits "left right" merge entries. Malformed entries are errors; entries naming pieces
/// outside the vocabulary can never apply, so they are skipped (with one warning), and
/// repeated pairs keep their first (best) rank.
fn parse_merges(entries: &[String], token_ids: &Vocab) -> Result<Merges, TokenizerError> {
    let mut merges = Vec::with_capacity(entries.len());
    let mut seen = HashSet::with_capacity(entries.len());
    let mut unusable = 0usize;
    let mut joined = String::new();
    for (i, entry) in entries.iter().enumerate() {
        let (left, right) = entry.split_once(' ').ok_or_else(|| {
            TokenizerError::meta(format!(
                "tokenizer.ggml.merges entry {i} has no space: {entry:?}"
            ))
        })?;
        if left.is_empty() || right.is_empty() || right.contains(' ') {
            return Err(TokenizerError::meta(format!(
                "tokenizer.ggml.merges entry {i} is not two pieces separated by one space: {entry:?}"
            )));
        }
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        if !token_ids.contains_key(left)
            || !token_ids.contains_key(right)
            || !token_ids.contains_key(joined.as_str())
        {
            unusable += 1;
            continue;
        }
        if seen.insert((left, right)) {
            merges.push((left.to_string(), right.to_string()));
        }
    }
    if unusable > 0 {
        tracing::warn!("{unusable} merges name pieces outside the vocabulary; skipped");
    }
    Ok(merges)
}

/// Registers control, user-defined and unknown tokens so they are matched in input text
/// before normalization and splitting.
fn add_special_tokens(inner: &mut tokenizers::Tokenizer, vocab: &GgufVocab) {
    let mut control = Vec::new();
    let mut user = Vec::new();
    for (i, piece) in vocab.tokens.iter().enumerate() {
        if piece.is_empty() {
            continue;
        }
        match vocab.token_type(i) {
            TokenType::Control | TokenType::Unknown => {
                control.push(AddedToken::from(piece.clone(), true).normalized(false))
            }
            TokenType::UserDefined => {
                user.push(AddedToken::from(piece.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    inner.add_special_tokens(&control);
    inner.add_tokens(&user);
}

fn piece_table(vocab: &GgufVocab, style: PieceStyle, strip_leading_space: bool) -> PieceTable {
    let pieces: Vec<Option<(&str, PieceKind)>> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let kind = match vocab.token_type(i) {
                TokenType::Control => PieceKind::Control,
                TokenType::UserDefined | TokenType::Unknown => PieceKind::Added,
                TokenType::Byte => PieceKind::Byte,
                TokenType::Normal | TokenType::Unused => PieceKind::Normal,
            };
            Some((piece.as_str(), kind))
        })
        .collect();
    PieceTable::new(&pieces, style, strip_leading_space)
}
