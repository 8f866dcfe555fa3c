//! Per-token output bytes, the table both `decode` and the streaming decoder read.
//!
//! Decoding is done here rather than with the `tokenizers` crate's decoders because every
//! token's bytes are independent of its neighbours once the vocabulary style is known (the
//! one exception, SentencePiece's leading space, is a flag on the table). That makes the
//! streaming decoder exact and O(1) per token: it appends a token's bytes and emits the
//! complete UTF-8 characters, with no re-decoding of a window of past tokens.

use std::collections::HashMap;
use std::sync::OnceLock;

/// How a vocabulary spells the bytes of its ordinary tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceStyle {
    /// GPT-2 byte-level BPE: each byte is stored as one printable character.
    ByteLevel,
    /// SentencePiece: "▁" stands for a space and `<0xXX>` tokens carry raw bytes.
    SentencePiece,
    /// The piece text is the output text.
    Plain,
}

/// What `decode` does with one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceKind {
    /// Ordinary token: decoded according to the vocabulary's style.
    Normal,
    /// Byte-fallback token `<0xXX>` (SentencePiece): one raw byte.
    Byte,
    /// Added (user-defined or unknown) token: its text is output as written (SentencePiece
    /// "▁" still means a space).
    Added,
    /// Control token (BOS, `<|im_end|>`, ...): produces no text.
    Control,
}

/// Output bytes of every token id, flattened into one buffer.
#[derive(Debug)]
pub(crate) struct PieceTable {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` is token `id`'s slice of `bytes`.
    offsets: Vec<usize>,
    control: Vec<bool>,
    /// SentencePiece with a space prefix: the first space of the decoded text is the one the
    /// encoder added, so it is removed again.
    strip_leading_space: bool,
}

impl PieceTable {
    /// Builds the table from `(piece, kind)` per id; ids with no piece (gaps in a Hugging Face
    /// vocabulary) decode to nothing.
    pub(crate) fn new(
        pieces: &[Option<(&str, PieceKind)>],
        style: PieceStyle,
        strip_leading_space: bool,
    ) -> PieceTable {
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(pieces.len() + 1);
        let mut control = Vec::with_capacity(pieces.len());
        offsets.push(0);
        for entry in pieces {
            let is_control = match entry {
                Some((piece, kind)) => {
                    piece_bytes(piece, *kind, style, &mut bytes);
                    *kind == PieceKind::Control
                }
                None => true,
            };
            control.push(is_control);
            offsets.push(bytes.len());
        }
        PieceTable {
            bytes,
            offsets,
            control,
            strip_leading_space,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.control.len()
    }

    /// The bytes token `id` contributes to decoded text (empty for control tokens), or
    /// `None` when `id` is out of range.
    pub(crate) fn output(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        if *self.control.get(i)? {
            return Some(&[]);
        }
        Some(&self.bytes[self.offsets[i]..self.offsets[i + 1]])
    }

    pub(crate) fn is_control(&self, id: u32) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.control.get(i).copied())
            .unwrap_or(false)
    }

    pub(crate) fn strip_leading_space(&self) -> bool {
        self.strip_leading_space
    }
}

/// Appends the decoded bytes of one piece to `out`.
fn piece_bytes(piece: &str, kind: PieceKind, style: PieceStyle, out: &mut Vec<u8>) {
    match (kind, style) {
        (PieceKind::Control, _) => {}
        (PieceKind::Byte, _) => match parse_byte_token(piece) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(piece.as_bytes()),
        },
        (PieceKind::Normal, PieceStyle::ByteLevel) => {
            let table = byte_level_decoder();
            for c in piece.chars() {
                match table.get(&c) {
                    Some(&b) => out.push(b),
                    // Not a byte-level character: keep it as text rather than lose it.
                    None => push_char(c, out),
                }
            }
        }
        (PieceKind::Normal | PieceKind::Added, PieceStyle::SentencePiece) => {
            for c in piece.chars() {
                push_char(if c == '\u{2581}' { ' ' } else { c }, out);
            }
        }
        (PieceKind::Normal | PieceKind::Added, _) => out.extend_from_slice(piece.as_bytes()),
    }
}

fn push_char(c: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// `<0xAB>` -> 0xAB.
pub(crate) fn parse_byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes are moved to U+0100 and up, in byte order.
pub(crate) fn byte_level_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        // Every code here is below U+0200, so always a valid char.
        map[usize::from(b)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    map
}

fn byte_level_decoder() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        byte_level_chars()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_is_gpt2s() {
        let m = byte_level_chars();
        assert_eq!(m[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(m[b'\n' as usize], '\u{10A}'); // 'Ċ'
        assert_eq!(m[b'A' as usize], 'A');
        assert_eq!(m[0xAD], '\u{143}');
        let distinct: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn pieces_decode_by_style() {
        let pieces = [
            Some(("<s>", PieceKind::Control)),
            Some(("\u{2581}Hello", PieceKind::Normal)),
            Some(("<0xE2>", PieceKind::Byte)),
            None,
        ];
        let t = PieceTable::new(&pieces, PieceStyle::SentencePiece, true);
        assert_eq!(t.len(), 4);
        assert_eq!(t.output(0), Some(&b""[..]));
        assert_eq!(t.output(1), Some(&b" Hello"[..]));
        assert_eq!(t.output(2), Some(&[0xE2u8][..]));
        assert_eq!(t.output(3), Some(&b""[..]));
        assert_eq!(t.output(4), None);
        let bl = PieceTable::new(
            &[Some(("\u{120}hi\u{10A}", PieceKind::Normal))],
            PieceStyle::ByteLevel,
            false,
        );
        assert_eq!(bl.output(0), Some(&b" hi\n"[..]));
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0A"), None);
        assert_eq!(parse_byte_token("<0x123>"), None);
    }
}
