/*
 * rmsnorm.cu: RMSNorm, with the residual add fused in front of it: `Ops::add_rmsnorm`
 * (`x += add`, then the norm of the new x) is what every decoder layer runs before its MLP
 * and before the next layer's attention; the plain form (add = NULL) is the first layer's
 * attention norm, the final norm and, per head, qwen3's q/k norm (`Ops::head_rmsnorm`).
 * Launched from src/backend/cuda/launch/norm.rs.
 *
 * Computes, for each row r of the residual stream x ([n_rows, dim] f32, row-major,
 * contiguous; see RmsNormParams in tachyon_kernels.h):
 *     if add != NULL:  x[r] = x[r] + add[r]               (written back to x)
 *     out[r] = (x[r] * rsqrt(sum(x[r]^2) / dim + eps)) * weight
 * all in f32 with f32 accumulation. The multiply order matches the CPU twin
 * backend::cpu::ops::rmsnorm, so the two differ only by summation order and rsqrtf's
 * <= 2 ulp.
 *
 * Layout: x, add and out are [n_rows, dim], weight is [dim]. out must not overlap x or add
 * (the Rust wrappers guarantee it: out is a separate &mut buffer). The float4 path is taken
 * when dim % 4 == 0 and every pointer is 16-byte aligned (true for whole cudarc
 * allocations, which are 256-byte aligned); otherwise the whole row goes through the scalar
 * path. An unaligned prologue/tail split was not worth its code: every model dimension
 * tachyon targets is a multiple of 4, and the scalar path exists for correctness.
 *
 * Launch shape: grid = (n_rows, 1, 1), one block per row; block = (T, 1, 1) with T a
 * multiple of 32 and <= 1024 (the wrapper uses 256: dim 4096 is then 4 float4 per thread).
 * No dynamic shared memory (32 floats static for the cross-warp sum).
 *
 * Programmatic dependent launch (kernels/README.md): the kernel's first statement triggers
 * the next kernel and waits for the previous ones (tachyon::pdl_trigger_then_wait); nothing
 * is read or written before it.
 *
 * Per row, bytes and flops:
 *   without add: reads x (4*dim) + weight (4*dim), writes out (4*dim).
 *                The second pass re-reads x and weight from cache (the row was just read;
 *                weight is shared by all rows), so DRAM traffic is 8*dim per row plus the
 *                weight once per launch. Flops: 2*dim (square-accumulate) + 2*dim (scale,
 *                gain) + 1 rsqrt.
 *   with add:    additionally reads add (4*dim) and writes x (4*dim): 16*dim DRAM bytes per
 *                row plus the weight once; 5*dim flops + 1 rsqrt.
 * Memory-bound by ~10x on any GPU; for a single row (decode) it is latency-bound: one block
 * on one SM, so the goal there is few dependent round trips (two passes, one barrier).
 *
 * Reductions: the warp sum is common.cuh's `warp_sum_f` (the butterfly every kernel file
 * shares); the block sum below is built on it.
 */
#include <stdint.h>

#include "common.cuh"

namespace {

using tachyon::kWarp;
using tachyon::warp_sum_f;

constexpr int kMaxThreads = 1024;

// Sum of v over the block, returned to every thread. blockDim.x must be a multiple of 32.
// Called once per kernel, so the shared array is never reused and one barrier is enough:
// after it every warp reads all the per-warp partials and reduces them itself (same order in
// every warp, so all threads get bit-identical results) instead of paying a second barrier
// to broadcast warp 0's answer.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[kMaxThreads / kWarp];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int n_warps = blockDim.x / kWarp;
    v = warp_sum_f(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return warp_sum_f(lane < n_warps ? partial[lane] : 0.0f);
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// One row. kAdd and kVec are template parameters so that each of the four variants is a
// straight loop with no per-element branches.
template <bool kAdd, bool kVec>
__device__ __forceinline__ void rmsnorm_row(const RmsNormParams& p) {
    const int dim = p.dim;
    const size_t base = static_cast<size_t>(blockIdx.x) * static_cast<size_t>(dim);
    float* __restrict__ x = p.x + base;
    const float* __restrict__ add = kAdd ? p.add + base : nullptr;
    const float* __restrict__ weight = p.weight;
    float* __restrict__ out = p.out + base;

    // Pass 1: x (+= add), sum of squares. Each thread touches the same indices in pass 2,
    // so it re-reads only values it wrote itself: no barrier needed between the passes for
    // x beyond the one inside block_sum.
    //
    // x is written in pass 1 (kAdd) and read again in pass 2, so both passes go through the
    // one non-const pointer: a second `const __restrict__` alias of x would let the compiler
    // use the non-coherent read-only path (ld.global.nc) for data this kernel wrote.
    const int n4 = dim / 4;
    float4* __restrict__ x4 = reinterpret_cast<float4*>(x);
    float ss = 0.0f;
    if (kVec) {
        const float4* __restrict__ a4 = reinterpret_cast<const float4*>(add);
#pragma unroll 4
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 v = x4[i];
            if (kAdd) {
                v = add4(v, a4[i]);
                x4[i] = v;
            }
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) {
            float v = x[i];
            if (kAdd) {
                v += add[i];
                x[i] = v;
            }
            ss += v * v;
        }
    }

    // IEEE division (no fast math): mean is rounded exactly like the CPU twin's.
    const float scale = rsqrtf(block_sum(ss) / static_cast<float>(dim) + p.eps);

    // Pass 2: out = (x * scale) * weight.
    if (kVec) {
        const float4* __restrict__ w4 = reinterpret_cast<const float4*>(weight);
        float4* __restrict__ o4 = reinterpret_cast<float4*>(out);
#pragma unroll 4
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            const float4 v = x4[i];
            const float4 w = w4[i];
            o4[i] = make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z,
                                v.w * scale * w.w);
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) {
            out[i] = x[i] * scale * weight[i];
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_residual_f32(const RmsNormParams p) {
    tachyon::pdl_trigger_then_wait();
    // The grid is exactly n_rows blocks; the check only guards a mis-sized launch. It is
    // uniform across the block, so returning here cannot strand a barrier.
    if (static_cast<int>(blockIdx.x) >= p.n_rows) return;
    const uintptr_t ptr_bits = reinterpret_cast<uintptr_t>(p.x) |
                               reinterpret_cast<uintptr_t>(p.add) |
                               reinterpret_cast<uintptr_t>(p.weight) |
                               reinterpret_cast<uintptr_t>(p.out);
    const bool vec = (p.dim % 4 == 0) && (ptr_bits % 16 == 0);
    if (p.add != nullptr) {
        if (vec) rmsnorm_row<true, true>(p);
        else rmsnorm_row<true, false>(p);
    } else {
        if (vec) rmsnorm_row<false, true>(p);
        else rmsnorm_row<false, false>(p);
    }
}
