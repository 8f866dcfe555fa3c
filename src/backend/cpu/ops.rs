//! Elementwise and normalisation ops of the CPU backend. Each is the reference twin of a
//! CUDA kernel in kernels/ and is kept as plain as possible.

/// RMSNorm: `out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]`, accumulated in f32.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), weight.len());
    assert_eq!(x.len(), out.len());
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// RMSNorm in place.
pub fn rmsnorm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len(), weight.len());
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        *v *= scale * w;
    }
}

/// `x / (1 + e^-x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Rotate one head in place. `cos`/`sin` hold the `rope_dim / 2` angles of this position.
/// `interleaved` pairs `(2i, 2i+1)`; otherwise NeoX pairs `(i, i + rope_dim/2)`.
pub fn rope_head(head: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = if interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos[i] - x1 * sin[i];
        head[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`weighted_rows_lanes`] for rows of `W` values, all columns in registers.
#[inline(always)]
fn weighted_rows_fixed<const W: usize>(
    w: &[f32],
    v: &[f32],
    first: usize,
    stride: usize,
    out: &mut [f32],
) {
    let mut acc = [0.0f32; W];
    for (j, &wj) in w.iter().enumerate() {
        let at = first + j * stride;
        let row: &[f32; W] = (&v[at..at + W]).try_into().expect("W values");
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += wj * x;
        }
    }
    out.copy_from_slice(&acc);
}

/// `out[j] = dot(q, row j) * scale`, where row j is `q.len()` values of `k` from
/// `first + j * stride`: attention's scores of one query against the cached keys, the
/// bits of [`dot`] per row, with the CPU check and the call made once for all rows.
pub fn scaled_dots(q: &[f32], k: &[f32], first: usize, stride: usize, scale: f32, out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            first + last * stride + q.len() <= k.len(),
            "scaled_dots: rows past the end"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU was just seen to support avx.
        return unsafe { scaled_dots_avx(q, k, first, stride, scale, out) };
    }
    scaled_dots_lanes(q, k, first, stride, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn scaled_dots_avx(q: &[f32], k: &[f32], first: usize, stride: usize, scale: f32, out: &mut [f32]) {
    scaled_dots_lanes(q, k, first, stride, scale, out)
}

#[inline(always)]
fn scaled_dots_lanes(
    q: &[f32],
    k: &[f32],
    first: usize,
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    for (j, o) in out.iter_mut().enumerate() {
        let at = first + j * stride;
        *o = dot_lanes(q, &k[at..at + q.len()]) * scale;
    }
}

/// `sum(a[i] * b[i])` over `a`'s length (`b` at least as long; panics otherwise).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    // The attention scores over a prompt take a dot per (query, key, head): the AVX
    // build of the same loop does each step in one 8-lane register instead of two
    // 4-lane ones. Same lanes, same unfused multiply then add, same final sums: the
    // same bits as the portable build.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU was just seen to support avx.
        return unsafe { dot_avx(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// Eight independent partial sums so the compiler can vectorise without reassociating;
/// `a` and `b` of equal length.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// `out = sum_j w[j] * row j`, where row j is `out.len()` values of `v` from
/// `first + j * stride`: attention's weighted sum of value rows. Each element is summed
/// in j order from 0.0, unfused, so the result is that of `out.fill(0.0)` followed by
/// `out[d] += w[j] * row_j[d]` for each j in turn, whatever the vector width.
pub fn weighted_rows(w: &[f32], v: &[f32], first: usize, stride: usize, out: &mut [f32]) {
    if let Some(last) = w.len().checked_sub(1) {
        assert!(
            first + last * stride + out.len() <= v.len(),
            "weighted_rows: rows past the end"
        );
    }
    // A prompt's attention takes one of these per (query, head): 16 columns at a time
    // the sums stay in one register across all the rows instead of going through memory
    // for every row.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU was just seen to support avx512f.
        return unsafe { weighted_rows_avx512(w, v, first, stride, out) };
    }
    weighted_rows_lanes(w, v, first, stride, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weighted_rows_avx512(w: &[f32], v: &[f32], first: usize, stride: usize, out: &mut [f32]) {
    weighted_rows_lanes(w, v, first, stride, out)
}

/// [`weighted_rows`] in columns of 16; the caller checked that every row is in `v`.
#[inline(always)]
fn weighted_rows_lanes(w: &[f32], v: &[f32], first: usize, stride: usize, out: &mut [f32]) {
    // Each row's add depends on the previous row's: with one column of 16 at a time that
    // chain is the whole cost (an add's latency per row and column), so the common head
    // sizes keep all their columns in flight at once (same order per element, same bits).
    match out.len() {
        64 => return weighted_rows_fixed::<64>(w, v, first, stride, out),
        128 => return weighted_rows_fixed::<128>(w, v, first, stride, out),
        _ => {}
    }
    const COLS: usize = 16;
    let mut c0 = 0;
    for oc in out.chunks_mut(COLS) {
        let mut acc = [0.0f32; COLS];
        let width = oc.len();
        for (j, &wj) in w.iter().enumerate() {
            let at = first + j * stride + c0;
            if let Ok(row) = <&[f32; COLS]>::try_from(&v[at..at + width]) {
                // A whole column: fixed-size, so it compiles to one register's mul and add.
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += wj * x;
                }
            } else {
                for (a, &x) in acc.iter_mut().zip(&v[at..at + width]) {
                    *a += wj * x;
                }
            }
        }
        oc.copy_from_slice(&acc[..width]);
        c0 += width;
    }
}

/// The rotary angle tables of `rope` for positions `0..ctx`: (cos, sin, half). Computed by
/// `Rope::angles`, the one place every backend's rope angles come from.
pub fn rope_angles(rope: &crate::format::Rope, ctx: usize) -> (Vec<f32>, Vec<f32>, usize) {
    rope.angles(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop as first written (eight partial sums, indexed): the dispatched dot must
    /// give its bits for every length, tails included.
    #[test]
    fn dot_is_the_eight_lane_sum_bit_for_bit() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n + 3).map(|_| next()).collect();
            let mut acc = [0.0f32; 8];
            for c in 0..n / 8 {
                for j in 0..8 {
                    acc[j] += a[c * 8 + j] * b[c * 8 + j];
                }
            }
            let mut want: f32 = acc.iter().sum();
            for i in n / 8 * 8..n {
                want += a[i] * b[i];
            }
            assert_eq!(dot(&a, &b).to_bits(), want.to_bits(), "n = {n}");
            assert_eq!(dot_lanes(&a, &b[..n]).to_bits(), want.to_bits(), "n = {n}");
        }
    }

    /// The weighted sum as attention first wrote it (zero, then one `+=` per row) and
    /// the scores as one `dot` per row: the dispatched forms must give their bits for
    /// every width, tails and the fixed head sizes included.
    #[test]
    fn weighted_rows_and_scaled_dots_keep_the_bits_of_the_plain_loops() {
        let mut state = 11u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        for (width, rows) in [
            (1, 1),
            (7, 3),
            (16, 5),
            (17, 2),
            (64, 40),
            (80, 9),
            (128, 33),
        ] {
            let (stride, first) = (width + 5, 3);
            let v: Vec<f32> = (0..first + rows * stride).map(|_| next()).collect();
            let w: Vec<f32> = (0..rows).map(|_| next()).collect();
            let mut want = vec![0.0f32; width];
            for (j, &wj) in w.iter().enumerate() {
                let row = &v[first + j * stride..first + j * stride + width];
                for (o, &x) in want.iter_mut().zip(row) {
                    *o += wj * x;
                }
            }
            let mut got = vec![f32::NAN; width];
            weighted_rows(&w, &v, first, stride, &mut got);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "width {width}, rows {rows}");
        }
        for (width, rows) in [(1, 1), (9, 4), (16, 2), (64, 30), (80, 3), (100, 5)] {
            let (stride, first) = (width + 3, 2);
            let k: Vec<f32> = (0..first + rows * stride).map(|_| next()).collect();
            let q: Vec<f32> = (0..width).map(|_| next()).collect();
            let mut got = vec![f32::NAN; rows];
            scaled_dots(&q, &k, first, stride, 0.125, &mut got);
            for (j, g) in got.iter().enumerate() {
                let want = dot(&q, &k[first + j * stride..]) * 0.125;
                assert_eq!(g.to_bits(), want.to_bits(), "width {width}, row {j}");
            }
        }
        let mut none = [f32::NAN; 3];
        weighted_rows(&[], &[], 0, 3, &mut none);
        assert_eq!(none, [0.0; 3]);
    }

    #[test]
    fn rope_rotations_preserve_norm_and_match_pairings() {
        let mut a = [1.0, 2.0, 3.0, 4.0];
        let (c, s) = ([0.6, 1.0], [0.8, 0.0]);
        rope_head(&mut a, &c, &s, true);
        assert!((a[0] - (0.6 - 1.6)).abs() < 1e-6 && (a[1] - (0.8 + 1.2)).abs() < 1e-6);
        assert_eq!(&a[2..], &[3.0, 4.0]);
        let mut b = [1.0, 2.0, 3.0, 4.0];
        rope_head(&mut b, &c, &s, false);
        assert!((b[0] - (0.6 - 2.4)).abs() < 1e-6 && (b[2] - (0.8 + 1.8)).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1000.0, 1001.0, -5.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0]);
    }
}
