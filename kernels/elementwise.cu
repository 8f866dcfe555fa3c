/*
 * elementwise.cu: the small f32 ops between the big ones: residual add, bias add (a row
 * broadcast), SwiGLU (`silu(gate) * up`) and copy.
 *
 * Layout: `x` and `y` contiguous f32; for the bias form `y` is one row of `width`.
 * Launch: grid = (ceil(len / 256) capped at 65535 * 8, grid-stride loop), block = (256).
 * Bytes: 12 per element (read x, y; write x), 8 for the copy. Flops: 1 per element (add),
 * about 5 plus one exp (SwiGLU). Memory-bound; at decode sizes (a few thousand elements)
 * launch-latency-bound, which is why the fused forms (bias in the GEMV, SwiGLU in the
 * gate/up GEMV) exist.
 */
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) elementwise_f32(const ElementwiseParams p) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.len;
         i += stride) {
        switch (p.op) {
            case TACHYON_EW_ADD:
                p.x[i] += p.y[i];
                break;
            case TACHYON_EW_ADD_ROW:
                p.x[i] += p.y[i % p.width];
                break;
            case TACHYON_EW_SWIGLU: {
                // Same formula as the CPU twin: g / (1 + exp(-g)) * u.
                const float g = p.x[i];
                p.x[i] = g / (1.0f + expf(-g)) * p.y[i];
                break;
            }
            default:
                p.x[i] = p.y[i];
                break;
        }
    }
}
