/*
 * sample.cu: greedy token choice on the device, so the logits never leave it: the index of
 * the largest logit, lowest index on ties, NaN never chosen (the CPU sampler's `argmax`).
 *
 * Two launches: argmax_partial, grid = (n_parts <= 1024), block = (256): each block scans a
 * grid-stride share of the logits and writes its best (value, index); argmax_final, grid =
 * (1), block = (1024): merges the n_parts candidates and writes the token id.
 * Bytes: 4 * n read (600 KB for a 152k vocabulary) + 8 * n_parts; no flops to speak of.
 * Spreading the read over many SMs is the point: one SM alone streams ~100-200 GB/s.
 *
 * Masked picks (`argmax_partial_masked`, `sample_logits_masked`): a constrained step's
 * allowed tokens as a bitmask of ceil(n / 32) words (bit k % 32 of word k / 32 allows token
 * k), uploaded by the host while the forward pass runs. A refused token is no candidate at
 * all, as a NaN logit is (not a -inf one: an allowed -inf logit still beats nothing), so a
 * step whose allowed logits are all NaN picks TACHYON_NO_TOKEN. The mask adds n / 8 bytes
 * read (19 KB for a 152k vocabulary), each word shared by 32 neighbouring ids.
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

// Whether `mask` allows token k (a null mask allows every token).
__device__ __forceinline__ bool allowed(const unsigned int* mask, int k) {
    return mask == nullptr || ((mask[k >> 5] >> (k & 31)) & 1u) != 0u;
}

__device__ __forceinline__ void argmax_partial_body(const ArgmaxParams& p, const unsigned int* mask) {
    float bv = NAN;
    int bi = -1;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < p.n; k += gridDim.x * blockDim.x) {
        const float v = p.logits[k];
        if (allowed(mask, k) && better(v, k, bv, bi)) {
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

}  // namespace

extern "C" __global__ void __launch_bounds__(1024) argmax_partial(const ArgmaxParams p) {
    argmax_partial_body(p, nullptr);
}

// The partials of the allowed tokens only; argmax_final merges them as it merges unmasked ones.
extern "C" __global__ void __launch_bounds__(1024) argmax_partial_masked(const MaskedArgmaxParams p) {
    argmax_partial_body(p.base, p.mask);
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
    if (threadIdx.x == 0) {
        const unsigned int tok = bi < 0 ? TACHYON_NO_TOKEN : static_cast<unsigned int>(bi);
        *p.out = tok;
        tachyon::advance_step(p.advance, tok);
    }
}

/*
 * sample_logits: one token drawn with top-k / temperature / min-p / top-p, on the device.
 *
 * Launch: grid = (1), block = (1024). Static shared memory ~13 KB. One block on purpose:
 * every step needs a block-wide decision (a threshold, a prefix sum), and a vocabulary of
 * 152k floats (600 KB, L2-resident after the LM head wrote it) is a few passes of ~150
 * values per thread. Thread t owns the contiguous ids [t * seg, (t + 1) * seg), so "lower
 * id first" tie-breaks and the final draw are prefix sums over threads.
 * Thresholds are found by radix selection on the float bit patterns (8 bits per round, 4
 * rounds): exact, with no sort. The top-p masses are sums of fixed-point weights (integer
 * atomics, 2^-40 units), so the cut does not depend on the order the atomics land in and a
 * seeded draw reproduces; the draw's running masses come from one serial scan, whose total
 * is the one the draw scales by.
 * No candidate with mass (every logit -inf, or +inf ones making the weights NaN): the
 * greedy choice, the lowest id of the largest logit, never the token of an earlier call.
 * Bytes: ~8 passes over the n logits (4 bytes each), from L2. Flops: one exp per logit.
 */
namespace {

constexpr int kSampleThreads = 1024;

// Order-preserving map of a float to an unsigned int (larger float, larger key).
__device__ __forceinline__ unsigned int float_key(float v) {
    const unsigned int b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Fixed-point unit of the top-p masses: weights are <= 1 (the best token weighs 1), so a
// vocabulary of up to 2^23 ids sums below 2^63.
constexpr double kMassUnit = 1099511627776.0;  // 2^40

__device__ __forceinline__ unsigned long long mass_q(float w) {
    return static_cast<unsigned long long>(static_cast<double>(w) * kMassUnit + 0.5);
}

struct SampleShared {
    unsigned int hist[256];
    unsigned long long mass[256];
    float seg_f[kSampleThreads];
    unsigned int seg_u[kSampleThreads];
    unsigned long long seg_q[kSampleThreads];
    unsigned long long target_q;
    unsigned int prefix;
    unsigned int remaining;
    float target;
    float total;
    int owner;
    float r;
};

// Block sum / max of one value per thread (result valid in every thread).
__device__ float block_reduce(float v, bool is_max, float* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    return v;
}

// Exclusive prefix over threads of per-thread values in sm.seg_u / sm.seg_f (serial in
// thread 0: 1024 adds, simple and exact in order).
__device__ void scan_u(SampleShared& sm) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int acc = 0;
        for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
            const unsigned int v = sm.seg_u[t];
            sm.seg_u[t] = acc;
            acc += v;
        }
    }
    __syncthreads();
}

__device__ void scan_q(SampleShared& sm) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long acc = 0;
        for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
            const unsigned long long v = sm.seg_q[t];
            sm.seg_q[t] = acc;
            acc += v;
        }
    }
    __syncthreads();
}

// Also leaves the sum of all values in sm.total: the draw must scale by the same sum its
// ranges come from (a tree reduction rounds differently and could land past them).
__device__ void scan_f(SampleShared& sm) {
    __syncthreads();
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
            const float v = sm.seg_f[t];
            sm.seg_f[t] = acc;
            acc += v;
        }
        sm.total = acc;
    }
    __syncthreads();
}

}  // namespace

namespace {

// A token that is no candidate: a NaN logit, or one the mask refuses.
__device__ __forceinline__ bool excluded(const SampleParams& p, const unsigned int* mask, int i) {
    return isnan(p.logits[i]) || !allowed(mask, i);
}

__device__ __forceinline__ void sample_body(const SampleParams& p, const unsigned int* mask) {
    __shared__ SampleShared sm;
    __shared__ float red[32];
    const int n = p.n;
    const int seg = (n + blockDim.x - 1) / blockDim.x;
    const int lo = min(n, static_cast<int>(threadIdx.x) * seg);
    const int hi = min(n, lo + seg);
    float* w = p.work;

    // 1. Candidates: NaN and refused tokens never. work holds the logit, or -inf when excluded.
    float valid = 0.0f;
    for (int i = lo; i < hi; ++i) {
        const bool out = excluded(p, mask, i);
        w[i] = out ? -INFINITY : p.logits[i];
        valid += out ? 0.0f : 1.0f;
    }
    const float n_valid = block_reduce(valid, false, red);
    if (n_valid == 0.0f) {  // every candidate NaN or refused: nothing to pick
        if (threadIdx.x == 0) {
            *p.out = TACHYON_NO_TOKEN;
            tachyon::advance_step(p.advance, TACHYON_NO_TOKEN);
        }
        return;
    }

    // 2. top-k: radix-select the k-th largest key, then keep ties by lower id.
    if (p.top_k > 0 && static_cast<float>(p.top_k) < n_valid) {
        if (threadIdx.x == 0) {
            sm.prefix = 0;
            sm.remaining = static_cast<unsigned int>(p.top_k);
        }
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = threadIdx.x; b < 256; b += blockDim.x) sm.hist[b] = 0;
            __syncthreads();
            const unsigned int high_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
            for (int i = lo; i < hi; ++i) {
                if (excluded(p, mask, i)) continue;
                const unsigned int key = float_key(w[i]);
                if ((key & high_mask) == (sm.prefix & high_mask)) atomicAdd(&sm.hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                unsigned int rem = sm.remaining;
                int b = 255;
                for (; b > 0; --b) {
                    if (sm.hist[b] >= rem) break;
                    rem -= sm.hist[b];
                }
                sm.prefix |= static_cast<unsigned int>(b) << shift;
                sm.remaining = rem;
            }
            __syncthreads();
        }
        const unsigned int kth = sm.prefix;
        const unsigned int ties_wanted = sm.remaining;
        unsigned int ties = 0;
        for (int i = lo; i < hi; ++i) ties += (!excluded(p, mask, i) && float_key(w[i]) == kth) ? 1u : 0u;
        sm.seg_u[threadIdx.x] = ties;
        scan_u(sm);
        unsigned int rank = sm.seg_u[threadIdx.x];
        for (int i = lo; i < hi; ++i) {
            if (excluded(p, mask, i)) continue;
            const unsigned int key = float_key(w[i]);
            if (key < kth || (key == kth && rank++ >= ties_wanted)) w[i] = -INFINITY;
        }
        __syncthreads();
    }

    // 3. Softmax weights at the temperature (unnormalized; the best token weighs 1).
    float mx = -INFINITY;
    for (int i = lo; i < hi; ++i) mx = fmaxf(mx, w[i]);
    mx = block_reduce(mx, true, red);
    float z_local = 0.0f, kept_local = 0.0f;
    for (int i = lo; i < hi; ++i) {
        const float v = w[i];
        float e = v == -INFINITY ? 0.0f : expf((v - mx) / p.temperature);
        z_local += e;
        // 4. min-p: less than min_p times the best token's probability.
        if (p.min_p > 0.0f && e < p.min_p) e = 0.0f;
        kept_local += e;
        w[i] = e;
    }
    // The CPU sampler normalizes before min-p and does not renormalize after it, so top-p's
    // mass is measured against the sum before min-p.
    const float z_all = block_reduce(z_local, false, red);
    const float z_kept = block_reduce(kept_local, false, red);

    // 5. top-p: radix-select the weight where the descending mass reaches top_p (when the
    // kept mass never reaches it, everything kept stays, as on the CPU).
    if (p.top_p < 1.0f && p.top_p * z_all < z_kept) {
        if (threadIdx.x == 0) {
            sm.prefix = 0;
            // Mass still to reach, above the bins chosen so far (fixed point).
            sm.target_q = static_cast<unsigned long long>(static_cast<double>(p.top_p) *
                                                          static_cast<double>(z_all) * kMassUnit);
        }
        // Weights are >= 0, so their bit patterns order like the values.
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = threadIdx.x; b < 256; b += blockDim.x) sm.mass[b] = 0;
            __syncthreads();
            const unsigned int high_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
            for (int i = lo; i < hi; ++i) {
                const unsigned int key = __float_as_uint(w[i]);
                if (w[i] > 0.0f && (key & high_mask) == (sm.prefix & high_mask))
                    atomicAdd(&sm.mass[(key >> shift) & 255u], mass_q(w[i]));
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                unsigned long long need = sm.target_q;
                int b = 255;
                for (; b > 0; --b) {
                    if (sm.mass[b] >= need) break;
                    need -= sm.mass[b];
                }
                sm.prefix |= static_cast<unsigned int>(b) << shift;
                sm.target_q = need;
            }
            __syncthreads();
        }
        const unsigned int cut = sm.prefix;
        const unsigned long long need_at_cut = sm.target_q;
        // Ties at the cut, by lower id, until the mass is reached (the CPU's stopping rule:
        // a token is kept if the mass before it had not reached top_p).
        unsigned long long tie_mass = 0;
        for (int i = lo; i < hi; ++i)
            tie_mass += (w[i] > 0.0f && __float_as_uint(w[i]) == cut) ? mass_q(w[i]) : 0ull;
        sm.seg_q[threadIdx.x] = tie_mass;
        scan_q(sm);
        unsigned long long before = sm.seg_q[threadIdx.x];
        for (int i = lo; i < hi; ++i) {
            if (w[i] <= 0.0f) continue;
            const unsigned int key = __float_as_uint(w[i]);
            if (key < cut) {
                w[i] = 0.0f;
            } else if (key == cut) {
                const unsigned long long q = mass_q(w[i]);
                if (before >= need_at_cut && before > 0) w[i] = 0.0f;
                before += q;
            }
        }
        __syncthreads();
    }

    // 6. Draw: r uniform in [0, total), the token where the running mass (by id) passes r.
    // A weight that is not a finite number >= 0 (+inf logits) counts as no mass.
    float local = 0.0f;
    for (int i = lo; i < hi; ++i) {
        if (!(w[i] >= 0.0f && w[i] <= 1.0f)) w[i] = 0.0f;
        local += w[i];
    }
    sm.seg_f[threadIdx.x] = local;
    scan_f(sm);
    const float total = sm.total;
    if (!(total > 0.0f)) {
        // No candidate has mass: the greedy choice among the candidates (not NaN, allowed).
        float bv = NAN;
        int bi = -1;
        for (int i = lo; i < hi; ++i) {
            const float v = p.logits[i];
            if (allowed(mask, i) && better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        block_best(bv, bi);
        if (threadIdx.x == 0) {
            const unsigned int tok = bi < 0 ? TACHYON_NO_TOKEN : static_cast<unsigned int>(bi);
            *p.out = tok;
            tachyon::advance_step(p.advance, tok);
        }
        return;
    }
    if (threadIdx.x == 0) {
        unsigned long long z = (*p.rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = static_cast<float>(z >> 40) / 16777216.0f;
        sm.r = u * total;
        // The last thread with mass whose range starts at or below r owns the draw.
        int owner = -1;
        for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
            const float base = sm.seg_f[t];
            const float next = t + 1 < static_cast<int>(blockDim.x) ? sm.seg_f[t + 1] : total;
            if (next > base && base <= sm.r) owner = t;
        }
        sm.owner = owner;
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) == sm.owner) {
        float acc = sm.seg_f[threadIdx.x];
        int pick = -1;
        for (int i = lo; i < hi; ++i) {
            if (w[i] <= 0.0f) continue;
            pick = i;  // rounding past the end keeps the last kept token
            acc += w[i];
            if (acc > sm.r) break;
        }
        const unsigned int tok = static_cast<unsigned int>(pick < 0 ? 0 : pick);
        *p.out = tok;
        tachyon::advance_step(p.advance, tok);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kSampleThreads) sample_logits(const SampleParams p) {
    sample_body(p, nullptr);
}

// The same draw among the tokens the mask allows: the CPU sampler's distribution over the
// allowed tokens, renormalized (refused tokens are excluded before top-k counts them).
extern "C" __global__ void __launch_bounds__(kSampleThreads) sample_logits_masked(const MaskedSampleParams p) {
    sample_body(p.base, p.mask);
}
