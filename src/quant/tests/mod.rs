//! Correctness tests of the quant module: dequantizers against the `gguf` package's,
//! fast dot products against the exact one (on both kernel families), and quantizer
//! round trips.

mod dot;
mod fixtures;
mod roundtrip;
mod tile;

use half::f16;

use super::blocks;
use crate::format::ggml_type::GgmlType;

/// Small deterministic generator (SplitMix64), enough for test data.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly standard normal (sum of uniforms), cheap and bounded.
    pub(super) fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.732 - 3.464
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Offsets of the f16 scale fields in one block of each quantized format.
pub(super) fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 => &[blocks::q4_0::D],
        GgmlType::Q4_1 => &[blocks::q4_1::D, blocks::q4_1::M],
        GgmlType::Q5_0 => &[blocks::q5_0::D],
        GgmlType::Q5_1 => &[blocks::q5_1::D, blocks::q5_1::M],
        GgmlType::Q8_0 => &[blocks::q8_0::D],
        GgmlType::Q4K => &[blocks::q4_k::D, blocks::q4_k::DMIN],
        GgmlType::Q5K => &[blocks::q5_k::D, blocks::q5_k::DMIN],
        GgmlType::Q6K => &[blocks::q6_k::D],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

/// A row of `n` elements of `ty`: random bytes (every code and scale pattern occurs)
/// with the f16 scale fields set to finite values of either sign in [1e-3, 0.5);
/// float formats get random finite values.
pub(super) fn random_row(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| rng.normal().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.normal()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(rng.normal()).to_le_bytes())
            .collect(),
        _ => {
            let bytes = ty.bytes_for(n as u64).unwrap() as usize;
            let mut row: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
            for block in row.chunks_exact_mut(ty.block_bytes()) {
                for &off in f16_fields(ty) {
                    let mag = (1e-3f32.ln() + rng.uniform() * (0.5f32 / 1e-3).ln()).exp();
                    let v = if rng.below(2) == 0 { mag } else { -mag };
                    block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            row
        }
    }
}

/// Activations with a spread of magnitudes: mostly normal, some larger outliers,
/// and the odd exact zero.
pub(super) fn random_acts(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(20) {
            0 => rng.normal() * 8.0,
            1 => 0.0,
            _ => rng.normal(),
        })
        .collect()
}
