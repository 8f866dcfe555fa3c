//! A band of weight rows decoded once for all the tiles of a prompt.
//!
//! A band kernel decodes each weight block (unpacks the codes, offsets them to unsigned
//! bytes, widens the scales) for every tile of tokens it takes: on a prompt of n tokens,
//! n / `TILE` decodes of every block. Decoded once into plain bytes that stay in L2 (40
//! bytes a block of 32: a band of 512 rows of 896 columns is 573 KB), the tiles only
//! load them, and the kernel over them keeps its accumulators in registers (see
//! `dot_avx2::vnni::decoded`). Q4_K and Q6_K rows are decoded 16 side by side, so that
//! each register lane is a row (`dot_avx2::vnni::interleaved`). The results are bit for
//! bit those of [`matmul_rows`](super::matmul_rows).

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
    /// form for `wty` (the simple formats, Q4_K and Q6_K, on AVX-512 VNNI); returns
    /// whether they do.
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
    use super::super::dot_avx2::{DecodedFns, Prepared};
    use super::{GgmlType, Isa, QuantizedActs, row_bytes_for};

    /// 64 bytes, 64-byte aligned: the kernels' loads never split a cache line.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);

    #[derive(Default)]
    pub(super) struct Decoded {
        lines: Vec<Line>,
        /// Bytes of `lines` in use.
        len: usize,
        prep: Prepared,
        /// What was decoded last.
        held: Option<Held>,
    }

    #[derive(Clone, Copy)]
    struct Held {
        wty: GgmlType,
        row_bytes: usize,
        rows: usize,
        blocks_per_row: usize,
        fns: DecodedFns,
    }

    impl Decoded {
        fn bytes(&self) -> &[u8] {
            // SAFETY: `Line` is 64 plain bytes with no padding, and `len` never exceeds
            // the bytes of `lines` (set in `decode`).
            unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
        }

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
            let rows = w.len() / row_bytes;
            let blocks_per_row = row_bytes / wty.block_bytes();
            self.len = (fns.len)(rows, blocks_per_row);
            self.lines.resize(self.len.div_ceil(64), Line([0; 64]));
            // SAFETY: as in `bytes`, with `lines` borrowed mutably.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len)
            };
            (fns.decode)(w, row_bytes, dst);
            self.held = Some(Held {
                wty,
                row_bytes,
                rows,
                blocks_per_row,
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
            assert_eq!(
                out.len(),
                held.rows * xs.len(),
                "DecodedRows::matmul_rows: one output per (row, token)"
            );
            let mut prep = std::mem::take(&mut self.prep);
            (held.fns.matmul)(
                self.bytes(),
                held.rows,
                held.blocks_per_row,
                xs,
                &mut prep,
                out,
            );
            self.prep = prep;
        }
    }
}
