//! Tokenizer construction from GGUF vocabulary metadata, then encoding and decoding with it.
//!
//! Input layout (see `bytes`): a flags byte, a pre-tokenizer selector, BOS/EOS/UNK ids
//! (u16 each), then text sections separated by NUL: tokens (separated by U+0001), merges
//! (separated by U+0001), token types (one character per token, its code mod 7), and the
//! text to encode. Building from the struct skips the GGUF container, which the `gguf`
//! target covers, so the fuzzer works on vocabularies directly.

use super::bytes::{Bytes, split_text};
use super::{Outcome, Rejected};
use crate::tokenizer::{ChatMessage, GgufVocab, TokenType, Tokenizer, TokenizerError};

/// Pre-tokenizer names: the known ones, one unknown, and none.
const PRES: &[Option<&str>] = &[
    None,
    Some("gpt2"),
    Some("default"),
    Some("llama-bpe"),
    Some("qwen2"),
    Some("qwen35"),
    Some("smollm"),
    Some("falcon"),
    Some("deepseek-coder"),
    Some("no-such-pre"),
];

pub fn run(data: &[u8]) -> Outcome {
    let vocab = vocab_from_bytes(data);
    let text = vocab.1;
    let tokenizer = Tokenizer::from_vocab(&vocab.0).map_err(Rejected::from)?;
    exercise(&tokenizer, &text).map_err(Rejected::from)
}

fn vocab_from_bytes(data: &[u8]) -> (GgufVocab, String) {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let pre = PRES[usize::from(b.u8()) % PRES.len()];
    let (bos, eos, unk) = (b.u16(), b.u16(), b.u16());
    let sections = split_text(b.rest(), '\0');
    let section = |i: usize| sections.get(i).map(String::as_str).unwrap_or("");
    let list = |s: &str| -> Vec<String> {
        match s {
            "" => Vec::new(),
            s => s.split('\u{1}').map(str::to_string).collect(),
        }
    };
    let (tokens, merges) = (list(section(0)), list(section(1)));
    let codes: Vec<u32> = section(2).chars().map(u32::from).collect();
    let token_types = match flags & 0x20 {
        0 => Vec::new(),
        // Deliberately possibly shorter or longer than the vocabulary.
        _ => codes
            .iter()
            .map(|c| TokenType::from_code((c % 7) as i32))
            .collect(),
    };
    let scores = (flags & 0x10 != 0).then(|| {
        (0..tokens.len())
            .map(|i| codes.get(i).map_or(0.0, |&c| (c >> 3) as f32) - i as f32 * 0.01)
            .collect()
    });
    let id = |bit: u8, v: u16| (flags & bit != 0).then_some(u32::from(v));
    let vocab = GgufVocab {
        model: ["gpt2", "llama", "bert", "gpt2"][usize::from(flags & 3)].to_string(),
        pre: pre.map(str::to_string),
        tokens,
        scores,
        token_types,
        merges,
        bos_id: id(0x40, bos),
        eos_id: id(0x80, eos),
        unk_id: (unk & 0x8000 != 0).then_some(u32::from(unk & 0x7fff)),
        add_bos: Some(flags & 0x04 != 0),
        add_space_prefix: Some(flags & 0x08 != 0),
        ..GgufVocab::default()
    };
    (vocab, section(3).to_string())
}

/// Encodes `text` and decodes the ids back, all-at-once and streamed; checks the ids are in
/// the vocabulary and both decodings agree.
pub fn exercise(t: &Tokenizer, text: &str) -> Result<(), TokenizerError> {
    let ids = t.encode(text, true)?;
    for &id in &ids {
        assert!(
            (id as usize) < t.vocab_size(),
            "id {id} past the vocabulary of {}",
            t.vocab_size()
        );
    }
    let whole = t.decode(&ids)?;
    let mut stream = t.stream_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(id)?);
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, whole, "streamed and whole decoding differ");
    // Ids from outside (a request's logit bias, a bad sample) are refused, not indexed.
    let past = u32::try_from(t.vocab_size()).unwrap_or(u32::MAX);
    assert!(t.decode(&[past]).is_err());
    // A template that does not compile or render is a refusal, not a failure of the load.
    if let Some(Ok(template)) = t.compile_chat_template() {
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", text),
        ];
        let _ = super::chat_template::render(&template, &messages, true);
    }
    Ok(())
}
