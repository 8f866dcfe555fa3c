//! Streaming detokenizer: generated ids in, complete UTF-8 text out.
//!
//! Each token's output bytes are fixed (see `pieces`), so the decoder only appends them to a
//! small buffer and hands out the complete characters; the bytes of a character split across
//! tokens (byte-fallback or byte-level pieces of an emoji, say) wait for the rest. Work per
//! token is proportional to the token's length, and the concatenation of all pushes plus
//! `finish` equals `Tokenizer::decode` of the whole sequence, replacement characters
//! included.

use super::{Tokenizer, TokenizerError};

/// Incremental decoder; get one from [`Tokenizer::stream_decoder`].
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes not yet returned: at most the start of one incomplete character.
    pending: Vec<u8>,
    /// No byte has been produced yet (SentencePiece drops a leading space).
    at_start: bool,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            pending: Vec::with_capacity(8),
            at_start: true,
        }
    }

    /// Feeds one generated token; returns the newly completed text (possibly empty). Bytes
    /// of a partial character are held back until it is complete; bytes that can never form
    /// a character come out as U+FFFD, as in `decode`.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let mut bytes = self.tokenizer.token_bytes(id)?;
        if bytes.is_empty() {
            return Ok(String::new());
        }
        if self.at_start {
            self.at_start = false;
            if self.tokenizer.strips_leading_space() && bytes[0] == b' ' {
                bytes = &bytes[1..];
            }
        }
        self.pending.extend_from_slice(bytes);
        Ok(self.take_complete())
    }

    /// Returns what is left at the end: an incomplete character, decoded lossily.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Removes and returns the longest prefix of `pending` that decodes without waiting for
    /// more bytes, replacing invalid sequences exactly as `String::from_utf8_lossy` does.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    // `valid` is UTF-8 by construction of valid_up_to.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &tail[bad..];
                        }
                        None => {
                            // Incomplete character at the end: keep it for the next push.
                            rest = tail;
                            break;
                        }
                    }
                }
            }
        }
        let kept = rest.len();
        let start = self.pending.len() - kept;
        self.pending.drain(..start);
        out
    }
}
