/*
 * sample_fallback.cuh: the one-block draw over the whole vocabulary, kept for the cases the
 * candidate path of sample_logits.cu cannot bound (more than kSampleCap candidates: a huge
 * top-k, a top-p set spread over most of the vocabulary, masses of exact ties at the top-k
 * threshold). It computes the same distribution from the logits alone; `w` is n floats of
 * scratch and `sm` the caller's shared memory (shared with the candidate sort).
 *
 * One block of 1024 threads, thread t owning the contiguous ids [t * seg, (t + 1) * seg), so
 * "lower id first" tie-breaks and the final draw are prefix sums over threads. Thresholds are
 * found by radix selection on the float bit patterns (8 bits per round, 4 rounds): exact,
 * with no sort. The top-p masses are sums of fixed-point weights (integer atomics), so the
 * cut does not depend on the order the atomics land in and a seeded draw reproduces; the
 * draw's running masses come from one serial scan, whose total is the one the draw scales by.
 * No candidate with mass (every logit -inf, or +inf ones making the weights NaN): the greedy
 * choice, the lowest id of the largest logit. About 8 reads of the n logits, from L2.
 */
#ifndef TACHYON_SAMPLE_FALLBACK_CUH
#define TACHYON_SAMPLE_FALLBACK_CUH

#include "pick.cuh"

namespace {

constexpr int kSampleThreads = 1024;

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

__device__ void fallback_draw(const SampleParams& p, const unsigned int* mask, float* w, SampleShared& sm) {
    __shared__ float red[32];
    const int n = p.n;
    const int seg = (n + blockDim.x - 1) / blockDim.x;
    const int lo = min(n, static_cast<int>(threadIdx.x) * seg);
    const int hi = min(n, lo + seg);

    // 1. Candidates: NaN and refused tokens never. work holds the logit, or -inf when excluded.
    float valid = 0.0f;
    for (int i = lo; i < hi; ++i) {
        const bool out = excluded(p, mask, i);
        w[i] = out ? -INFINITY : p.logits[i];
        valid += out ? 0.0f : 1.0f;
    }
    const float n_valid = block_reduce(valid, false, red);
    if (n_valid == 0.0f) {  // every candidate NaN or refused: nothing to pick
        if (threadIdx.x == 0) *p.out = TACHYON_NO_TOKEN;
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
        if (threadIdx.x == 0) *p.out = bi < 0 ? TACHYON_NO_TOKEN : static_cast<unsigned int>(bi);
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
        *p.out = static_cast<unsigned int>(pick < 0 ? 0 : pick);
    }
}

}  // namespace

#endif  // TACHYON_SAMPLE_FALLBACK_CUH
