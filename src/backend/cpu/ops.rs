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

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums so the compiler can vectorise without reassociating.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
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
