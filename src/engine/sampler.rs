//! Picks the next token from the logits: penalties, then greedy or temperature sampling
//! restricted by top-k, top-p and min-p. Seeded, so the same seed gives the same text.

use std::collections::HashMap;

/// Sampling settings. `temperature == 0` is greedy (argmax, lowest id on ties).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive / multiply negative logits of recently seen tokens (1 = off).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (0 = off).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of generated tokens (0 = off).
    pub frequency_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub penalty_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Greedy with no penalties: the token is the plain argmax of the logits, which a
    /// backend may compute where the logits are (no copy of them to the host).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && self.has_no_penalties()
    }

    /// No repetition, presence or frequency penalty: the logits are used as they come, so
    /// a backend may pick the token where they are.
    pub fn has_no_penalties(&self) -> bool {
        self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }

    /// Reject values that would make sampling meaningless (NaN, negative temperature...).
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number, got {v}"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repetition_penalty", self.repetition_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        if self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (SplitMix64); good enough to draw one number per
/// token and fully reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// Tokens generated so far with their counts (presence / frequency penalties).
    counts: HashMap<u32, u32>,
    /// Recent tokens, prompt included (repetition penalty).
    recent: Vec<u32>,
    candidates: Vec<(u32, f32)>,
}

/// The token a pick returns when there is none to pick: every logit is NaN (a damaged
/// model or a numerical fault). The engine ends the request with
/// [`EngineError::NanLogits`](super::EngineError::NanLogits). The device kernels write the
/// same value (`TACHYON_NO_TOKEN` in kernels/tachyon_kernels.h).
pub const NO_TOKEN: u32 = u32::MAX;

/// Index of the largest value; the lowest index wins ties. NaN is never picked; when every
/// value is NaN, [`NO_TOKEN`].
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = None;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none() || v > best_v {
            best_v = v;
            best = Some(i);
        }
    }
    best.map_or(NO_TOKEN, |i| i as u32)
}

/// The distribution temperature sampling draws from: the candidates that survive top-k,
/// min-p and top-p, as (id, probability) pairs sorted most likely first, with
/// probabilities proportional to exp(logit / temperature) and summing to 1.
/// `p.temperature` must be above 0; penalties are not applied here. Speculative
/// verification compares these for target and draft.
pub fn distribution(p: &SamplingParams, logits: &[f32], c: &mut Vec<(u32, f32)>) {
    // Candidates sorted by logit, descending, cut by top-k first (cheap and exact).
    c.clear();
    c.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, &v)| (i as u32, v)),
    );
    if c.is_empty() {
        return;
    }
    let k = if p.top_k == 0 {
        c.len()
    } else {
        p.top_k.min(c.len())
    };
    sort_prefix_desc(c, k);
    c.truncate(k);
    // Softmax with temperature over the candidates.
    let max = c[0].1;
    let mut sum = 0.0f64;
    for (_, v) in c.iter_mut() {
        *v = (((*v - max) / p.temperature) as f64).exp() as f32;
        sum += *v as f64;
    }
    for (_, v) in c.iter_mut() {
        *v = (*v as f64 / sum) as f32;
    }
    // min-p: relative to the most likely token.
    if p.min_p > 0.0 {
        let floor = c[0].1 * p.min_p;
        let keep = c.iter().take_while(|(_, v)| *v >= floor).count().max(1);
        c.truncate(keep);
    }
    // top-p: the smallest prefix reaching the mass.
    if p.top_p < 1.0 {
        let mut acc = 0.0f64;
        let mut keep = c.len();
        for (i, (_, v)) in c.iter().enumerate() {
            acc += *v as f64;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
    }
    let kept: f64 = c.iter().map(|(_, v)| *v as f64).sum();
    for (_, v) in c.iter_mut() {
        *v = (*v as f64 / kept) as f32;
    }
}

/// One draw from `c` (a [`distribution`]) with the next number of `rng`; 0 when empty.
fn draw_candidate(c: &[(u32, f32)], rng: &mut Rng) -> u32 {
    if c.is_empty() {
        return NO_TOKEN; // every logit NaN
    }
    let total: f64 = c.iter().map(|(_, v)| *v as f64).sum();
    let mut r = rng.next_f64() * total;
    for (id, v) in c.iter() {
        r -= *v as f64;
        if r < 0.0 {
            return *id;
        }
    }
    c[c.len() - 1].0
}

/// A token drawn from `logits` with `p`'s top-k, temperature, min-p and top-p (no
/// penalties) and a fresh random stream seeded by `seed`: the pick a session makes for
/// `Pick::Sample`, a function of the logits and the seed alone. Temperature 0 is the argmax.
pub fn sample_filtered(
    p: &SamplingParams,
    logits: &[f32],
    seed: u64,
    scratch: &mut Vec<(u32, f32)>,
) -> u32 {
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    distribution(p, logits, scratch);
    draw_candidate(scratch, &mut Rng::new(seed))
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = Rng::new(params.seed);
        let keep = prompt.len().saturating_sub(params.penalty_last_n);
        Sampler {
            params,
            rng,
            counts: HashMap::new(),
            recent: prompt[keep..].to_vec(),
            candidates: Vec::new(),
        }
    }

    /// Record a token that was emitted (sampled or forced).
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        self.recent.push(token);
        let n = self.params.penalty_last_n;
        if self.recent.len() > 2 * n.max(1) {
            // Trim in batches so accept stays O(1) amortised.
            self.recent.drain(..self.recent.len() - n);
        }
    }

    /// Apply penalties to `logits` in place, then pick a token.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let p = &self.params;
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        distribution(p, logits, &mut self.candidates);
        draw_candidate(&self.candidates, &mut self.rng)
    }

    /// The repetition, presence and frequency penalties of the tokens accepted so far (and
    /// the prompt's last `penalty_last_n`), applied to `logits` in place: what [`Sampler::sample`]
    /// does first, and the reference the device's penalties are checked against.
    pub fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let start = self.recent.len().saturating_sub(p.penalty_last_n);
            let mut seen: Vec<u32> = self.recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }
}

/// Sort so the first `k` elements are the largest, in descending order (ties: lower id first).
fn sort_prefix_desc(c: &mut [(u32, f32)], k: usize) {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, cmp);
    }
    c[..k].sort_unstable_by(cmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, 0.5]
    }

    #[test]
    fn greedy_takes_lowest_index_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(s.sample(&mut logits()), 1);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed,
                    ..params.clone()
                },
                &[],
            );
            (0..64).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_hold() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                seed: 1,
                ..Default::default()
            },
            &[],
        );
        for _ in 0..32 {
            assert_eq!(s.sample(&mut logits()), 1);
        }
        // top-k 2 may only pick the two 3.0 logits (ids 1, 3).
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_k: 2,
                top_p: 1.0,
                min_p: 0.0,
                seed: 3,
                ..Default::default()
            },
            &[],
        );
        let picks: Vec<u32> = (0..200).map(|_| s.sample(&mut logits())).collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 3));
        assert!(picks.contains(&1) && picks.contains(&3));
        // min-p 0.5 drops everything below half the best probability: e^-1 < 0.5 drops id 2.
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.5,
                seed: 4,
                ..Default::default()
            },
            &[],
        );
        assert!((0..200).all(|_| matches!(s.sample(&mut logits()), 1 | 3)));
        // top-p 0.5: the two tied best tokens hold ~0.58 of the mass; 0.5 needs just the first.
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.3,
                min_p: 0.0,
                seed: 5,
                ..Default::default()
            },
            &[],
        );
        assert!((0..200).all(|_| s.sample(&mut logits()) == 1));
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 11,
            ..Default::default()
        };
        let mut s = Sampler::new(params, &[]);
        let base = [0.0f32, 1.0, 2.0];
        let n = 60_000;
        let mut hist = [0usize; 3];
        for _ in 0..n {
            hist[s.sample(&mut base.to_vec()) as usize] += 1;
        }
        let z: f64 = base.iter().map(|v| (*v as f64).exp()).sum();
        for i in 0..3 {
            let want = (base[i] as f64).exp() / z;
            let got = hist[i] as f64 / n as f64;
            assert!(
                (want - got).abs() < 0.01,
                "token {i}: want {want:.3}, got {got:.3}"
            );
        }
    }

    #[test]
    fn penalties_change_the_choice() {
        // Repetition penalty on token 1 makes token 3 (tied) win greedily.
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, &[1]);
        assert_eq!(s.sample(&mut logits()), 3);
        let params = SamplingParams {
            presence_penalty: 0.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, &[]);
        s.accept(1);
        assert_eq!(s.sample(&mut logits()), 3);
        let params = SamplingParams {
            frequency_penalty: 0.4,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, &[]);
        s.accept(1);
        s.accept(1);
        s.accept(3);
        // id 1: 3 - 0.8 = 2.2, id 3: 3 - 0.4 = 2.6, id 2: 2.0.
        assert_eq!(s.sample(&mut logits()), 3);
    }

    #[test]
    fn validate_rejects_nan_and_negative() {
        assert!(
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
