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
