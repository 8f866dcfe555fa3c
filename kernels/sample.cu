/*
 * sample.cu: greedy token choice on the device, so the logits never leave it: the index of
 * the largest logit, lowest index on ties, NaN never chosen (the CPU sampler's `argmax`).
 *
 * Two launches: argmax_partial, grid = (n_parts <= 1024), block = (256): each block scans a
 * grid-stride share of the logits and writes its best (value, index); argmax_final, grid =
 * (1), block = (1024): merges the n_parts candidates and writes the token id.
 * Bytes: 4 * n read (600 KB for a 152k vocabulary) + 8 * n_parts; no flops to speak of.
 * Spreading the read over many SMs is the point: one SM alone streams ~100-200 GB/s.
 */
#include <math.h>

#include "common.cuh"

namespace {

// (value, index) ordering: larger value wins, then lower index. NaN is never better.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    if (isnan(v)) return false;
    if (isnan(bv) || bi < 0) return true;
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void block_best(float& v, int& i) {
    __shared__ float sv[32];
    __shared__ int si[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x / 32;
        v = lane < n_warps ? sv[lane] : NAN;
        i = lane < n_warps ? si[lane] : -1;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, o);
            const int oi = __shfl_xor_sync(0xffffffffu, i, o);
            if (better(ov, oi, v, i)) {
                v = ov;
                i = oi;
            }
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(1024) argmax_partial(const ArgmaxParams p) {
    float bv = NAN;
    int bi = -1;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < p.n; k += gridDim.x * blockDim.x) {
        const float v = p.logits[k];
        if (better(v, k, bv, bi)) {
            bv = v;
            bi = k;
        }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) {
        p.part_val[blockIdx.x] = bv;
        p.part_idx[blockIdx.x] = bi;
    }
}

extern "C" __global__ void __launch_bounds__(1024) argmax_final(const ArgmaxParams p) {
    float bv = NAN;
    int bi = -1;
    for (int k = threadIdx.x; k < p.n_parts; k += blockDim.x) {
        const float v = p.part_val[k];
        const int i = p.part_idx[k];
        if (i >= 0 && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) *p.out = bi < 0 ? 0u : static_cast<unsigned int>(bi);
}
