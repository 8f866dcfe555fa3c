//! Reference dequantizers: GGML block bytes to f32, one format at a time.
//!
//! These are the ground truth the fast dot products are tested against, so they are
//! written for clarity and follow the arithmetic of GGML's `dequantize_row_*` exactly
//! (same operand order, no fused multiply-add), which makes them bit-identical to other
//! faithful implementations such as the `gguf` Python package.

use super::blocks::{self, QK, f16_at, k4_scales_mins, u32_at};
use super::error::QuantError;
use crate::format::ggml_type::{GgmlType, QK_K};
use crate::format::{ModelError, Weight};

/// Reference dequantizer: `src` must hold exactly `ty.bytes_for(dst.len())` bytes.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    let expected = QuantError::bytes_for(ty, n)?;
    if src.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            n,
            expected,
            got: src.len(),
        });
    }
    dequantize_into(ty, src, dst);
    Ok(())
}

/// [`dequantize`] without the length check: the caller guarantees the sizes agree
/// (a mismatch only drops trailing elements, it is never unsafe).
pub(super) fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(ty.bytes_for(dst.len() as u64), Some(src.len() as u64));
    let bb = ty.block_bytes();
    match ty {
        // The float formats are the file format's own business.
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            ty.widen_floats(src, dst);
        }
        GgmlType::Q4_0 => for_blocks::<QK>(src, bb, dst, q4_0),
        GgmlType::Q4_1 => for_blocks::<QK>(src, bb, dst, q4_1),
        GgmlType::Q5_0 => for_blocks::<QK>(src, bb, dst, q5_0),
        GgmlType::Q5_1 => for_blocks::<QK>(src, bb, dst, q5_1),
        GgmlType::Q8_0 => for_blocks::<QK>(src, bb, dst, q8_0),
        GgmlType::Q4K => for_blocks::<QK_K>(src, bb, dst, q4_k),
        GgmlType::Q5K => for_blocks::<QK_K>(src, bb, dst, q5_k),
        GgmlType::Q6K => for_blocks::<QK_K>(src, bb, dst, q6_k),
    }
}

fn for_blocks<const N: usize>(src: &[u8], bb: usize, dst: &mut [f32], f: fn(&[u8], &mut [f32; N])) {
    for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(N)) {
        f(b, y.try_into().expect("chunk of N"));
    }
}

/// 4-bit codes of a simple block: byte j holds element j (low nibble) and j + 16 (high).
#[inline]
fn nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0xf;
        q[j + QK / 2] = qs[j] >> 4;
    }
    q
}

/// 5-bit codes of a Q5 block: the nibbles plus bit j of `qh` as bit 4 of element j.
#[inline]
fn nibbles5(qs: &[u8], qh: u32) -> [u8; QK] {
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as u8;
    }
    q
}

fn q4_0(b: &[u8], y: &mut [f32; QK]) {
    use blocks::q4_0::*;
    let d = f16_at(b, D);
    for (y, q) in y.iter_mut().zip(nibbles(&b[QS..QS + QK / 2])) {
        *y = (i32::from(q) - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32; QK]) {
    use blocks::q4_1::*;
    let (d, m) = (f16_at(b, D), f16_at(b, M));
    for (y, q) in y.iter_mut().zip(nibbles(&b[QS..QS + QK / 2])) {
        *y = f32::from(q) * d + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32; QK]) {
    use blocks::q5_0::*;
    let d = f16_at(b, D);
    for (y, q) in y
        .iter_mut()
        .zip(nibbles5(&b[QS..QS + QK / 2], u32_at(b, QH)))
    {
        *y = (i32::from(q) - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32; QK]) {
    use blocks::q5_1::*;
    let (d, m) = (f16_at(b, D), f16_at(b, M));
    for (y, q) in y
        .iter_mut()
        .zip(nibbles5(&b[QS..QS + QK / 2], u32_at(b, QH)))
    {
        *y = f32::from(q) * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32; QK]) {
    use blocks::q8_0::*;
    let d = f16_at(b, D);
    for (y, &q) in y.iter_mut().zip(&b[QS..QS + QK]) {
        *y = f32::from(q as i8) * d;
    }
}

/// Q4_K and Q5_K share everything but the 5th bit: four chunks of 64 elements, chunk c
/// taking sub-block 2c from the low nibbles of `qs[32c..32c + 32]` and 2c + 1 from the
/// high nibbles; with `qh`, sub-block s takes its 5th bit from bit s of `qh[l]`.
fn k_quant_4_5(b: &[u8], qs: &[u8], qh: Option<&[u8]>, y: &mut [f32; QK_K]) {
    use blocks::q4_k::{D, DMIN, SCALES};
    let (d, dmin) = (f16_at(b, D), f16_at(b, DMIN));
    let (sc, mn) = k4_scales_mins(&b[SCALES..SCALES + 12]);
    let (sc, mn) = (sc.to_le_bytes(), mn.to_le_bytes());
    for s in 0..8 {
        let (c, shift) = (s / 2, 4 * (s % 2));
        let d1 = d * f32::from(sc[s]);
        let m1 = dmin * f32::from(mn[s]);
        for l in 0..32 {
            let mut q = (qs[32 * c + l] >> shift) & 0xf;
            if let Some(qh) = qh {
                q |= ((qh[l] >> s) & 1) << 4;
            }
            y[32 * s + l] = d1 * f32::from(q) - m1;
        }
    }
}

fn q4_k(b: &[u8], y: &mut [f32; QK_K]) {
    use blocks::q4_k::QS;
    k_quant_4_5(b, &b[QS..QS + QK_K / 2], None, y);
}

fn q5_k(b: &[u8], y: &mut [f32; QK_K]) {
    use blocks::q5_k::{QH, QS};
    k_quant_4_5(b, &b[QS..QS + QK_K / 2], Some(&b[QH..QH + QK_K / 8]), y);
}

fn q6_k(b: &[u8], y: &mut [f32; QK_K]) {
    use blocks::q6_k::*;
    let d = f16_at(b, D);
    // Two halves of 128 elements. In half h, element 32k + l (k = 0..4) takes its low
    // nibble from ql[64h + 32(k % 2) + l] (low nibble for k < 2, high for k >= 2) and
    // its top two bits from bits 2k..2k+2 of qh[32h + l]; each 16 elements share scale.
    for h in 0..2 {
        let ql = &b[QL + 64 * h..QL + 64 * h + 64];
        let qh = &b[QH + 32 * h..QH + 32 * h + 32];
        for k in 0..4 {
            for l in 0..32 {
                let lo = (ql[32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
                let hi = (qh[l] >> (2 * k)) & 3;
                let q = i32::from(lo | (hi << 4)) - 32;
                let e = 128 * h + 32 * k + l;
                let sc = f32::from(b[SCALES + e / 16] as i8);
                y[e] = d * sc * q as f32;
            }
        }
    }
}

/// Dequantizing a [`Weight`] of any format (the file layer only widens float formats).
pub trait DequantizeWeight {
    /// Dequantize one row into `out` (`cols` long).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError>;
    /// The whole tensor as f32.
    fn to_f32(&self) -> Result<Vec<f32>, ModelError>;
}

impl DequantizeWeight for Weight {
    fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        dequantize(self.ty, self.row(r), out).map_err(|e| ModelError::Tensor {
            name: self.name.clone(),
            msg: e.to_string(),
        })
    }

    fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0; self.rows * self.cols];
        dequantize(self.ty, self.bytes(), &mut out).map_err(|e| ModelError::Tensor {
            name: self.name.clone(),
            msg: e.to_string(),
        })?;
        Ok(out)
    }
}
