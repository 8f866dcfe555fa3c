//! The device layout of GGML block matrices for `kernels/gemv_qpack.cu`: each block row is
//! repacked once at upload so the kernel reads 16-byte-aligned codes with 16-byte loads and
//! finds each 32-element unit's scales at a fixed stride, with no per-element format switch
//! or division (the file's blocks are 18-210 bytes, only 2-byte aligned as stored).
//!
//! The layout (the kernel file's header says the same): a row of `cols` elements is
//! `cols / 32` units; four arrays, each starting 256-byte aligned in one buffer:
//! - `qs`: 16 bytes a unit, 4-bit codes, byte `i` holding element `i` (low nibble) and
//!   `i + 16` (high); Q8_0 32 bytes of int8 codes in element order;
//! - `qh`: the codes' top bits, 4 bytes a unit (Q5_0, Q5_1, Q5_K: bit `j` is bit 4 of
//!   element `j`) or 8 (Q6_K: bits `2j..2j+2` are bits 4-5 of element `j`);
//! - `sc`: the unit's scale bytes as stored (f16 `d`; f16 `d`, `m`; Q4_K/Q5_K's unpacked
//!   6-bit scale and min; Q6_K's two int8 scales);
//! - `sup`: 4 bytes a 256-element block for the K formats (f16 `d` and `dmin`; Q6_K `d`, 0).
//!
//! Every value is copied, not recomputed, so the kernel's dequantize is the CPU's
//! (`crate::quant::dequantize`) bit for bit; the tests below decode the repacked form with
//! the kernel's arithmetic and compare.

use crate::backend::BackendError;
use crate::format::GgmlType;

/// Elements in one unit (one lane's 16-byte load of 4-bit codes).
pub const UNIT: usize = 32;

/// Whether matrices of `ty` are repacked at upload and run on `gemv_qpack.cu`.
pub fn packs(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Bytes a unit takes in each of the arrays, and a 256-element block in `sup`.
fn unit_bytes(ty: GgmlType) -> (usize, usize, usize, usize) {
    use GgmlType::*;
    let qs = if ty == Q8_0 { 32 } else { 16 };
    let qh = match ty {
        Q5_0 | Q5_1 | Q5K => 4,
        Q6K => 8,
        _ => 0,
    };
    let sc = if matches!(ty, Q4_1 | Q5_1) { 4 } else { 2 };
    let sup = if matches!(ty, Q4K | Q5K | Q6K) { 4 } else { 0 };
    (qs, qh, sc, sup)
}

/// Where the arrays of a repacked `rows x cols` matrix start, and its size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    pub units: usize,
    pub qh: usize,
    pub sc: usize,
    pub sup: usize,
    pub total: usize,
}

fn align256(v: usize) -> Option<usize> {
    v.checked_add(255).map(|v| v & !255)
}

/// The layout of a repacked `rows x cols` matrix of `ty` (cols whole blocks).
pub fn layout(ty: GgmlType, rows: usize, cols: usize) -> Result<PackedLayout, BackendError> {
    let overflow = || BackendError::Device(format!("a {rows} x {cols} {ty} matrix is too large"));
    if !packs(ty) || !cols.is_multiple_of(ty.block_len()) {
        return Err(BackendError::Device(format!(
            "a {rows} x {cols} {ty} matrix cannot be repacked"
        )));
    }
    let (qs, qh, sc, sup) = unit_bytes(ty);
    let units = rows.checked_mul(cols / UNIT).ok_or_else(overflow)?;
    let at = |off: usize, per: usize| {
        units
            .checked_mul(per)
            .and_then(|n| n.checked_add(off))
            .and_then(align256)
            .ok_or_else(overflow)
    };
    let qh_off = at(0, qs)?;
    let sc_off = at(qh_off, qh)?;
    let sup_off = at(sc_off, sc)?;
    // At least one 16-byte word, so that an empty matrix is still a valid buffer.
    let total = at(sup_off, sup)?.max(16);
    Ok(PackedLayout {
        units,
        qh: qh_off,
        sc: sc_off,
        sup: sup_off,
        total,
    })
}

/// The 6-bit scale and min of sub-block `s` of a Q4_K / Q5_K block's 12 scale bytes.
fn k4_scale_min(q: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (q[s] & 63, q[s + 4] & 63)
    } else {
        (
            (q[s + 4] & 0xf) | ((q[s - 4] >> 6) << 4),
            (q[s + 4] >> 4) | ((q[s] >> 6) << 4),
        )
    }
}

/// 32 4-bit codes in element order, packed as `qs` holds them.
fn pack_nibbles(q: &[u8; UNIT]) -> [u8; 16] {
    std::array::from_fn(|i| (q[i] & 0xf) | ((q[i + 16] & 0xf) << 4))
}

/// The matrix whose rows are the rows of `parts` in turn (each whole `cols`-element rows of
/// `ty`, as in the file), repacked; returns the bytes and the number of rows.
pub fn repack(
    ty: GgmlType,
    cols: usize,
    parts: &[&[u8]],
) -> Result<(Vec<u8>, usize), BackendError> {
    let bl = ty.block_len();
    let bb = ty.block_bytes();
    let row_bytes = (cols / bl).checked_mul(bb).filter(|&n| n > 0);
    let row_bytes = match row_bytes {
        Some(n) if cols.is_multiple_of(bl) => n,
        _ => {
            return Err(BackendError::Device(format!(
                "rows of {cols} {ty} elements cannot be repacked"
            )));
        }
    };
    let mut rows = 0usize;
    for p in parts {
        if !p.len().is_multiple_of(row_bytes) {
            return Err(BackendError::Device(format!(
                "{} bytes are not whole rows of {cols} {ty} elements",
                p.len()
            )));
        }
        rows += p.len() / row_bytes;
    }
    let l = layout(ty, rows, cols)?;
    let (qs_b, qh_b, sc_b, _) = unit_bytes(ty);
    let mut out = vec![0u8; l.total];
    let mut g = 0usize; // unit index
    let blocks = parts.iter().flat_map(|p| p.chunks_exact(bb));
    for (bi, b) in blocks.enumerate() {
        let mut put = |g: usize, qs: &[u8], qh: &[u8], sc: &[u8]| {
            out[g * qs_b..g * qs_b + qs.len()].copy_from_slice(qs);
            out[l.qh + g * qh_b..l.qh + g * qh_b + qh.len()].copy_from_slice(qh);
            out[l.sc + g * sc_b..l.sc + g * sc_b + sc.len()].copy_from_slice(sc);
        };
        use GgmlType::*;
        match ty {
            // The simple formats already keep their codes in the unit's order.
            Q4_0 => put(g, &b[2..18], &[], &b[0..2]),
            Q4_1 => put(g, &b[4..20], &[], &b[0..4]),
            Q5_0 => put(g, &b[6..22], &b[2..6], &b[0..2]),
            Q5_1 => put(g, &b[8..24], &b[4..8], &b[0..4]),
            Q8_0 => put(g, &b[2..34], &[], &b[0..2]),
            Q4K | Q5K => {
                let (qs, qh) = if ty == Q4K {
                    (&b[16..144], None)
                } else {
                    (&b[48..176], Some(&b[16..48]))
                };
                for s in 0..8 {
                    let (c, shift) = (s / 2, 4 * (s % 2));
                    let q: [u8; UNIT] = std::array::from_fn(|i| (qs[32 * c + i] >> shift) & 0xf);
                    let hbits = qh.map_or(0u32, |qh| {
                        (0..UNIT).fold(0, |m, i| m | (u32::from((qh[i] >> s) & 1) << i))
                    });
                    let (sc, mn) = k4_scale_min(&b[4..16], s);
                    let hb = hbits.to_le_bytes();
                    put(g + s, &pack_nibbles(&q), &hb[..qh_b], &[sc, mn]);
                }
            }
            Q6K => {
                let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                for v in 0..8 {
                    let (h, k) = (v / 4, v % 4);
                    let lo: [u8; UNIT] = std::array::from_fn(|i| {
                        (ql[64 * h + 32 * (k % 2) + i] >> (4 * (k / 2))) & 0xf
                    });
                    let hi = (0..UNIT).fold(0u64, |m, i| {
                        m | (u64::from((qh[32 * h + i] >> (2 * k)) & 3) << (2 * i))
                    });
                    put(
                        g + v,
                        &pack_nibbles(&lo),
                        &hi.to_le_bytes(),
                        &scales[2 * v..2 * v + 2],
                    );
                }
            }
            F32 | F16 | BF16 => unreachable!("layout() refuses float formats"),
        }
        if matches!(ty, Q4K | Q5K | Q6K) {
            let sup = if ty == Q6K {
                [b[208], b[209], 0, 0]
            } else {
                [b[0], b[1], b[2], b[3]]
            };
            out[l.sup + 4 * bi..l.sup + 4 * bi + 4].copy_from_slice(&sup);
        }
        g += bl / UNIT;
    }
    Ok((out, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};

    fn f16(lo: u8, hi: u8) -> f32 {
        half::f16::from_le_bytes([lo, hi]).to_f32()
    }

    /// The repacked matrix decoded with gemv_qpack.cu's arithmetic (decode4 / unit_scales).
    fn decode(ty: GgmlType, rows: usize, cols: usize, buf: &[u8]) -> Vec<f32> {
        use GgmlType::*;
        let l = layout(ty, rows, cols).unwrap();
        let (qs_b, qh_b, sc_b, _) = unit_bytes(ty);
        let mut out = Vec::with_capacity(rows * cols);
        for g in 0..l.units {
            let qs = &buf[g * qs_b..(g + 1) * qs_b];
            let qh = &buf[l.qh + g * qh_b..l.qh + (g + 1) * qh_b];
            let sc = &buf[l.sc + g * sc_b..l.sc + (g + 1) * sc_b];
            let sup = buf.get(l.sup + 4 * (g / 8)..).unwrap_or(&[]);
            let (a, b) = match ty {
                Q4K | Q5K => (
                    f16(sup[0], sup[1]) * f32::from(sc[0]),
                    f16(sup[2], sup[3]) * f32::from(sc[1]),
                ),
                Q6K => (
                    f16(sup[0], sup[1]) * f32::from(sc[0] as i8),
                    f16(sup[0], sup[1]) * f32::from(sc[1] as i8),
                ),
                Q4_1 | Q5_1 => (f16(sc[0], sc[1]), f16(sc[2], sc[3])),
                _ => (f16(sc[0], sc[1]), 0.0),
            };
            for j in 0..UNIT {
                if ty == Q8_0 {
                    out.push(f32::from(qs[j] as i8) * a);
                    continue;
                }
                let mut q = i32::from((qs[j % 16] >> (4 * (j / 16))) & 0xf);
                if qh_b == 4 {
                    q |= i32::from((qh[j / 8] >> (j % 8)) & 1) << 4;
                }
                if ty == Q6K {
                    q |= i32::from((qh[j / 4] >> (2 * (j % 4))) & 3) << 4;
                }
                out.push(match ty {
                    Q4_0 => (q - 8) as f32 * a,
                    Q5_0 => (q - 16) as f32 * a,
                    Q4_1 | Q5_1 => q as f32 * a + b,
                    Q6K => (if j < 16 { a } else { b }) * (q - 32) as f32,
                    _ => a * q as f32 - b,
                });
            }
        }
        out
    }

    const TYPES: [GgmlType; 8] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    /// Quantized rows of random values, and raw random bytes (every code and scale bit
    /// pattern, NaN and infinite f16 scales included).
    fn inputs(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> [Vec<u8>; 2] {
        let mut s = seed;
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| (lcg(&mut s) % 20_001) as f32 / 10_000.0 - 1.0)
            .collect();
        let raw = (0..rows * cols / ty.block_len() * ty.block_bytes())
            .map(|_| lcg(&mut s) as u8)
            .collect();
        [quantize(ty, &x), raw]
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn repacked_rows_decode_to_the_cpu_dequantize_bit_for_bit() {
        for ty in TYPES {
            let bl = ty.block_len();
            for &(rows, blocks) in &[(1usize, 1usize), (3, 2), (5, 3)] {
                let cols = blocks * bl;
                for bytes in inputs(ty, rows, cols, (rows * 31 + cols) as u64) {
                    let mut want = vec![0.0; rows * cols];
                    dequantize(ty, &bytes, &mut want).unwrap();
                    let (buf, r) = repack(ty, cols, &[&bytes]).unwrap();
                    assert_eq!(r, rows);
                    assert_eq!(buf.len(), layout(ty, rows, cols).unwrap().total);
                    let got = decode(ty, rows, cols, &buf);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(same(*g, *w), "{ty} {rows}x{cols} element {i}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn stacked_parts_repack_as_one_matrix() {
        for ty in TYPES {
            let cols = 2 * ty.block_len();
            let [a, _] = inputs(ty, 3, cols, 7);
            let [b, _] = inputs(ty, 2, cols, 8);
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            assert_eq!(
                repack(ty, cols, &[&a, &b]).unwrap(),
                repack(ty, cols, &[&whole]).unwrap()
            );
        }
    }

    #[test]
    fn arrays_are_aligned_and_bad_sizes_are_errors() {
        for ty in TYPES {
            let l = layout(ty, 3, ty.block_len()).unwrap();
            assert!([l.qh, l.sc, l.sup].iter().all(|o| o % 256 == 0), "{ty}");
            let row = ty.block_bytes();
            // Part of a row, and rows not whole blocks.
            assert!(repack(ty, ty.block_len(), &[&vec![0; row + 1]]).is_err());
            assert!(repack(ty, ty.block_len() + 1, &[&vec![0; row]]).is_err());
            assert!(repack(ty, 0, &[&[]]).is_err());
            assert!(layout(ty, usize::MAX, ty.block_len()).is_err());
        }
        assert!(layout(GgmlType::BF16, 1, 32).is_err());
    }
}
