/*
 * sample_passes.cu: the draw's three passes over the vocabulary, `sample_scan`,
 * `sample_refine` and `sample_compact` (and `_masked`); grid = (n_parts), block = (256).
 * What they compute, and why the cut and the draw are exact and reproducible: see the
 * header of sample_logits.cu. (A file of its own: the emulated device counts every
 * __shared__ of a file against each of its kernels.)
 * Programmatic dependent launch (kernels/README.md): every kernel here triggers the next and
 * waits for the previous ones first (tachyon::pdl_trigger_then_wait), before any access.
 */
#include "sample_draw.cuh"

namespace {

// f(i, v) for every id of this block's chunk: coalesced, 16-byte loads when aligned.
template <class F>
__device__ __forceinline__ void for_chunk(const SampleParams& p, F f) {
    int lo, hi;
    chunk_of(p, blockIdx.x, lo, hi);
    const bool aligned = (reinterpret_cast<uintptr_t>(p.logits) & 15u) == 0;
    for (int i = lo + 4 * static_cast<int>(threadIdx.x); i < hi; i += 4 * blockDim.x) {
        if (aligned && i + 3 < hi) {
            const float4 v = *reinterpret_cast<const float4*>(p.logits + i);
            f(i, v.x);
            f(i + 1, v.y);
            f(i + 2, v.z);
            f(i + 3, v.w);
        } else {
            for (int j = i; j < min(hi, i + 4); ++j) f(j, p.logits[j]);
        }
    }
}

// Whether this block is the last of the grid to arrive at `done` (after its global writes).
__device__ bool last_block(unsigned int* done) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// Scanning bins from the top (kPassThreads threads, kBins values): the bin where the running
// sum first reaches `target` (>= 1), and the sum of the bins above it. kBins - 1 if never.
__device__ void find_crossing(const volatile unsigned int* cnt, const volatile unsigned long long* mass,
                              unsigned long long target, unsigned int& bin, unsigned long long& above) {
    __shared__ unsigned int s_bin;
    __shared__ unsigned long long s_above;
    constexpr int kPer = kBins / kPassThreads;
    // Thread t holds the bins kBins - 1 - (t * kPer + j), j < kPer: descending.
    unsigned long long v[kPer], sum = 0;
    for (int j = 0; j < kPer; ++j) {
        const int b = kBins - 1 - (static_cast<int>(threadIdx.x) * kPer + j);
        v[j] = cnt ? cnt[b] : mass[b];
        sum += v[j];
    }
    if (threadIdx.x == 0) {
        s_bin = kBins - 1;
        s_above = 0;
    }
    unsigned long long total;
    unsigned long long acc = block_excl_scan<kPassThreads>(sum, total);
    // At most one bin crosses: the one where acc goes from < target to >= target.
    for (int j = 0; j < kPer; ++j) {
        if (acc < target && acc + v[j] >= target) {
            s_bin = kBins - 1 - (threadIdx.x * kPer + j);
            s_above = acc;
        }
        acc += v[j];
    }
    __syncthreads();
    bin = s_bin;
    above = s_above;
    __syncthreads();
}

// Pass 1.
__device__ void scan_body(const SampleParams& p, const unsigned int* mask) {
    SampleScratch* s = scratch(p);
    __shared__ unsigned int hist[kBins];
    __shared__ unsigned long long s_best;
    __shared__ unsigned int s_count;
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0;
    if (threadIdx.x == 0) {
        s_best = 0;
        s_count = 0;
    }
    __syncthreads();
    unsigned long long best = 0;
    unsigned int count = 0;
    for_chunk(p, [&](int i, float v) {
        if (!valid_token(v, mask, i)) return;
        const unsigned int key = float_key(v);
        atomicAdd(&hist[key >> kCoarseShift], 1u);
        ++count;
        const unsigned long long c = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - i);
        best = c > best ? c : best;
    });
    if (count > 0) {
        atomicMax(&s_best, best);
        atomicAdd(&s_count, count);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += blockDim.x)
        if (hist[b] != 0) atomicAdd(&s->count[b], hist[b]);
    if (threadIdx.x == 0 && s_count > 0) {
        atomicAdd(&s->n_valid, s_count);
        atomicMax(&s->best, s_best);
    }
    if (!last_block(&s->done_scan)) return;

    // The last block: the mode, then the counters back to zero for the next draw.
    volatile SampleScratch* vs = s;
    const unsigned int n_valid = vs->n_valid;
    const unsigned long long b = vs->best;
    const unsigned int key = static_cast<unsigned int>(b >> 32);
    const float mx = key_float(key);
    unsigned int mode = kModeTopP;
    if (n_valid == 0) {
        mode = kModeNone;
    } else if (!isfinite(mx)) {
        mode = kModeGreedy;  // -inf: every weight NaN; +inf: the others 0, the best NaN
    } else if (p.top_k > 0 && static_cast<unsigned int>(p.top_k) < n_valid) {
        mode = kModeTopK;
    } else if (!(p.top_p < 1.0f)) {
        mode = kModeById;
    }
    unsigned int bin = 0;
    unsigned long long above = 0;
    if (mode == kModeTopK)  // uniform across the block: every thread takes part
        find_crossing(vs->count, nullptr, static_cast<unsigned long long>(p.top_k), bin, above);
    if (threadIdx.x == 0) {
        s->mode = mode;
        s->bin = bin;
        s->k_rem = static_cast<unsigned int>(static_cast<unsigned long long>(p.top_k) - above);
        s->best_id = 0xffffffffu - static_cast<unsigned int>(b & 0xffffffffu);
        s->mx = mx;
        s->n_valid = 0;
        s->best = 0;
        s->cand_count = 0;
        s->done_scan = 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) s->count[i] = 0;
}

// Pass 2.
__device__ void refine_body(const SampleParams& p, const unsigned int* mask) {
    SampleScratch* s = scratch(p);
    const unsigned int mode = s->mode;
    if (mode != kModeTopK && mode != kModeTopP && mode != kModeById) return;  // grid-uniform
    const float mx = s->mx;
    const unsigned int bin = s->bin;
    __shared__ unsigned int fine[kBins];
    __shared__ unsigned long long mass[kBins];
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
        fine[b] = 0;
        mass[b] = 0;
    }
    __syncthreads();
    unsigned long long local = 0;
    for_chunk(p, [&](int i, float v) {
        if (!valid_token(v, mask, i)) return;
        const unsigned int key = float_key(v);
        if (mode == kModeTopK) {
            if ((key >> kCoarseShift) == bin) atomicAdd(&fine[(key >> kFineShift) & (kBins - 1)], 1u);
        } else if (mode == kModeTopP) {
            const unsigned long long q = mass_q(expf(weight_x(v, mx, p.temperature)));
            if (q != 0) atomicAdd(&mass[key >> kCoarseShift], q);
            local += q;
        } else {
            local += drawable_q(v, mx, p);
        }
    });
    unsigned long long block_total;
    block_excl_scan<kPassThreads>(local, block_total);
    if (mode == kModeById) {
        if (threadIdx.x == 0) s->part[blockIdx.x] = block_total;
        return;  // nothing to decide: the final block reads the parts
    }
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
        if (fine[b] != 0) atomicAdd(&s->fine[b], fine[b]);
        if (mass[b] != 0) atomicAdd(&s->mass[b], mass[b]);
    }
    if (threadIdx.x == 0 && block_total != 0) atomicAdd(&s->zq, block_total);
    if (!last_block(&s->done_refine)) return;

    volatile SampleScratch* vs = s;
    unsigned int lo_key;
    unsigned long long z = 0, above;
    unsigned int b;
    if (mode == kModeTopK) {
        find_crossing(vs->fine, nullptr, s->k_rem, b, above);
        lo_key = (bin << kCoarseShift) | (b << kFineShift);
    } else {
        z = vs->zq;
        const unsigned long long target = static_cast<unsigned long long>(static_cast<double>(p.top_p) *
                                                                          static_cast<double>(z));
        find_crossing(nullptr, vs->mass, target > 0 ? target : 1ull, b, above);
        lo_key = b << kCoarseShift;
    }
    if (threadIdx.x == 0) {
        s->lo_key = lo_key;
        s->z_all = z;
        s->zq = 0;
        s->done_refine = 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) {
        s->fine[i] = 0;
        s->mass[i] = 0;
    }
}

// Pass 3.
__device__ void compact_body(const SampleParams& p, const unsigned int* mask) {
    SampleScratch* s = scratch(p);
    const unsigned int mode = s->mode;
    if (mode != kModeTopK && mode != kModeTopP) return;
    const float mx = s->mx;
    const unsigned int lo_key = s->lo_key;
    // Top-p (no top-k cut, the total already known): min-p survivors only, a superset of them.
    const float x_cut = (mode == kModeTopP && p.min_p > 0.0f) ? fmaxf(kNoWeight, logf(p.min_p) - 0.01f) : kNoWeight;
    for_chunk(p, [&](int i, float v) {
        if (!valid_token(v, mask, i)) return;
        const unsigned int key = float_key(v);
        if (key < lo_key || !(weight_x(v, mx, p.temperature) >= x_cut)) return;
        const unsigned int at = atomicAdd(&s->cand_count, 1u);
        if (at < kSampleCap) s->cand[at] = (static_cast<unsigned long long>(~key) << 32) | static_cast<unsigned int>(i);
    });
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kPassThreads) sample_scan(const SampleParams p) {
    tachyon::pdl_trigger_then_wait();
    scan_body(with_config(p), nullptr);
}

extern "C" __global__ void __launch_bounds__(kPassThreads) sample_refine(const SampleParams p) {
    tachyon::pdl_trigger_then_wait();
    refine_body(with_config(p), nullptr);
}

extern "C" __global__ void __launch_bounds__(kPassThreads) sample_compact(const SampleParams p) {
    tachyon::pdl_trigger_then_wait();
    compact_body(with_config(p), nullptr);
}

// The same passes among the tokens the mask allows: the CPU sampler's distribution over the
// allowed tokens, renormalized (refused tokens are excluded before top-k counts them).
extern "C" __global__ void __launch_bounds__(kPassThreads) sample_scan_masked(const MaskedSampleParams p) {
    tachyon::pdl_trigger_then_wait();
    scan_body(with_config(p.base), p.mask);
}

extern "C" __global__ void __launch_bounds__(kPassThreads) sample_refine_masked(const MaskedSampleParams p) {
    tachyon::pdl_trigger_then_wait();
    refine_body(with_config(p.base), p.mask);
}

extern "C" __global__ void __launch_bounds__(kPassThreads) sample_compact_masked(const MaskedSampleParams p) {
    tachyon::pdl_trigger_then_wait();
    compact_body(with_config(p.base), p.mask);
}

