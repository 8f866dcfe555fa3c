//! A step's mask and the request's `logit_bias` applied to a logits row, before the sampler
//! (penalties, temperature, top-k, top-p) sees it. Setting refused tokens to -inf keeps the
//! distribution exact: softmax over the row is then softmax over the allowed tokens, and
//! greedy picks the best allowed one.

/// OpenAI's `logit_bias`: token id -> a bias in [-100, 100] added to its logit.
pub type LogitBias = Vec<(u32, f32)>;

/// Most entries one request's `logit_bias` may carry.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Adds each bias to its token's logit (ids past the row are ignored; callers check them).
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += b;
        }
    }
}

/// Sets every logit whose bit is off in `mask` to -inf. Rows past the mask's words are
/// refused as well.
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        if bits == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (i, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << i) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Whether `mask` allows `token`.
pub fn mask_allows(mask: &[u32], token: u32) -> bool {
    mask.get(token as usize / 32)
        .is_some_and(|w| w & (1 << (token % 32)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampler::{Sampler, SamplingParams};

    #[test]
    fn mask_refuses_exactly_the_bits_that_are_off() {
        let mut logits: Vec<f32> = (0..70).map(|i| i as f32).collect();
        let mut mask = vec![0u32; 3];
        for t in [0u32, 5, 31, 32, 64, 69] {
            mask[t as usize / 32] |= 1 << (t % 32);
        }
        apply_mask(&mut logits, &mask);
        for (i, &l) in logits.iter().enumerate() {
            let allowed = mask_allows(&mask, i as u32);
            assert_eq!(l.is_finite(), allowed, "token {i}");
            if allowed {
                assert_eq!(l, i as f32);
            }
        }
    }

    #[test]
    fn greedy_under_a_mask_takes_the_best_allowed_token() {
        let mut logits = vec![5.0, 1.0, 4.0, 3.0];
        apply_mask(&mut logits, &[0b1010]);
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&mut logits), 3);
    }

    #[test]
    fn sampling_under_a_mask_follows_the_renormalised_softmax() {
        let base = [0.0f32, 1.0, 2.0, 3.0];
        let mask = [0b0111u32]; // token 3, the most likely, is refused
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 5,
            ..Default::default()
        };
        let mut s = Sampler::new(params, &[]);
        let n = 60_000;
        let mut hist = [0usize; 4];
        for _ in 0..n {
            let mut l = base.to_vec();
            apply_mask(&mut l, &mask);
            hist[s.sample(&mut l) as usize] += 1;
        }
        assert_eq!(hist[3], 0);
        let z: f64 = base[..3].iter().map(|v| (*v as f64).exp()).sum();
        for i in 0..3 {
            let want = (base[i] as f64).exp() / z;
            let got = hist[i] as f64 / n as f64;
            assert!((want - got).abs() < 0.01, "token {i}: {want} vs {got}");
        }
    }

    #[test]
    fn logit_bias_moves_the_choice_and_minus_100_bans() {
        let mut logits = vec![2.0, 1.0, 0.0];
        apply_logit_bias(&mut logits, &[(0, -100.0), (2, 1.5), (99, 5.0)]);
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&mut logits), 2);
    }
}
