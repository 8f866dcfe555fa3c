//! Fast dot products (both kernel families) against the exact reference dot.
//!
//! Two bounds, each with its reason:
//!
//! 1. Against `dot_row_exact(row, x)` on the original activations. The fast path's
//!    only approximation is rounding each activation to its block's int8 grid, an error
//!    of at most d_b / 2 per element (d_b = the block's scale, max|x| / 127), so
//!    |fast - exact| <= sum_i |w_i| * d_b(i) / 2, plus f32 rounding. This is the
//!    worst case of the activation quantization, not a guess: it holds for every row.
//!    On typical data it is about 1% of sum |w_i * x_i|.
//! 2. Against `dot_row_exact(row, x_hat)` on the activations as quantized (x_hat_i =
//!    d_b * q_i). Now both sides compute the same real number, the fast one with exact
//!    integer block sums, so they differ by f32 rounding only: a relative 1e-4 of
//!    sum |x_hat_i| * max|w|, which bounds the size of every product and partial sum
//!    the kernels form (weights with offsets are split into d*q and m terms, neither
//!    larger than about 2 max|w|). This is the sharp test: one wrong sub-block scale or
//!    swapped nibble moves the result far past it, while bound 1 could hide it.
//!
//! A NaN result fails both (every comparison with NaN is false).

use super::super::acts::{ActLayout, QuantizedActs, quantize_acts};
use super::super::dequant::dequantize_into;
use super::super::dot::{Isa, dot_row_with, matvec_rows_with};
use super::super::dot_row_exact;
use super::{Rng, random_acts, random_row};
use crate::format::GgmlType;

fn isas() -> Vec<Isa> {
    let isas: Vec<Isa> = [Isa::Scalar, Isa::Avx2]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    if !isas.contains(&Isa::Avx2) {
        eprintln!("note: this CPU has no avx2+fma+f16c; only the scalar kernels were tested");
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        assert!(isas.contains(&Isa::Avx2));
    }
    isas
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

/// Per-element bound on the activation rounding: half the element's block scale.
fn act_rounding(a: &QuantizedActs) -> Vec<f32> {
    match a.layout {
        ActLayout::F32 => vec![0.0; a.n],
        ActLayout::Q8x32 | ActLayout::Q8K => {
            let bl = a.n / a.d.len().max(1);
            (0..a.n).map(|i| a.d[i / bl] * 0.5).collect()
        }
    }
}

/// Row lengths to try: 1..=13 blocks (odd counts exercise the kernels' pair loops);
/// for the float formats, lengths that are no multiple of the 32-wide SIMD step.
fn lengths(ty: GgmlType) -> Vec<usize> {
    let unit = if ty.is_quantized() {
        ty.block_len()
    } else {
        37
    };
    (1..=13).map(|k| k * unit).collect()
}

#[test]
fn fast_dot_matches_exact_dot_on_both_kernel_families() {
    let mut rng = Rng::new(7);
    let mut acts = QuantizedActs::new();
    for isa in isas() {
        for ty in GgmlType::ALL {
            for n in lengths(ty) {
                for _ in 0..4 {
                    let row = random_row(ty, n, &mut rng);
                    let x = random_acts(n, &mut rng);
                    quantize_acts(ty, &x, &mut acts);
                    let fast = dot_row_with(isa, ty, &row, &acts);

                    let mut w = vec![f32::NAN; n];
                    dequantize_into(ty, &row, &mut w);
                    let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let x_hat = dequantized_acts(&acts);
                    let float_slack = 1e-4 * wmax * x_hat.iter().map(|v| v.abs()).sum::<f32>();

                    let exact = dot_row_exact(ty, &row, &x);
                    let act_err: f32 = w
                        .iter()
                        .zip(act_rounding(&acts))
                        .map(|(w, e)| w.abs() * e)
                        .sum();
                    let bound = act_err * 1.0001 + float_slack;
                    assert!(
                        (fast - exact).abs() <= bound,
                        "{isa:?} {ty} n={n}: fast {fast} vs exact {exact}, bound {bound}"
                    );

                    let exact_hat = dot_row_exact(ty, &row, &x_hat);
                    assert!(
                        (fast - exact_hat).abs() <= float_slack,
                        "{isa:?} {ty} n={n}: fast {fast} vs exact on quantized acts {exact_hat}, bound {float_slack}"
                    );
                }
            }
        }
    }
}

#[test]
fn matvec_rows_fills_every_row_like_dot_row() {
    let mut rng = Rng::new(11);
    let mut acts = QuantizedActs::new();
    for isa in isas() {
        for ty in GgmlType::ALL {
            let n = 3 * ty.block_len().max(64);
            let rows = 5;
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(ty, n, &mut rng))
                .collect();
            let rb = w.len() / rows;
            quantize_acts(ty, &random_acts(n, &mut rng), &mut acts);
            let mut out = vec![f32::NAN; rows];
            matvec_rows_with(isa, ty, &w, rb, &acts, &mut out);
            for (r, &o) in out.iter().enumerate() {
                let want = dot_row_with(isa, ty, &w[r * rb..(r + 1) * rb], &acts);
                assert_eq!(o.to_bits(), want.to_bits(), "{isa:?} {ty} row {r}");
            }
        }
    }
}

#[test]
fn nan_activations_give_nan_on_both_kernel_families() {
    let mut rng = Rng::new(13);
    let mut acts = QuantizedActs::new();
    for isa in isas() {
        for ty in GgmlType::ALL {
            let n = 2 * ty.block_len().max(32);
            let row = random_row(ty, n, &mut rng);
            let mut x = random_acts(n, &mut rng);
            x[n - 3] = f32::NAN;
            quantize_acts(ty, &x, &mut acts);
            assert!(dot_row_with(isa, ty, &row, &acts).is_nan(), "{isa:?} {ty}");
            assert!(dot_row_exact(ty, &row, &x).is_nan(), "{ty}");
        }
    }
}

#[test]
fn empty_rows_dot_to_zero() {
    let mut acts = QuantizedActs::new();
    for ty in GgmlType::ALL {
        quantize_acts(ty, &[], &mut acts);
        let mut out = [f32::NAN; 3];
        for isa in isas() {
            assert_eq!(dot_row_with(isa, ty, &[], &acts), 0.0);
            matvec_rows_with(isa, ty, &[], 0, &acts, &mut out);
            assert_eq!(out, [0.0; 3]);
        }
        assert_eq!(dot_row_exact(ty, &[], &[]), 0.0);
    }
}

#[test]
#[should_panic(expected = "quantize_acts with Q4_K")]
fn activations_of_another_layout_are_refused() {
    let mut acts = QuantizedActs::new();
    quantize_acts(GgmlType::Q8_0, &[1.0; 256], &mut acts);
    dot_row_with(Isa::Scalar, GgmlType::Q4K, &[0; 144], &acts);
}

#[test]
#[should_panic(expected = "takes 144 bytes")]
fn short_rows_are_refused() {
    let mut acts = QuantizedActs::new();
    quantize_acts(GgmlType::Q4K, &[1.0; 256], &mut acts);
    dot_row_with(Isa::best(), GgmlType::Q4K, &[0; 143], &acts);
}
