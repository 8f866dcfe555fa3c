/*
 * pick.cuh: the token-pick helpers shared by sample.cu (argmax) and sample_logits.cu (the
 * draw): the (value, index) order, a block's best, the token mask, the float sort key and
 * the fixed-point masses. Guarded, so the one-translation-unit build sees them once.
 */
#ifndef TACHYON_PICK_CUH
#define TACHYON_PICK_CUH

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

// Whether `mask` allows token k (a null mask allows every token).
__device__ __forceinline__ bool allowed(const unsigned int* mask, int k) {
    return mask == nullptr || ((mask[k >> 5] >> (k & 31)) & 1u) != 0u;
}

// Order-preserving map of a float to an unsigned int (larger float, larger key; -0 below +0,
// as the CPU sampler's total_cmp orders them).
__device__ __forceinline__ unsigned int float_key(float v) {
    const unsigned int b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The float a key came from.
__device__ __forceinline__ float key_float(unsigned int key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Fixed-point unit of the masses: weights are <= 1 (the best token weighs 1), so a
// vocabulary of up to 2^23 ids sums below 2^63. Integer sums do not depend on the order in
// which the additions (or atomics) land, which is what keeps a seeded draw reproducible.
constexpr double kMassUnit = 1099511627776.0;  // 2^40

__device__ __forceinline__ unsigned long long mass_q(float w) {
    return static_cast<unsigned long long>(static_cast<double>(w) * kMassUnit + 0.5);
}

}  // namespace

// A draw's parameters with the filters of `p.cfg` when it is set (see SampleParams): each
// sampling kernel starts from these, so all of them see the same settings.
__device__ __forceinline__ SampleParams with_config(const SampleParams& p) {
    SampleParams q = p;
    if (p.cfg != nullptr) {
        q.top_k = min(max(p.cfg->top_k, 0), p.n);
        q.temperature = p.cfg->temperature;
        q.top_p = p.cfg->top_p;
        q.min_p = p.cfg->min_p;
    }
    return q;
}

#endif  // TACHYON_PICK_CUH
