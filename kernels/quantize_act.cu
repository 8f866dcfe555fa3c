/*
 * quantize_act.cu: `quantize_act_q8`, the activation rows of a matrix product quantized to
 * int8 per 32 values for the dp4a GEMV (gemv_qpack.cu's `gemv_qpack_<format>_q8` kernels),
 * with the product's RMSNorm fused in front (QuantActParams in tachyon_kernels.h says what
 * is computed). The CPU twin is `quant::round_trip_int8` after `ops::rmsnorm`: the same
 * f32 operations in the same order (the norm's (x * scale) * w, IEEE divisions for d and
 * 127 / max, round-half-even), so the codes agree exactly wherever the inputs to the
 * rounding do; with a norm, rsqrtf's 2 ulp can move a value across a rounding boundary.
 *
 * Layout: x is n x cols f32 (row-major); q is n x cols int8 in element order (a unit of
 * 32 codes is 32 consecutive bytes, 16-byte aligned when the buffer is); d holds per unit
 * the pair (d, d * sum(codes)), the second what Q4_1/Q5_1 offsets and K-quant mins multiply.
 *
 * Launch: grid = (n), block = (32, 8): one block per row. With a norm, the block first sums
 * the row's squares (fixed order: every run gives the same scale); then warp w takes units
 * w, w + 8, ...: lane l the element 32 u + l, the unit's max and code sum by shuffles.
 * Programmatic dependent launch: the first statement triggers the next kernel and waits for
 * the previous ones (x is what they wrote).
 *
 * Bytes and flops per row: reads 4 * cols (twice with a norm, the second from L1/L2) and
 * the norm weight, writes 1.25 * cols; ~10 ops per element. For a decode row (cols 2048-
 * 14336) this is one block, a few microseconds of latency, not bandwidth: a launch on the
 * critical path that the dp4a product must repay (unmeasured).
 */
#include "common.cuh"

namespace {
namespace quantize_act {

constexpr int kWarps = 8;

// rsqrt(sum(x^2) / cols + eps) of one row, the same value in every thread of the block.
__device__ __forceinline__ float row_scale(const float* x, int cols, float eps) {
    __shared__ float part[kWarps];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    float ss = 0.0f;
    for (int i = warp * tachyon::kWarp + lane; i < cols; i += kWarps * tachyon::kWarp) {
        ss += x[i] * x[i];
    }
    ss = tachyon::warp_sum_f(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += part[w];
    // IEEE division (no fast math), as rmsnorm.cu.
    return rsqrtf(total / static_cast<float>(cols) + eps);
}

}  // namespace quantize_act
}  // namespace

extern "C" __global__ void __launch_bounds__(256) quantize_act_q8(const QuantActParams p) {
    tachyon::pdl_trigger_then_wait();
    const int t = blockIdx.x;
    if (t >= p.n) return;
    const float* x = p.x + static_cast<size_t>(t) * p.cols;
    const float scale =
        p.norm_w != nullptr ? quantize_act::row_scale(x, p.cols, p.eps) : 1.0f;
    const int lane = threadIdx.x;
    const int units = p.cols / tachyon::kWarp;
    for (int u = threadIdx.y; u < units; u += quantize_act::kWarps) {
        const int i = u * tachyon::kWarp + lane;
        float v = x[i];
        // The CPU's rmsnorm order: (x * scale) * weight.
        if (p.norm_w != nullptr) v = __fmul_rn(__fmul_rn(v, scale), p.norm_w[i]);
        const bool bad = __ballot_sync(0xffffffffu, !isfinite(v)) != 0u;
        const float amax = tachyon::warp_max_f(fabsf(v));
        int q = 0;
        float d = 0.0f;
        if (bad) {
            d = __int_as_float(0x7fc00000);  // NaN: the unit poisons every product
        } else if (amax > 0.0f) {
            d = __fdiv_rn(amax, 127.0f);
            const float id = __fdiv_rn(127.0f, amax);
            q = min(127, max(-127, __float2int_rn(__fmul_rn(v, id))));
        }
        // |sum| <= 32 * 127: exact in f32.
        const float sum = tachyon::warp_sum_f(static_cast<float>(q));
        const size_t g = static_cast<size_t>(t) * units + u;
        p.q[g * tachyon::kWarp + lane] = static_cast<signed char>(q);
        if (lane == 0) {
            p.d[2 * g] = d;
            p.d[2 * g + 1] = __fmul_rn(d, sum);
        }
    }
}
