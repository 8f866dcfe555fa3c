//! Row dot products and the mat-vec loop: argument checks, and the choice between the
//! AVX2 kernels and the portable ones (made once per process, by CPU detection).

use super::acts::QuantizedActs;
use super::dequant::dequantize_into;
use super::dot_scalar::{self, RowFn};
use crate::format::ggml_type::{GgmlType, QK_K};

/// An instruction-set family of dot kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    Avx2,
    /// The AVX2 kernels, with AVX-512 VNNI band, tile and decoded-row kernels for
    /// prefill where they exist.
    Avx512Vnni,
}

impl Isa {
    /// The fastest family this CPU runs.
    pub(crate) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if super::dot_avx2::Vnni::detect().is_some() {
                return Isa::Avx512Vnni;
            }
            if super::dot_avx2::Avx2::detect().is_some() {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Whether this CPU runs the family.
    #[cfg(test)]
    pub(crate) fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => Isa::best() != Isa::Scalar,
            Isa::Avx512Vnni => Isa::best() == Isa::Avx512Vnni,
        }
    }

    /// The AVX-512 VNNI kernels' proof of CPU support. Panics when the CPU lacks them:
    /// only reached for `Isa::Avx512Vnni`, which [`Isa::best`] gives only where they run.
    #[cfg(target_arch = "x86_64")]
    fn vnni() -> super::dot_avx2::Vnni {
        super::dot_avx2::Vnni::detect().unwrap_or_else(|| {
            panic!("AVX-512 VNNI kernels requested on a CPU without avx512f/bw/vnni")
        })
    }

    /// The band kernel of this family for `wty` weights, where it has one (see
    /// [`matmul_rows`]). Panics when the CPU lacks the family.
    pub(crate) fn band_kernel(self, wty: GgmlType) -> Option<BandFn> {
        match self {
            Isa::Scalar | Isa::Avx2 => None,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::vnni().band_kernel(wty),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni => unreachable!("x86_64 only"),
        }
    }

    /// The decoder and the decoded-row kernel of this family for `wty` weights, where
    /// it has them (see [`super::DecodedRows`]). Panics when the CPU lacks the family.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn decoded_fns(self, wty: GgmlType) -> Option<super::dot_avx2::DecodedFns> {
        match self {
            Isa::Scalar | Isa::Avx2 => None,
            Isa::Avx512Vnni => Isa::vnni().decoded_fns(wty),
        }
    }

    /// The most tokens this family's kernels for `wty` take in one call: [`TILE`] for
    /// the AVX-512 VNNI band and k-quant tiles, `SMALL_TILE` for the others (the AVX2
    /// tiles have 16 registers; the scalar kernels run one token at a time anyway).
    pub(crate) fn tile_limit(self, wty: GgmlType) -> usize {
        match self {
            Isa::Scalar | Isa::Avx2 => SMALL_TILE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                let vnni = Isa::vnni();
                if vnni.band_kernel(wty).is_some() || vnni.k_tile_kernel(wty).is_some() {
                    TILE
                } else {
                    SMALL_TILE
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni => unreachable!("x86_64 only"),
        }
    }

    /// The tiled kernel of this family for `wty` weights, where it has one (see
    /// [`matmul_rows`]). Panics when the CPU lacks the family.
    pub(crate) fn tile_kernel(self, wty: GgmlType) -> Option<TileFn> {
        match self {
            // The portable kernels are the fallback and the tests' second opinion, not a
            // fast path: they run one token at a time.
            Isa::Scalar => None,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                let vnni = Isa::vnni();
                vnni.k_tile_kernel(wty).or(vnni.avx2().tile_kernel(wty))
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512Vnni => unreachable!("x86_64 only"),
            Isa::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                if let Some(avx2) = super::dot_avx2::Avx2::detect() {
                    return avx2.tile_kernel(wty);
                }
                panic!("AVX2 dot kernels requested on a CPU without avx2, fma and f16c")
            }
        }
    }

    /// The row kernel of this family for `wty` weights. Panics when the CPU lacks it.
    pub(crate) fn kernel(self, wty: GgmlType) -> RowFn {
        match self {
            Isa::Scalar => scalar_kernel(wty),
            Isa::Avx2 | Isa::Avx512Vnni => {
                #[cfg(target_arch = "x86_64")]
                if let Some(avx2) = super::dot_avx2::Avx2::detect() {
                    return avx2.kernel(wty);
                }
                panic!("AVX2 dot kernels requested on a CPU without avx2, fma and f16c")
            }
        }
    }
}

fn scalar_kernel(wty: GgmlType) -> RowFn {
    match wty {
        GgmlType::F32 => dot_scalar::f32_,
        GgmlType::F16 => dot_scalar::f16_,
        GgmlType::BF16 => dot_scalar::bf16_,
        GgmlType::Q4_0 => dot_scalar::q4_0,
        GgmlType::Q4_1 => dot_scalar::q4_1,
        GgmlType::Q5_0 => dot_scalar::q5_0,
        GgmlType::Q5_1 => dot_scalar::q5_1,
        GgmlType::Q8_0 => dot_scalar::q8_0,
        GgmlType::Q4K => dot_scalar::q4_k,
        GgmlType::Q5K => dot_scalar::q5_k,
        GgmlType::Q6K => dot_scalar::q6_k,
    }
}

/// Which dot kernels run on this CPU: "avx2+avx512vnni" (AVX2 row kernels, AVX-512
/// VNNI band and tile kernels in [`matmul_rows`] for the simple formats, Q4_K and Q6_K),
/// "avx2" or "scalar".
pub fn kernel_isa() -> &'static str {
    match Isa::best() {
        Isa::Avx512Vnni => "avx2+avx512vnni",
        Isa::Avx2 => "avx2",
        Isa::Scalar => "scalar",
    }
}

/// The byte length of one `wty` row matching `x`; panics when `x` was quantized for
/// another family of weight types.
pub(super) fn row_bytes_for(wty: GgmlType, x: &QuantizedActs) -> usize {
    assert!(
        x.fits(wty),
        "activations were quantized for {:?} weights, not for {wty}; call quantize_acts with {wty}",
        x.layout
    );
    // `quantize_acts` only accepts whole blocks of the layout, which all types sharing
    // the layout have in common, so this size exists.
    wty.bytes_for(x.len() as u64).expect("whole blocks") as usize
}

/// Fast dot product of one weight row (raw bytes, `wty.bytes_for(n)` long) with
/// quantized activations. Runtime-dispatched: AVX2 + FMA kernels when the CPU has them,
/// portable ones otherwise. Panics when the row length or the activations' layout does
/// not match `wty`.
pub fn dot_row(wty: GgmlType, row: &[u8], x: &QuantizedActs) -> f32 {
    dot_row_with(Isa::best(), wty, row, x)
}

pub(crate) fn dot_row_with(isa: Isa, wty: GgmlType, row: &[u8], x: &QuantizedActs) -> f32 {
    let rb = row_bytes_for(wty, x);
    assert_eq!(
        row.len(),
        rb,
        "dot_row: a {wty} row of {} elements takes {rb} bytes",
        x.len()
    );
    isa.kernel(wty)(row, x)
}

/// `out[r]` = dot(row r of `w`, `x`) for every r: `w` is `out.len()` rows of `row_bytes`
/// each. Single-threaded; the caller splits rows across threads. Panics when the sizes
/// do not match `wty` and `x`.
pub fn matvec_rows(wty: GgmlType, w: &[u8], row_bytes: usize, x: &QuantizedActs, out: &mut [f32]) {
    matvec_rows_with(Isa::best(), wty, w, row_bytes, x, out)
}

pub(crate) fn matvec_rows_with(
    isa: Isa,
    wty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &QuantizedActs,
    out: &mut [f32],
) {
    let rb = row_bytes_for(wty, x);
    assert_eq!(
        row_bytes,
        rb,
        "matvec_rows: a {wty} row of {} elements takes {rb} bytes",
        x.len()
    );
    assert_eq!(
        w.len(),
        out.len() * rb,
        "matvec_rows: {} rows of {rb} bytes expected",
        out.len()
    );
    if rb == 0 {
        out.fill(0.0);
        return;
    }
    let kernel = isa.kernel(wty);
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        *o = kernel(row, x);
    }
}

/// The most activation rows [`matmul_rows`] takes in one call: the tile of tokens a
/// decoded weight block is reused for. The AVX-512 VNNI kernels (k-quant tiles, band
/// kernels of the simple formats) take all of them: 32 registers hold 16 accumulators
/// plus the decoded weights, and decoding a block costs about as much as a token's
/// products with it, so eight tokens instead of four cut it per token by half (a 1.5B
/// model's Q4_K prefill by about a tenth). The AVX2 tiles take `SMALL_TILE`, and
/// `matmul_rows` hands them the tile in pieces (see [`Isa::tile_limit`]).
pub const TILE: usize = 8;
/// The most tokens the AVX2 tiles take per call (AVX2 has 16 registers).
pub(super) const SMALL_TILE: usize = 4;

/// A tiled kernel: `out[j]` = dot(`row`, `xs[j]`) for `j < xs.len()`, with
/// `1 <= xs.len() <= TILE` and `out.len() == xs.len()`. Bit-for-bit the row kernel's
/// result for each `j`.
pub(super) type TileFn = fn(&[u8], &[QuantizedActs], &mut [f32]);

/// A band kernel: [`matmul_rows`] itself for `2 <= xs.len() <= TILE` over whole rows of
/// `row_bytes > 0` (the caller checked the sizes), several rows per step. Bit-for-bit
/// the row kernel's result for each (row, token).
pub(super) type BandFn = fn(&[u8], usize, &[QuantizedActs], &mut [f32]);

/// `out[j * rows + r]` = dot(row r of `w`, `xs[j]`) for `j < xs.len()` (at most
/// [`TILE`]), where `w` is `rows = out.len() / xs.len()` rows of `row_bytes` each.
///
/// Each weight block is decoded once for all the activation rows (where the kernel
/// family has tiled kernels: AVX2, quantized weights), instead of once per row as
/// [`matvec_rows`] per token would. The results are bit-for-bit those of
/// [`matvec_rows`] on each activation row alone. Single-threaded; for more tokens the
/// caller loops over tiles, keeping its band of `w` in cache across them. Panics when
/// the sizes do not match `wty` and `xs`.
pub fn matmul_rows(
    wty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xs: &[QuantizedActs],
    out: &mut [f32],
) {
    matmul_rows_with(Isa::best(), wty, w, row_bytes, xs, out)
}

pub(crate) fn matmul_rows_with(
    isa: Isa,
    wty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xs: &[QuantizedActs],
    out: &mut [f32],
) {
    assert!(
        xs.len() <= TILE,
        "matmul_rows: {} activation rows, at most {TILE} per call",
        xs.len()
    );
    let Some(x0) = xs.first() else {
        assert!(out.is_empty(), "matmul_rows: outputs without activations");
        return;
    };
    assert!(
        out.len().is_multiple_of(xs.len()),
        "matmul_rows: {} outputs for {} activation rows",
        out.len(),
        xs.len()
    );
    let rows = out.len() / xs.len();
    for x in xs {
        // Each row's layout is checked, and all must be as long as the first.
        row_bytes_for(wty, x);
        assert_eq!(
            x.len(),
            x0.len(),
            "matmul_rows: activation rows of unequal length"
        );
    }
    if xs.len() == 1 {
        return matvec_rows_with(isa, wty, w, row_bytes, x0, out);
    }
    let rb = row_bytes_for(wty, x0);
    assert_eq!(
        row_bytes,
        rb,
        "matmul_rows: a {wty} row of {} elements takes {rb} bytes",
        x0.len()
    );
    assert_eq!(
        w.len(),
        rows * rb,
        "matmul_rows: {rows} rows of {rb} bytes expected"
    );
    if rb == 0 {
        out.fill(0.0);
        return;
    }
    let limit = isa.tile_limit(wty);
    if xs.len() > limit {
        for (c, xc) in xs.chunks(limit).enumerate() {
            let o = &mut out[c * limit * rows..(c * limit + xc.len()) * rows];
            matmul_rows_with(isa, wty, w, row_bytes, xc, o);
        }
        return;
    }
    if let Some(band) = isa.band_kernel(wty) {
        return band(w, rb, xs, out);
    }
    let Some(tile) = isa.tile_kernel(wty) else {
        for (x, o) in xs.iter().zip(out.chunks_exact_mut(rows)) {
            matvec_rows_with(isa, wty, w, row_bytes, x, o);
        }
        return;
    };
    let mut buf = [0f32; TILE];
    let buf = &mut buf[..xs.len()];
    for (r, row) in w.chunks_exact(rb).enumerate() {
        tile(row, xs, buf);
        for (j, v) in buf.iter().enumerate() {
            out[j * rows + r] = *v;
        }
    }
}

/// Exact reference dot: dequantizes the row block by block into a stack buffer and
/// accumulates in f32 against unquantized activations. This is the precise path (used
/// by correctness tests and a `--precise` mode). Panics when `row` is not `x.len()`
/// elements of `wty`.
pub fn dot_row_exact(wty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let rb = wty.bytes_for(x.len() as u64);
    assert_eq!(
        rb,
        Some(row.len() as u64),
        "dot_row_exact: {} {wty} elements do not fill a {}-byte row",
        x.len(),
        row.len()
    );
    // A multiple of every block length, and a stack buffer small enough to stay in L1.
    const CHUNK: usize = QK_K;
    const LANES: usize = 8;
    let chunk_bytes = CHUNK / wty.block_len() * wty.block_bytes();
    let mut buf = [0f32; CHUNK];
    let mut acc = [0f32; LANES];
    let mut tail = 0f32;
    for (rc, xc) in row.chunks(chunk_bytes).zip(x.chunks(CHUNK)) {
        let w = &mut buf[..xc.len()];
        dequantize_into(wty, rc, w);
        let (ws, xs) = (w.chunks_exact(LANES), xc.chunks_exact(LANES));
        tail += ws
            .remainder()
            .iter()
            .zip(xs.remainder())
            .map(|(w, x)| w * x)
            .sum::<f32>();
        for (w, x) in ws.zip(xs) {
            for k in 0..LANES {
                acc[k] += w[k] * x[k];
            }
        }
    }
    acc.iter().sum::<f32>() + tail
}
