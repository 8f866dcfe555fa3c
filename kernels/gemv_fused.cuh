/*
 * gemv_fused.cuh: the prologue and epilogue the matrix kernels (gemv.cu, gemv_quant.cu,
 * gemm.cu) share, so that a norm in front of a product and a residual add or a q/k/v split
 * behind it cost no launch of their own (GemvParams in tachyon_kernels.h):
 *
 * - `norm_scales`: RMSNorm in the prologue. Every block sums the squares of the activation
 *   rows it works on itself (a row is `cols` floats, a few KB read from L2 by every block),
 *   so no block waits on another and nothing is written between the norm and the product:
 *   `scale[t] = rsqrt(sum(x[t]^2) / cols + eps)`, then the product reads
 *   `(x[t][i] * scale[t]) * norm_w[i]`, the CPU's `rmsnorm` of the row, value for value
 *   (up to the summation order and rsqrtf's 2 ulp).
 * - `gemv_store`: the epilogue's write of output row r of activation row t: to `out`, or,
 *   for stacked q/k/v, to `out`, `out_b` or `out_c` by the row's range; with `accumulate`
 *   it adds to what is there (`x += W a`). The value it gets already holds the bias.
 */
#ifndef TACHYON_GEMV_FUSED_CUH
#define TACHYON_GEMV_FUSED_CUH

#include "common.cuh"

namespace tachyon {

// Most activation rows a GEMV block handles at once (the kernels' batch).
constexpr int kGemvBatch = 4;

// The RMSNorm scales of activation rows t0 .. t0 + nb - 1 (nb <= kGemvBatch), into
// scale[0 .. nb); 1 when the product has no norm. Every thread of the block must call it
// (it has a barrier); blockDim is (32, warps) with at most 32 warps.
__device__ __forceinline__ void norm_scales(const GemvParams& p, int t0, int nb,
                                            float scale[kGemvBatch]) {
    __shared__ float part[kWarp][kGemvBatch];
    if (p.norm_w == nullptr) {
#pragma unroll
        for (int b = 0; b < kGemvBatch; ++b) scale[b] = 1.0f;
        return;
    }
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int tid = warp * kWarp + lane;
    const int threads = blockDim.x * blockDim.y;
    const bool vec = p.cols % 4 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
#pragma unroll
    for (int b = 0; b < kGemvBatch; ++b) {
        float ss = 0.0f;
        if (b < nb) {
            const float* x = p.x + static_cast<size_t>(t0 + b) * p.cols;
            if (vec) {
                const float4* x4 = reinterpret_cast<const float4*>(x);
                for (int i = tid; i < p.cols / 4; i += threads) {
                    const float4 v = x4[i];
                    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
            } else {
                for (int i = tid; i < p.cols; i += threads) ss += x[i] * x[i];
            }
        }
        ss = warp_sum_f(ss);
        if (lane == 0) part[warp][b] = ss;
    }
    __syncthreads();
    const int warps = blockDim.y;
#pragma unroll
    for (int b = 0; b < kGemvBatch; ++b) {
        // The same order in every thread: every block gets bit-identical scales.
        float total = 0.0f;
        for (int w = 0; w < warps; ++w) total += part[w][b];
        // IEEE division (no fast math), as rmsnorm.cu.
        scale[b] = rsqrtf(total / static_cast<float>(p.cols) + p.eps);
    }
}

// Output row r of activation row t (bias already added).
__device__ __forceinline__ void gemv_store(const GemvParams& p, int t, int r, float y) {
    float* dst = p.out;
    int width = p.rows;
    if (p.out_b != nullptr) {
        if (r < p.rows_a) {
            width = p.rows_a;
        } else if (r < p.rows_a + p.rows_b) {
            dst = p.out_b;
            r -= p.rows_a;
            width = p.rows_b;
        } else {
            dst = p.out_c;
            r -= p.rows_a + p.rows_b;
            width = p.rows - p.rows_a - p.rows_b;
        }
    }
    const size_t i = static_cast<size_t>(t) * width + r;
    if (p.accumulate) y += dst[i];
    dst[i] = y;
}

}  // namespace tachyon

#endif  // TACHYON_GEMV_FUSED_CUH
