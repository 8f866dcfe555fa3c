//! `quantize` then `dequantize`: the error of every element stays within what the
//! format's round-to-nearest allows, as a fraction of the largest magnitude in its block
//! (its super-block for the k-quants). The fractions, with their reasoning:
//!
//! - Q8_0: half a step of max/127, plus the f16 rounding of the scale: 1/254 + 2^-11.
//! - Q4_0 / Q5_0: the largest-magnitude element maps to code -8 (-16) exactly; one on
//!   the opposite side clips at +7 (+15), a full step of max/8 (max/16) away.
//! - Q4_1 / Q5_1: half a step of (max - min)/15 (/31), the range being at most 2 max.
//! - Q4_K / Q5_K: half a sub-block step (range/15 or /31) plus what the 6-bit scale and
//!   min grids add: up to 15 (31) codes times half a scale grid step, max/63/2 of the
//!   largest sub-block scale, and half a min grid step.
//! - Q6_K: as Q4_0 within each 16 elements (max/32), plus 32 codes times half a step
//!   of the 8-bit scale grid.
//!
//! The bounds carry a small margin for f16 rounding of the super-block scales.

use super::super::{dequantize, quantize};
use super::Rng;
use crate::format::GgmlType;

fn bound(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1.0 / 2048.0,
        GgmlType::BF16 => 1.0 / 256.0,
        GgmlType::Q8_0 => 1.0 / 254.0 + 1.0 / 2048.0,
        GgmlType::Q4_0 => 1.0 / 8.0 * 1.01,
        GgmlType::Q5_0 => 1.0 / 16.0 * 1.01,
        GgmlType::Q4_1 => 2.0 / 30.0 * 1.01,
        GgmlType::Q5_1 => 2.0 / 62.0 * 1.01,
        GgmlType::Q4K => (1.0 / 15.0 + 15.0 * 2.0 / 15.0 / 126.0 + 1.0 / 126.0) * 1.02,
        GgmlType::Q5K => (1.0 / 31.0 + 31.0 * 2.0 / 31.0 / 126.0 + 1.0 / 126.0) * 1.02,
        // Half a step of 32 codes, plus the 8-bit sub-block scale's rounding (1/254 of the
        // largest scale, times the largest code over 32).
        GgmlType::Q6K => (1.0 / 32.0 + 1.0 / 254.0) * 1.02,
    }
}

/// Test signals, one super-block (256) each: plain noise, noise with outliers, all
/// positive, all negative, a constant, zeros, a ramp, and mixed tiny and large blocks.
fn signals(rng: &mut Rng) -> Vec<Vec<f32>> {
    let mut s = Vec::new();
    for scale in [1e-3f32, 1.0, 300.0] {
        s.push((0..256).map(|_| rng.normal() * scale).collect());
        s.push(
            (0..256)
                .map(|_| {
                    if rng.below(50) == 0 {
                        rng.normal() * 20.0 * scale
                    } else {
                        rng.normal() * scale
                    }
                })
                .collect(),
        );
    }
    s.push((0..256).map(|_| 1.0 + rng.uniform()).collect());
    s.push((0..256).map(|_| -3.0 - rng.uniform()).collect());
    s.push(vec![0.75; 256]);
    s.push(vec![0.0; 256]);
    s.push((0..256).map(|i| i as f32 / 64.0 - 2.0).collect());
    s.push(
        (0..256)
            .map(|i| {
                if (i / 32) % 2 == 0 {
                    rng.normal() * 1e-3
                } else {
                    rng.normal() * 10.0
                }
            })
            .collect(),
    );
    s
}

#[test]
fn quantize_dequantize_round_trip_error_is_bounded() {
    let mut rng = Rng::new(3);
    for ty in GgmlType::ALL {
        let bl = ty.block_len().max(32);
        let mut worst = 0f32;
        for x in signals(&mut rng) {
            let q = quantize(ty, &x);
            assert_eq!(
                q.len() as u64,
                ty.bytes_for(x.len() as u64).unwrap(),
                "{ty}"
            );
            let mut y = vec![f32::NAN; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            for (xb, yb) in x.chunks(bl).zip(y.chunks(bl)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    let err = (a - b).abs();
                    assert!(
                        err <= bound(ty) * amax,
                        "{ty}: {a} came back as {b} (block max {amax})"
                    );
                    if amax > 0.0 {
                        worst = worst.max(err / amax);
                    }
                }
            }
        }
        // The bound should also be near what happens, or it tests nothing.
        if ty.is_quantized() {
            assert!(
                worst > 0.25 * bound(ty),
                "{ty}: worst {worst} far below bound {}",
                bound(ty)
            );
        }
        eprintln!(
            "{ty}: worst error {worst:.5} of block max (bound {:.5})",
            bound(ty)
        );
    }
}

#[test]
#[should_panic(expected = "not a whole number")]
fn quantize_refuses_partial_blocks() {
    quantize(GgmlType::Q4K, &[0.0; 100]);
}
