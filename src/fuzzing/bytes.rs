//! A little reader that carves structured fuzz inputs out of raw bytes. Running out of bytes
//! is never an error: missing numbers read as zero and missing sections as empty, so every
//! input means something and the fuzzer spends its time past the input format.

pub struct Bytes<'a> {
    rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { rest: data }
    }

    pub fn u8(&mut self) -> u8 {
        let (&b, rest) = self.rest.split_first().unwrap_or((&0, &[]));
        self.rest = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next `n` bytes, or all that is left.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

/// Splits lossily decoded text on `sep`.
pub fn split_text(bytes: &[u8], sep: char) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split(sep)
        .map(str::to_string)
        .collect()
}
