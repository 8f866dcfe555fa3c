//! The arithmetic of speculative decoding, free of any model: how the target's verdict
//! over the proposed positions turns into accepted tokens without changing what the target
//! alone would produce.
//!
//! Greedy: accept the longest prefix of the proposal that equals the target's argmax at
//! each position, then take the target's argmax after it. The output is the target's own
//! greedy continuation, token for token.
//!
//! Sampling: the standard rejection scheme. Proposal token x at position i, drawn from the
//! proposer's distribution q_i, is kept with probability min(1, p_i(x) / q_i(x)); on the
//! first rejection the replacement is drawn from max(0, p_i - q_i), normalised, and the
//! step ends. If every proposal is kept, one more token is drawn from p after the last.
//! Each emitted token is then distributed exactly as p given the tokens before it. A
//! proposer without a distribution (prompt lookup) is a point mass on its token.

use crate::engine::sampler::Rng;

/// A probability distribution over token ids, as (id, probability) pairs; ids not listed
/// have probability 0. The probabilities sum to 1 (up to rounding).
pub type Dist = [(u32, f32)];

fn prob(d: &Dist, id: u32) -> f32 {
    d.iter().find(|(t, _)| *t == id).map_or(0.0, |(_, p)| *p)
}

/// Draw from `d` (weights need not be normalised); None when it has no mass.
pub(crate) fn draw(d: &[(u32, f32)], rng: &mut Rng) -> Option<u32> {
    let total: f64 = d.iter().map(|(_, p)| f64::from(p.max(0.0))).sum();
    // A NaN total has no mass either.
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mut r = rng.next_f64() * total;
    for &(id, p) in d {
        r -= f64::from(p.max(0.0));
        if r < 0.0 {
            return Some(id);
        }
    }
    d.iter().rev().find(|(_, p)| *p > 0.0).map(|(id, _)| *id)
}

/// How many proposed tokens the target agrees with, greedily: the length of the prefix of
/// `proposed` equal to `target_argmax` (the target's choice after each position).
pub fn accept_greedy(proposed: &[u32], target_argmax: &[u32]) -> usize {
    proposed
        .iter()
        .zip(target_argmax)
        .take_while(|(a, b)| a == b)
        .count()
}

/// The outcome of verifying one proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Proposed tokens kept (a prefix of the proposal).
    pub accepted: usize,
    /// The token emitted after them: a replacement for the first rejected proposal, or a
    /// fresh draw when all were kept.
    pub next: u32,
}

/// Rejection-sample a proposal. `p[i]` is the target's distribution at proposal position i
/// (given the context and `proposed[..i]`), with one more row after the last proposal
/// (`p.len() == proposed.len() + 1`). `q[i]` is the proposer's distribution for
/// `proposed[i]`, or `None` for a point mass on it.
pub fn verify_sampled(
    proposed: &[u32],
    p: &[&Dist],
    q: &[Option<&Dist>],
    rng: &mut Rng,
) -> Verdict {
    assert_eq!(
        p.len(),
        proposed.len() + 1,
        "one target row per proposal plus one"
    );
    assert_eq!(q.len(), proposed.len(), "one proposer row per proposal");
    for (i, &x) in proposed.iter().enumerate() {
        let px = prob(p[i], x);
        let qx = q[i].map_or(1.0, |q| prob(q, x));
        // u < p/q accepts with probability min(1, p/q); qx == 0 cannot come from a real
        // draw, and is treated as certain acceptance of a token p allows.
        let keep = if qx > 0.0 {
            (rng.next_f64() as f32) < px / qx
        } else {
            px > 0.0
        };
        if keep {
            continue;
        }
        // The residual max(0, p - q) over p's support (q's mass elsewhere subtracts nothing).
        let residual: Vec<(u32, f32)> = match q[i] {
            Some(q) => p[i]
                .iter()
                .map(|&(id, pv)| (id, (pv - prob(q, id)).max(0.0)))
                .collect(),
            None => p[i]
                .iter()
                .map(|&(id, pv)| (id, if id == x { 0.0 } else { pv }))
                .collect(),
        };
        // No residual mass means p <= q everywhere, i.e. p == q: rejection had probability
        // 0, so any draw from p is a faithful fallback for the rounding case.
        let next = draw(&residual, rng)
            .or_else(|| draw(p[i], rng))
            .unwrap_or(x);
        return Verdict { accepted: i, next };
    }
    let last = p[proposed.len()];
    Verdict {
        accepted: proposed.len(),
        next: draw(last, rng).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalise(w: &[f32]) -> Vec<(u32, f32)> {
        let s: f32 = w.iter().sum();
        w.iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v / s))
            .collect()
    }

    /// Pearson chi-square statistic of `counts` against probabilities `p`.
    fn chi_square(counts: &[u64], p: &[(u32, f32)]) -> f64 {
        let n: u64 = counts.iter().sum();
        p.iter()
            .filter(|(_, pv)| *pv > 0.0)
            .map(|&(id, pv)| {
                let e = n as f64 * f64::from(pv);
                let o = counts[id as usize] as f64;
                (o - e) * (o - e) / e
            })
            .sum()
    }

    // 99.99th percentile of chi-square with 5 degrees of freedom: a correct sampler fails
    // this once in 10,000 runs; seeds are fixed, so the test is deterministic.
    const CHI2_DF5_P9999: f64 = 25.74;

    #[test]
    fn greedy_acceptance_is_the_matching_prefix() {
        assert_eq!(accept_greedy(&[5, 6, 7], &[5, 6, 8, 9]), 2);
        assert_eq!(accept_greedy(&[5, 6, 7], &[5, 6, 7, 9]), 3);
        assert_eq!(accept_greedy(&[5], &[4, 1]), 0);
        assert_eq!(accept_greedy(&[], &[4]), 0);
    }

    #[test]
    fn draft_rejection_sampling_keeps_the_target_distribution() {
        let p = normalise(&[0.05, 0.30, 0.10, 0.25, 0.2, 0.1]);
        let q = normalise(&[0.30, 0.05, 0.25, 0.10, 0.1, 0.2]);
        let mut rng = Rng::new(11);
        let mut counts = [0u64; 6];
        let mut accepted = 0u64;
        const N: usize = 200_000;
        for _ in 0..N {
            let x = draw(&q, &mut rng).unwrap_or(0);
            let v = verify_sampled(&[x], &[&p, &p], &[Some(&q)], &mut rng);
            // The first emitted token: the proposal if kept, else the replacement.
            let first = if v.accepted == 1 { x } else { v.next };
            counts[first as usize] += 1;
            accepted += v.accepted as u64;
        }
        let chi2 = chi_square(&counts, &p);
        assert!(
            chi2 < CHI2_DF5_P9999,
            "chi-square {chi2:.1} over {counts:?}"
        );
        // Acceptance rate is sum(min(p, q)) = 0.5 here.
        let rate = accepted as f64 / N as f64;
        assert!((rate - 0.5).abs() < 0.01, "acceptance {rate}");
    }

    #[test]
    fn lookup_rejection_sampling_keeps_the_target_distribution() {
        let p = normalise(&[0.4, 0.1, 0.2, 0.05, 0.15, 0.1]);
        let mut rng = Rng::new(5);
        // A point-mass proposer always proposing token 2, and one proposing token 0.
        for proposal in [2u32, 0] {
            let mut counts = [0u64; 6];
            for _ in 0..200_000 {
                let v = verify_sampled(&[proposal], &[&p, &p], &[None], &mut rng);
                let first = if v.accepted == 1 { proposal } else { v.next };
                counts[first as usize] += 1;
            }
            let chi2 = chi_square(&counts, &p);
            assert!(
                chi2 < CHI2_DF5_P9999,
                "proposal {proposal}: chi-square {chi2:.1} over {counts:?}"
            );
        }
    }

    #[test]
    fn second_position_follows_the_target_too() {
        // Two proposals from a draft; the emitted token at position 1 (when position 0 was
        // kept) must follow p1, whatever the draft's q1.
        let p0 = normalise(&[0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
        let p1 = normalise(&[0.1, 0.2, 0.3, 0.1, 0.2, 0.1]);
        let q1 = normalise(&[0.6, 0.1, 0.1, 0.1, 0.05, 0.05]);
        let mut rng = Rng::new(99);
        let mut counts = [0u64; 6];
        for _ in 0..200_000 {
            let x1 = draw(&q1, &mut rng).unwrap_or(0);
            let v = verify_sampled(
                &[0, x1],
                &[&p0, &p1, &p1],
                &[Some(&p0), Some(&q1)],
                &mut rng,
            );
            assert!(v.accepted >= 1, "q0 == p0 never rejects");
            let second = if v.accepted == 2 { x1 } else { v.next };
            counts[second as usize] += 1;
        }
        let chi2 = chi_square(&counts, &p1);
        assert!(
            chi2 < CHI2_DF5_P9999,
            "chi-square {chi2:.1} over {counts:?}"
        );
    }

    #[test]
    fn greedy_targets_accept_only_their_argmax() {
        // A one-hot target (temperature 0 expressed as a distribution) keeps exactly the
        // tokens equal to its choice, and replaces the first other one by that choice.
        let hot = |id: u32| vec![(id, 1.0f32)];
        let (a, b, c) = (hot(3), hot(4), hot(9));
        let mut rng = Rng::new(1);
        let v = verify_sampled(&[3, 5], &[&a, &b, &c], &[None, None], &mut rng);
        assert_eq!(
            v,
            Verdict {
                accepted: 1,
                next: 4
            }
        );
        let v = verify_sampled(&[3, 4], &[&a, &b, &c], &[None, None], &mut rng);
        assert_eq!(
            v,
            Verdict {
                accepted: 2,
                next: 9
            }
        );
    }
}
