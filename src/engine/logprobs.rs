//! Log-probabilities of the sampled token and its most likely alternatives (the OpenAI
//! `logprobs` / `top_logprobs` options). Computed from the model's raw logits, before
//! penalties and temperature, so they describe the model rather than the sampler settings.

/// Most alternatives one step may report.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Fills `top` with the `n` most likely tokens (best first, ties: lower id first) and
/// returns the log-probability of `sampled`. NaN logits count as impossible.
pub fn logprobs(logits: &[f32], sampled: u32, n: usize, top: &mut Vec<(u32, f32)>) -> f32 {
    top.clear();
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| ((v - max) as f64).exp())
        .sum();
    let lse = max as f64 + sum.ln();
    let lp = |v: f32| {
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            (v as f64 - lse) as f32
        }
    };
    let n = n.min(MAX_TOP_LOGPROBS).min(logits.len());
    if n > 0 {
        // A sorted list of n kept by insertion: n is small and most logits never enter it.
        for (i, &v) in logits.iter().enumerate() {
            if v.is_nan() || (top.len() == n && v <= top[n - 1].1) {
                continue;
            }
            let at = top.partition_point(|&(_, w)| w >= v);
            if top.len() == n {
                top.pop();
            }
            top.insert(at, (i as u32, v));
        }
        for e in top.iter_mut() {
            e.1 = lp(e.1);
        }
    }
    logits
        .get(sampled as usize)
        .map_or(f32::NEG_INFINITY, |&v| lp(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_log_softmax_and_orders_the_top() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN, -1.0];
        let mut top = Vec::new();
        let lp = logprobs(&logits, 2, 3, &mut top);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0, -1.0].iter().map(|v| v.exp()).sum();
        assert!((lp as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        let total: f64 = logits
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| (v as f64 - z.ln()).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(logprobs(&logits, 4, 0, &mut top), f32::NEG_INFINITY);
        assert!(top.is_empty());
    }
}
