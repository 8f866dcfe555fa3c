/*
 * sample_draw.cuh: what the draw's passes (sample_passes.cu) and its final block
 * (sample_logits.cu) share: the scratch layout, the modes, the weight of a token, the chunk
 * a block owns, a block scan. See sample_logits.cu for the algorithm.
 */
#ifndef TACHYON_SAMPLE_DRAW_CUH
#define TACHYON_SAMPLE_DRAW_CUH

#include "pick.cuh"

namespace {

constexpr int kPassThreads = 256;
constexpr int kDrawThreads = 1024;
constexpr int kBins = 2048;  // 11 key bits per level
constexpr int kCoarseShift = 21;
constexpr int kFineShift = 10;
constexpr int kSampleCap = 4096;                   // candidates the final block sorts
constexpr int kPerThread = kSampleCap / kDrawThreads;  // sorted candidates per thread
constexpr float kNoWeight = -110.0f;               // x below: expf(x) == 0 in f32

enum : unsigned int { kModeNone = 0, kModeGreedy = 1, kModeTopK = 2, kModeTopP = 3, kModeById = 4 };

// The scratch at the start of SampleParams::work. tests/cuda/sample.rs reads `mode` (word 8)
// and `cand_count` (word 3) back to check which path a draw took: keep them there.
struct SampleScratch {
    // Zero at rest.
    unsigned int done_scan, done_refine, n_valid, cand_count;
    unsigned long long best;  // (key << 32) | ~id: the largest key, then the lowest id
    unsigned long long zq;    // top-p: the total fixed-point mass
    // Decisions, written by the last blocks.
    unsigned int mode, bin, k_rem, lo_key;
    unsigned int best_id;
    float mx;
    unsigned long long z_all;
    unsigned int pad[16];  // the header is 32 words
    unsigned int count[kBins];        // zero at rest
    unsigned int fine[kBins];         // zero at rest
    unsigned long long mass[kBins];   // zero at rest
    unsigned long long part[TACHYON_SAMPLE_MAX_PARTS];
    unsigned long long cand[kSampleCap];
};
static_assert(sizeof(SampleScratch) == 4 * TACHYON_SAMPLE_SCRATCH_WORDS, "scratch layout");

__device__ __forceinline__ SampleScratch* scratch(const SampleParams& p) {
    return reinterpret_cast<SampleScratch*>(p.work);
}

__device__ __forceinline__ bool valid_token(float v, const unsigned int* mask, int i) {
    return !isnan(v) && allowed(mask, i);
}

// x = (v - max) / T: the exponent of a token's weight, the same expression everywhere.
__device__ __forceinline__ float weight_x(float v, float mx, float t) { return (v - mx) / t; }

// The fixed-point mass a by-id draw gives a valid token (min-p per token).
__device__ __forceinline__ unsigned long long drawable_q(float v, float mx, const SampleParams& p) {
    const float e = expf(weight_x(v, mx, p.temperature));
    return (p.min_p > 0.0f && e < p.min_p) ? 0ull : mass_q(e);
}

// The ids of block `b`'s chunk.
__device__ __forceinline__ void chunk_of(const SampleParams& p, int b, int& lo, int& hi) {
    const int chunk = ((p.n + p.n_parts - 1) / p.n_parts + 3) & ~3;
    lo = min(p.n, b * chunk);
    hi = min(p.n, lo + chunk);
}

// Exclusive prefix over the block's threads of one value each; `total` gets the sum.
template <int kThreads>
__device__ unsigned long long block_excl_scan(unsigned long long v, unsigned long long& total) {
    __shared__ unsigned long long warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    unsigned long long incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
    }
    __syncthreads();
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < kThreads / 32 ? warp_sums[lane] : 0ull;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long u = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += u;
        }
        warp_sums[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    total = warp_sums[kThreads / 32 - 1];
    const unsigned long long before = (warp > 0 ? warp_sums[warp - 1] : 0ull) + incl - v;
    __syncthreads();
    return before;
}

}  // namespace

#endif  // TACHYON_SAMPLE_DRAW_CUH
