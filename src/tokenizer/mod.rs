//! Text <-> token ids for the models tachyon runs, plus chat templates.
//!
//! A [`Tokenizer`] is built from a GGUF file's vocabulary metadata ([`Tokenizer::from_gguf`])
//! or from a Hugging Face tokenizer directory ([`Tokenizer::from_hf_dir`]). Encoding goes
//! through the `tokenizers` crate; decoding uses a per-token byte table (`pieces`) so the
//! streaming decoder ([`StreamDecoder`]) can emit text token by token with the same result
//! as decoding everything at once.
//!
//! Files: `gguf_vocab` (metadata extraction and validation), `from_vocab` (GGUF vocabulary
//! -> tokenizer), `pretok` (pre-tokenizer regexes), `spm_merges` (SentencePiece merges),
//! `hf` (Hugging Face directories), `pieces` (decode table), `stream` (streaming decoder),
//! `chat` and `template_fns` (chat templates), `error`.

mod chat;
mod error;
mod from_vocab;
mod gguf_vocab;
mod hf;
mod pieces;
mod pretok;
mod spm_merges;
mod stream;
mod template_fns;

pub use chat::{ChatMessage, ChatTemplate, MAX_OUTPUT_BYTES as MAX_CHAT_OUTPUT_BYTES};
pub use error::TokenizerError;
pub use gguf_vocab::{GgufVocab, TokenType};
pub use stream::StreamDecoder;

use pieces::PieceTable;

/// Pieces that end generation in the model families we know, added to the stop set when the
/// vocabulary has them as special (control or added) tokens.
const WELL_KNOWN_STOPS: [&str; 5] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "</s>",
];

/// A model's tokenizer: encoding, decoding, special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pieces: PieceTable,
    kind: String,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
}

/// What a builder (GGUF or Hugging Face) hands over to make a `Tokenizer`.
pub(crate) struct Parts {
    pub inner: tokenizers::Tokenizer,
    pub pieces: PieceTable,
    /// The model description for `describe`, e.g. "byte-level BPE (pre-tokenizer qwen2)".
    pub kind: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// More ids that end generation (eot, eom, generation_config's eos list).
    pub extra_stops: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(g: &crate::format::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_vocab(&GgufVocab::from_gguf(g)?)
    }

    /// Builds the tokenizer from already extracted GGUF vocabulary metadata.
    pub fn from_vocab(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        from_vocab::build(vocab)
    }

    /// Builds the tokenizer of a Hugging Face model directory: `tokenizer.json`, plus
    /// `tokenizer_config.json` (chat template, BOS/EOS tokens, `add_bos_token`) and
    /// `generation_config.json` (extra EOS ids) when present.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        hf::load(dir)
    }

    pub(crate) fn assemble(parts: Parts) -> Tokenizer {
        let Parts {
            inner,
            pieces,
            kind,
            bos,
            eos,
            extra_stops,
            add_bos,
            chat_template,
        } = parts;
        let mut stop_ids: Vec<u32> = Vec::new();
        // Only as special tokens: a vocabulary trained on HTML may have "</s>" as plain text.
        let added = inner.get_added_tokens_decoder();
        let well_known = WELL_KNOWN_STOPS
            .iter()
            .filter_map(|p| inner.token_to_id(p))
            .filter(|id| pieces.is_control(*id) || added.contains_key(id));
        for id in eos.into_iter().chain(extra_stops).chain(well_known) {
            if (id as usize) < pieces.len() && !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        Tokenizer {
            inner,
            pieces,
            kind,
            bos,
            eos,
            add_bos,
            stop_ids,
            chat_template,
        }
    }

    /// Encodes `text`. Special tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised and become their single id. With `add_bos`, BOS is prepended only when the
    /// model's metadata says to add one (`add_bos_token`); never otherwise.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(TokenizerError::backend)?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_bos
            && self.add_bos
            && let Some(bos) = self.bos
        {
            out.push(bos);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes ids to text. Control tokens (BOS, EOS, `<|im_end|>`, ...) produce no text;
    /// every other token, user-defined added tokens included, is written out. Invalid UTF-8
    /// (e.g. half of a character split across byte tokens) becomes U+FFFD. SentencePiece
    /// vocabularies drop the one leading space the encoder prepended.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id)?);
        }
        let start = usize::from(self.pieces.strip_leading_space() && bytes.first() == Some(&b' '));
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }

    /// The output bytes of one token (empty for control tokens).
    pub(crate) fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.pieces.output(id).ok_or(TokenizerError::InvalidId {
            id,
            vocab_size: self.pieces.len(),
        })
    }

    pub(crate) fn strips_leading_space(&self) -> bool {
        self.pieces.strip_leading_space()
    }

    /// Number of token ids (one past the largest id).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Where this vocabulary and `other` first differ (size, or the bytes of a token), or
    /// `None` when they map every id to the same bytes: what a draft model must share with
    /// its target.
    pub fn vocabulary_difference(&self, other: &Tokenizer) -> Option<String> {
        if self.vocab_size() != other.vocab_size() {
            return Some(format!(
                "{} tokens against {}",
                self.vocab_size(),
                other.vocab_size()
            ));
        }
        (0..self.vocab_size() as u32).find_map(|id| {
            let (a, b) = (self.id_to_piece(id), other.id_to_piece(id));
            (a != b).then(|| format!("token {id} is {a:?} against {b:?}"))
        })
    }

    /// The BOS id from the metadata, whether or not `encode` adds it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(text, true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Token ids that end generation: eos, eot, eom, plus well-known end tokens present in
    /// the vocabulary (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|end_of_text|>`, `</s>`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The id of a piece as stored in the vocabulary (e.g. "Ġhello", "▁Hello", "<|im_end|>").
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The vocabulary's piece for `id`, as stored.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a control token (decodes to nothing).
    pub fn is_control(&self, id: u32) -> bool {
        self.pieces.is_control(id)
    }

    /// One line for `tachyon info`, e.g.
    /// "byte-level BPE (pre-tokenizer qwen2), 151936 tokens, bos none, eos 151645 <|im_end|>".
    /// BOS is shown only when `encode` adds it.
    pub fn describe(&self) -> String {
        let show = |id: Option<u32>| match id {
            Some(id) => format!("{id} {}", self.id_to_piece(id).unwrap_or_default()),
            None => "none".to_string(),
        };
        let bos = if self.adds_bos() { self.bos } else { None };
        format!(
            "{}, {} tokens, bos {}, eos {}",
            self.kind,
            self.vocab_size(),
            show(bos),
            show(self.eos)
        )
    }

    /// The model's Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The BOS piece (for the chat template's `bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.bos.and_then(|id| self.id_to_piece(id))
    }

    /// The EOS piece (for the chat template's `eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.eos.and_then(|id| self.id_to_piece(id))
    }

    /// A decoder that turns generated ids into text one token at a time.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The model's chat template compiled with its BOS/EOS pieces, if it has one.
    pub fn compile_chat_template(&self) -> Option<Result<ChatTemplate, TokenizerError>> {
        let source = self.chat_template.as_deref()?;
        Some(ChatTemplate::new(
            source,
            &self.bos_token().unwrap_or_default(),
            &self.eos_token().unwrap_or_default(),
        ))
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests;
