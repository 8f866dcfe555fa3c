//! `dequantize` against fixtures made by `tools/make_quant_fixtures.py` with the `gguf`
//! Python package, an implementation independent of this one.

use super::super::{QuantError, dequantize};
use crate::format::GgmlType;

fn read(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/quant/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Distance in units in the last place between two finite floats of the same sign
/// (enough here: a sign mismatch on nonzero values counts as far apart).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn dequantize_matches_the_gguf_package() {
    for ty in GgmlType::ALL {
        let raw = read(&format!("{}.bin", ty.name()));
        let expected: Vec<f32> = read(&format!("{}.f32", ty.name()))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(!expected.is_empty());
        let mut got = vec![f32::NAN; expected.len()];
        dequantize(ty, &raw, &mut got).unwrap();
        let mut inexact = 0;
        for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
            let d = ulps(g, e);
            assert!(d <= 1, "{ty} element {i}: got {g:e}, gguf says {e:e}");
            inexact += usize::from(d != 0);
        }
        // The arithmetic follows GGML's operation for operation, so in practice there
        // is not even the 1-ulp difference allowed above.
        assert_eq!(inexact, 0, "{ty}: {inexact} elements off by one ulp");
    }
}

#[test]
fn dequantize_rejects_mismatched_lengths() {
    let src = vec![0u8; 18 * 2];
    let mut dst = vec![0f32; 64];
    assert!(dequantize(GgmlType::Q4_0, &src, &mut dst).is_ok());
    let err = dequantize(GgmlType::Q4_0, &src[..35], &mut dst).unwrap_err();
    assert!(
        matches!(
            err,
            QuantError::ByteLength {
                expected: 36,
                got: 35,
                ..
            }
        ),
        "{err}"
    );
    let err = dequantize(GgmlType::Q4_0, &src, &mut dst[..40]).unwrap_err();
    assert!(
        matches!(
            err,
            QuantError::PartialBlock {
                n: 40,
                block: 32,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "40 Q4_0 elements are not a whole number of 32-element blocks"
    );
    assert!(dequantize(GgmlType::Q6K, &[], &mut []).is_ok());
}
