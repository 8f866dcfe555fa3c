//! The one error type of the quant module: buffers whose sizes do not match a format.

use crate::format::ggml_type::GgmlType;

/// A buffer handed to a quant function does not fit the format it was asked to read.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// `n` is not a whole number of `ty`'s blocks (or its byte size overflows).
    #[error("{n} {ty} elements are not a whole number of {block}-element blocks")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    /// The source holds a different number of bytes than `n` elements of `ty` take.
    #[error("{n} {ty} elements take {expected} bytes, but the source holds {got}")]
    ByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },
}

impl QuantError {
    /// Bytes taken by `n` elements of `ty`, or the error saying why there is no such size.
    pub(super) fn bytes_for(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
        ty.bytes_for(n as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(QuantError::PartialBlock {
                ty,
                n,
                block: ty.block_len(),
            })
    }
}
