//! Tiled kernels (`matmul_rows`) against the one-token kernels and an f64 reference.
//!
//! The tiled kernels promise the one-token kernels' results bit for bit, so that is
//! checked exactly, for every tile size and every (row, token); the outputs start as
//! NaN, so a slot a kernel forgot fails. As a check independent of the one-token
//! kernels, each result is also held against an f64 dot of the dequantized weights
//! with the activations as quantized: both compute the same real number, so they may
//! differ by f32 rounding only (the bound of `dot.rs`'s second test).

use super::super::acts::{ActLayout, QuantizedActs, quantize_acts};
use super::super::dequant::dequantize_into;
use super::super::dot::{Isa, TILE, dot_row_with, matmul_rows_with};
use super::super::quantize;
use super::{Rng, random_acts, random_row};
use crate::format::GgmlType;

fn isas() -> Vec<Isa> {
    let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];
    for isa in all.iter().filter(|i| !i.available()) {
        eprintln!("skipped: this CPU does not run the {isa:?} kernels");
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx2")
    {
        assert!(Isa::Avx512Vnni.available());
    }
    all.into_iter().filter(|i| i.available()).collect()
}

/// The activations exactly as the fast kernels see them.
fn dequantized_acts(a: &QuantizedActs) -> Vec<f32> {
    match a.layout {
        ActLayout::F32 => a.f.clone(),
        ActLayout::Q8x32 | ActLayout::Q8K => {
            let bl = a.n / a.d.len().max(1);
            a.qs.iter()
                .enumerate()
                .map(|(i, &q)| a.d[i / bl] * f32::from(q))
                .collect()
        }
    }
}

/// Weights of `rows` rows of `n`: random bytes (every code and scale pattern) for some
/// rows, the project's quantizer on random values for the others.
fn weights(ty: GgmlType, rows: usize, n: usize, rng: &mut Rng) -> Vec<u8> {
    (0..rows)
        .flat_map(|r| {
            if r % 2 == 0 {
                random_row(ty, n, rng)
            } else {
                quantize(ty, &random_acts(n, rng))
            }
        })
        .collect()
}

#[test]
fn tiles_of_one_to_eight_tokens_match_the_one_token_kernels_bit_for_bit() {
    let mut rng = Rng::new(17);
    for isa in isas() {
        for ty in GgmlType::ALL {
            let unit = if ty.is_quantized() {
                ty.block_len()
            } else {
                37
            };
            for blocks in [1, 2, 3, 5] {
                let n = blocks * unit;
                let rows = 3;
                let w = weights(ty, rows, n, &mut rng);
                let rb = w.len() / rows;
                let mut deq = vec![f32::NAN; rows * n];
                dequantize_into(ty, &w, &mut deq);
                for t in 1..=TILE {
                    let xs: Vec<QuantizedActs> = (0..t)
                        .map(|_| {
                            let mut a = QuantizedActs::new();
                            quantize_acts(ty, &random_acts(n, &mut rng), &mut a);
                            a
                        })
                        .collect();
                    let mut out = vec![f32::NAN; t * rows];
                    matmul_rows_with(isa, ty, &w, rb, &xs, &mut out);
                    for (j, x) in xs.iter().enumerate() {
                        let x_hat = dequantized_acts(x);
                        for r in 0..rows {
                            let got = out[j * rows + r];
                            let want = dot_row_with(isa, ty, &w[r * rb..(r + 1) * rb], x);
                            let at = format!("{isa:?} {ty} n={n} tile {t}: token {j} row {r}");
                            assert!(!got.is_nan() && !want.is_nan(), "{at}: NaN");
                            assert_eq!(got.to_bits(), want.to_bits(), "{at}: {got} vs {want}");

                            let wr = &deq[r * n..(r + 1) * n];
                            let exact: f64 = wr
                                .iter()
                                .zip(&x_hat)
                                .map(|(&w, &x)| f64::from(w) * f64::from(x))
                                .sum();
                            let wmax = wr.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let slack = 1e-4 * wmax * x_hat.iter().map(|v| v.abs()).sum::<f32>();
                            assert!(
                                (f64::from(got) - exact).abs() <= f64::from(slack),
                                "{at}: {got} vs f64 {exact}, bound {slack}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_nan_token_poisons_only_its_own_outputs() {
    let mut rng = Rng::new(19);
    for isa in isas() {
        for ty in GgmlType::ALL {
            let n = 2 * ty.block_len().max(32);
            let rows = 2;
            let w = weights(ty, rows, n, &mut rng);
            let rb = w.len() / rows;
            let xs: Vec<QuantizedActs> = (0..TILE)
                .map(|j| {
                    let mut x = random_acts(n, &mut rng);
                    if j == 2 {
                        x[n - 5] = f32::NAN;
                    }
                    let mut a = QuantizedActs::new();
                    quantize_acts(ty, &x, &mut a);
                    a
                })
                .collect();
            let mut out = vec![0.0; TILE * rows];
            matmul_rows_with(isa, ty, &w, rb, &xs, &mut out);
            for j in 0..TILE {
                for r in 0..rows {
                    let v = out[j * rows + r];
                    assert_eq!(v.is_nan(), j == 2, "{isa:?} {ty} token {j} row {r}: {v}");
                }
            }
        }
    }
}

#[test]
fn empty_tiles_and_rows() {
    for ty in [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::F32] {
        for isa in isas() {
            matmul_rows_with(isa, ty, &[], 0, &[], &mut []);
            let mut xs = vec![QuantizedActs::new(); 3];
            for x in &mut xs {
                quantize_acts(ty, &[], x);
            }
            let mut out = [f32::NAN; 6];
            matmul_rows_with(isa, ty, &[], 0, &xs, &mut out);
            assert_eq!(out, [0.0; 6]);
        }
    }
}

#[test]
#[should_panic(expected = "at most 8 per call")]
fn tiles_of_more_than_eight_are_refused() {
    let mut a = QuantizedActs::new();
    quantize_acts(GgmlType::Q8_0, &[1.0; 32], &mut a);
    let xs = vec![a; TILE + 1];
    let mut out = [0.0; TILE + 1];
    matmul_rows_with(Isa::best(), GgmlType::Q8_0, &[0; 34], 34, &xs, &mut out);
}

/// The band kernels step over groups of rows: row counts below, at and past a group
/// (and their remainders), odd and even block counts (the odd last block takes a path
/// of its own), checked bit for bit against the one-token kernels, with a NaN token
/// that must poison only its own outputs.
#[test]
fn bands_of_many_rows_match_the_one_token_kernels_bit_for_bit() {
    let mut rng = Rng::new(23);
    for isa in isas() {
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            for blocks in [1, 2, 3, 4, 7] {
                let n = blocks * ty.block_len();
                for rows in [1, 3, 4, 5, 8, 9, 13] {
                    let w = weights(ty, rows, n, &mut rng);
                    let rb = w.len() / rows;
                    for t in 2..=TILE {
                        let nan_at = (rows + t) % (t + 1);
                        let xs: Vec<QuantizedActs> = (0..t)
                            .map(|j| {
                                let mut x = random_acts(n, &mut rng);
                                if j == nan_at {
                                    x[rng.below(n)] = f32::NAN;
                                }
                                let mut a = QuantizedActs::new();
                                quantize_acts(ty, &x, &mut a);
                                a
                            })
                            .collect();
                        let mut out = vec![f32::NAN; t * rows];
                        matmul_rows_with(isa, ty, &w, rb, &xs, &mut out);
                        for (j, x) in xs.iter().enumerate() {
                            for r in 0..rows {
                                let got = out[j * rows + r];
                                let want = dot_row_with(isa, ty, &w[r * rb..(r + 1) * rb], x);
                                let at = format!(
                                    "{isa:?} {ty} n={n} rows {rows} tile {t}: token {j} row {r}"
                                );
                                assert_eq!(got.is_nan(), j == nan_at, "{at}: {got}");
                                assert_eq!(got.to_bits(), want.to_bits(), "{at}: {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Rows decoded once (`DecodedRows`) give `matmul_rows`'s results bit for bit: every
/// format with a decoded form, odd and even block counts, row counts around a group
/// (of 4 rows, or the K formats' 16 side by side),
/// 1 to 8 tokens, a NaN token poisoning only its own outputs. Formats without one are
/// refused, and a refused decode leaves nothing of the one before.
#[test]
fn decoded_rows_match_the_band_kernels_bit_for_bit() {
    use super::super::decoded::DecodedRows;
    let mut rng = Rng::new(29);
    let mut decoded = DecodedRows::new();
    for isa in isas() {
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let n = 3 * ty.block_len();
            let w = weights(ty, 5, n, &mut rng);
            let rb = w.len() / 5;
            let simple = matches!(
                ty,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
            );
            let side_by_side = matches!(ty, GgmlType::Q4K | GgmlType::Q6K);
            let has = decoded.decode_with(isa, ty, &w, rb);
            assert_eq!(
                has,
                (simple || side_by_side) && isa == Isa::Avx512Vnni,
                "{isa:?} {ty}"
            );
            if !has {
                continue;
            }
            // The K formats decode 16 rows side by side: counts around one and two groups.
            let (block_counts, row_counts): (&[usize], &[usize]) = if side_by_side {
                (&[1, 2, 3], &[1, 5, 15, 16, 17, 33])
            } else {
                (&[1, 2, 3, 4, 7], &[1, 3, 4, 5, 8, 9])
            };
            for &blocks in block_counts {
                let n = blocks * ty.block_len();
                for &rows in row_counts {
                    let w = weights(ty, rows, n, &mut rng);
                    let rb = w.len() / rows;
                    assert!(decoded.decode_with(isa, ty, &w, rb));
                    for t in 1..=TILE {
                        let nan_at = (rows + t) % (t + 1);
                        let xs: Vec<QuantizedActs> = (0..t)
                            .map(|j| {
                                let mut x = random_acts(n, &mut rng);
                                if j == nan_at {
                                    x[rng.below(n)] = f32::NAN;
                                }
                                let mut a = QuantizedActs::new();
                                quantize_acts(ty, &x, &mut a);
                                a
                            })
                            .collect();
                        let mut got = vec![f32::NAN; t * rows];
                        decoded.matmul_rows(&xs, &mut got);
                        let mut want = vec![f32::NAN; t * rows];
                        matmul_rows_with(isa, ty, &w, rb, &xs, &mut want);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            let at = format!(
                                "{isa:?} {ty} n={n} rows {rows} tile {t}: token {} row {}",
                                i / rows,
                                i % rows
                            );
                            assert_eq!(g.is_nan(), i / rows == nan_at, "{at}: {g}");
                            assert_eq!(g.to_bits(), w.to_bits(), "{at}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
    // A refused decode drops what was decoded before.
    let ty = GgmlType::Q5K;
    let w = weights(ty, 2, 256, &mut rng);
    assert!(!decoded.decode_with(Isa::best(), ty, &w, w.len() / 2));
    let x = {
        let mut a = QuantizedActs::new();
        quantize_acts(ty, &random_acts(256, &mut rng), &mut a);
        a
    };
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decoded.matmul_rows(std::slice::from_ref(&x), &mut [0.0; 2]);
    }));
    assert!(refused.is_err(), "matmul_rows after a refused decode");
}
