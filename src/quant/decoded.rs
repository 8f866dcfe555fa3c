//! A band of weight rows decoded once for all the tiles of a prompt.
//!
//! A band kernel decodes each weight block (unpacks the codes, offsets them to unsigned
//! bytes, widens the scales) for every tile of tokens it takes: on a prompt of n tokens,
//! n / `TILE` decodes of every block. Decoded once into plain bytes that stay in L2 (40
//! bytes a block of 32: a band of 512 rows of 896 columns is 573 KB), the tiles only
//! load them, and the kernel over them keeps its accumulators in registers (see
//! `dot_avx2::vnni::decoded`). The results are bit for bit those of
//! [`matmul_rows`](super::matmul_rows).

use super::acts::QuantizedActs;
use super::dot::{Isa, TILE, row_bytes_for};
use crate::format::ggml_type::GgmlType;

/// Rows of one weight format, decoded by [`DecodedRows::decode`] (the buffers are reused
/// from call to call). Off x86_64, and on CPUs without AVX-512 VNNI, nothing decodes.
#[derive(Default)]
pub struct DecodedRows {
    #[cfg(target_arch = "x86_64")]
    inner: x86::Decoded,
}

impl DecodedRows {
    pub fn new() -> DecodedRows {
        DecodedRows::default()
    }

    /// Decodes `w` (whole rows of `row_bytes`) when this CPU's kernels have a decoded
    /// form for `wty` (the simple formats, on AVX-512 VNNI); returns whether they do.
    /// Either way, what was decoded before is gone.
    pub fn decode(&mut self, wty: GgmlType, w: &[u8], row_bytes: usize) -> bool {
        self.decode_with(Isa::best(), wty, w, row_bytes)
    }

    pub(crate) fn decode_with(
        &mut self,
        isa: Isa,
        wty: GgmlType,
        w: &[u8],
        row_bytes: usize,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.inner.decode(isa, wty, w, row_bytes)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, wty, w, row_bytes);
            false
        }
    }

    /// [`matmul_rows`](super::matmul_rows) over the rows decoded last, for 1 to
    /// [`TILE`] tokens: `out[j * rows + r]` = dot(row r, `xs[j]`), bit for bit.
    /// Panics when nothing is decoded or the sizes do not match.
    pub fn matmul_rows(&mut self, xs: &[QuantizedActs], out: &mut [f32]) {
        assert!(
            (1..=TILE).contains(&xs.len()),
            "DecodedRows::matmul_rows: {} activation rows, 1 to {TILE} per call",
            xs.len()
        );
        #[cfg(target_arch = "x86_64")]
        self.inner.matmul_rows(xs, out);
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = out;
            panic!("DecodedRows::matmul_rows: nothing decoded");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::dot_avx2::{DECODED_BYTES, DecodedFns, Prepared};
    use super::{GgmlType, Isa, QuantizedActs, row_bytes_for};

    #[derive(Default)]
    pub(super) struct Decoded {
        buf: Vec<u8>,
        prep: Prepared,
        /// What was decoded last.
        held: Option<Held>,
    }

    #[derive(Clone, Copy)]
    struct Held {
        wty: GgmlType,
        row_bytes: usize,
        blocks_per_row: usize,
        fns: DecodedFns,
    }

    impl Decoded {
        pub(super) fn decode(
            &mut self,
            isa: Isa,
            wty: GgmlType,
            w: &[u8],
            row_bytes: usize,
        ) -> bool {
            self.held = None;
            let Some(fns) = isa.decoded_fns(wty) else {
                return false;
            };
            assert!(
                row_bytes > 0
                    && row_bytes.is_multiple_of(wty.block_bytes())
                    && w.len().is_multiple_of(row_bytes),
                "decode: whole rows of whole {wty} blocks"
            );
            let blocks = w.len() / wty.block_bytes();
            self.buf.resize(blocks * DECODED_BYTES, 0);
            (fns.decode)(w, row_bytes, &mut self.buf);
            self.held = Some(Held {
                wty,
                row_bytes,
                blocks_per_row: row_bytes / wty.block_bytes(),
                fns,
            });
            true
        }

        pub(super) fn matmul_rows(&mut self, xs: &[QuantizedActs], out: &mut [f32]) {
            let held = self
                .held
                .unwrap_or_else(|| panic!("DecodedRows::matmul_rows: nothing decoded"));
            for x in xs {
                let rb = row_bytes_for(held.wty, x);
                assert_eq!(
                    rb,
                    held.row_bytes,
                    "DecodedRows::matmul_rows: {} elements of {} make {rb}-byte rows, not {}",
                    x.len(),
                    held.wty,
                    held.row_bytes
                );
            }
            let rows = self.buf.len() / (held.blocks_per_row * DECODED_BYTES);
            assert_eq!(
                out.len(),
                rows * xs.len(),
                "DecodedRows::matmul_rows: one output per (row, token)"
            );
            (held.fns.matmul)(&self.buf, held.blocks_per_row, xs, &mut self.prep, out);
        }
    }
}
