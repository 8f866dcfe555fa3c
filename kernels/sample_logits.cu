/*
 * sample_logits.cu: one token drawn on the device with the CPU sampler's filters (top-k,
 * softmax at the temperature, min-p, top-p; src/engine/sampler.rs `distribution`), in at most
 * 3 coalesced passes over the vocabulary (sample_passes.cu), then a sort and scan among a
 * few candidates in one block (this file).
 *
 * Launches, in this order, with the same SampleParams (shapes depend on the vocabulary size
 * n alone, never on the filter values, which every kernel reads from the parameters;
 * n_parts = ceil(n / 4096), at most TACHYON_SAMPLE_MAX_PARTS):
 *   1. sample_scan     grid (n_parts), block (256), block b reading its contiguous chunk of
 *      ids with 16-byte loads. Per token, valid = a number the mask allows. The best (key,
 *      lowest id) and the count of valid tokens (integer atomics), and a histogram of the top
 *      11 bits of the float keys (shared, then added to L2 bin by bin). The last block to
 *      finish (threadfence + counter) picks the mode: no token (nothing valid), greedy (the
 *      best logit is -inf, making every weight NaN, or +inf, making its own weight NaN: no
 *      candidate has mass, so the lowest id of the best logit, as before), top-k (0 < k <
 *      valid count: the coarse bin holding the k-th key), by id (no top-k, top_p = 1), top-p.
 *   2. sample_refine   same grid, knowing the max: top-k: a histogram of the next 11 key bits
 *      inside that coarse bin; top-p: each token's fixed-point mass, per coarse bin and in
 *      total; by id: each block's sum of drawable masses. The last block fixes the candidate
 *      key threshold: the fine bin holding the k-th key, or the coarse bin where the mass
 *      (descending) reaches top_p times the total.
 *   3. sample_compact  same grid: top-k / top-p: each valid token with a key at or above the
 *      threshold and a weight that can be non-zero appends (key, id) to kSampleCap slots
 *      (positions from an integer atomic; the sort undoes their order).
 *   4. sample_logits   grid (1), block (1024): sorts the candidates by (logit desc, id asc)
 *      (bitonic, in shared memory), applies top-k exactly, the weights, min-p, top-p and the
 *      draw as block scans among them. By id: the block whose mass range holds the draw is
 *      found from the per-block sums, and only its chunk (n / n_parts ids) is read again.
 *      More than kSampleCap candidates (a top-k above 4096, more than 4096 exact ties at the
 *      k-th logit, a top-p set spread over more than 4096 ids): the one-block radix draw over
 *      the whole vocabulary (sample_fallback.cuh), correct and ~8 passes slower.
 * Bytes: each pass reads the 4n bytes of logits once (and n / 8 bytes of mask); pass 1 adds
 * at most 2048 bin atomics per block, pass 2 as many, pass 3 writes 8 bytes per candidate, the
 * final block reads those (or 4n / n_parts bytes by id). For a 151,936-id vocabulary: 600 KB
 * per pass, L2-resident after the LM head wrote it, spread over 38 blocks of 16 KB each, so a
 * pass should be bound by its launch and one block's latency (a few microseconds in a graph)
 * rather than by bandwidth, where the single block of the previous kernel streamed ~8 x 600
 * KB through one SM. Expected, not measured: nothing here has run on a GPU.
 *
 * Why the cut is exact: the candidates are always a prefix of the sort order (a key threshold,
 * and x = (v - max) / T >= a cut, both monotone in the logit), so ranks among them are global
 * ranks and top-k ties break by id as on the CPU. A token with x < -110 has expf(x) = 0 in f32
 * (below 2^-149, and 0 for the CPU's exp too): it weighs nothing on either side, so dropping
 * it changes no mass and no rank that matters. Top-p: every token above the coarse bin where
 * the mass reaches the target is kept (the mass before it is below the target), and none below
 * it (the mass before it has reached the target); min-p keeps the prefix of tokens with weight
 * >= min_p (the CPU's rule), which only shortens that, so top-p candidates also need x >=
 * ln(min_p) - 0.01 (a superset of those). Top-p's mass is measured against the total before
 * min-p: over every valid token (pass 2), or over the top k (the final block) under top-k.
 * By id, min-p drops each token below it (the previous kernel's rule; the same set unless
 * expf were not monotone).
 *
 * Why a seed reproduces the draw: every decision comes from integer counts and fixed-point
 * masses (2^-40 units) whose sums do not depend on the order atomics land in; the candidates
 * are sorted before use; the draw is r = floor(u * Q) with u the 24-bit SplitMix64 number
 * (state += 0x9E3779B97F4A7C15, mix, top 24 bits, as the tests' `device_draw_bits`) and Q the
 * integer kept mass, and the token is the one whose integer mass range holds r (so r can never
 * land past the last token with mass). The state advances once per draw, not on the no-token
 * and greedy paths, as before.
 *
 * Scratch: TACHYON_SAMPLE_SCRATCH_WORDS words (SampleScratch) then n for the fallback, zero
 * before the first draw. The counters, histograms and masses return to zero: the last block of
 * each pass zeroes what it read, and sample_scan's last block zeroes the candidate count
 * before sample_compact runs, so a replayed graph needs no host work.
 * Programmatic dependent launch (kernels/README.md): every kernel here triggers the next and
 * waits for the previous ones first (tachyon::pdl_trigger_then_wait), before any access.
 */
#include "sample_draw.cuh"
#include "sample_fallback.cuh"

namespace {

// The uniform draw: r = floor(u * q) for u the 24-bit SplitMix64 number, so r < q. Thread 0.
__device__ unsigned long long draw_below(const SampleParams& p, unsigned long long q) {
    unsigned long long z = (*p.rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const unsigned long long u = z >> 40;  // 24 bits
    return u * (q >> 24) + ((u * (q & 0xffffffull)) >> 24);
}

struct DrawShared {
    unsigned long long r;
    unsigned long long base;
    int owner;
    int first_out;
    unsigned int pick;
};

// By id: the block whose mass range holds r, then the token inside that block's ids.
__device__ void draw_by_id(const SampleParams& p, const unsigned int* mask, const SampleScratch* s, DrawShared& d) {
    const float mx = s->mx;
    const int t = threadIdx.x;
    const unsigned long long part = t < p.n_parts ? s->part[t] : 0ull;
    unsigned long long total;
    const unsigned long long before = block_excl_scan<kDrawThreads>(part, total);
    if (t == 0) d.r = draw_below(p, total);  // total >= 2^40: the best token survives min-p
    __syncthreads();
    if (part > 0 && before <= d.r && d.r < before + part) {
        d.owner = t;
        d.base = before;
    }
    __syncthreads();
    int lo, hi;
    chunk_of(p, d.owner, lo, hi);
    const int seg = (hi - lo + kDrawThreads - 1) / kDrawThreads;
    const int a = min(hi, lo + t * seg), e = min(hi, a + seg);
    unsigned long long mine = 0;
    for (int i = a; i < e; ++i) {
        const float v = p.logits[i];
        if (valid_token(v, mask, i)) mine += drawable_q(v, mx, p);
    }
    const unsigned long long r = d.r - d.base;
    unsigned long long acc = block_excl_scan<kDrawThreads>(mine, total);
    if (mine > 0 && acc <= r && r < acc + mine) {
        for (int i = a; i < e; ++i) {
            const float v = p.logits[i];
            if (!valid_token(v, mask, i)) continue;
            acc += drawable_q(v, mx, p);
            if (r < acc) {
                *p.out = static_cast<unsigned int>(i);
                break;
            }
        }
    }
}

// Sorted candidates: top-k, weights, min-p (the prefix of survivors), top-p, the draw.
__device__ void draw_sorted(const SampleParams& p, const SampleScratch* s, unsigned long long* keys, int m,
                            DrawShared& d) {
    const unsigned int mode = s->mode;
    const float mx = s->mx;
    const int t = threadIdx.x;
    int size = 1;
    while (size < m) size <<= 1;
    for (int i = t; i < size; i += kDrawThreads) keys[i] = i < m ? s->cand[i] : ~0ull;
    __syncthreads();
    // Bitonic sort, ascending: (~key, id), i.e. logit descending then id ascending.
    for (int k = 2; k <= size; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = t; i < size; i += kDrawThreads) {
                const int o = i ^ j;
                if (o > i) {
                    const unsigned long long x = keys[i], y = keys[o];
                    if (((i & k) == 0) == (x > y)) {
                        keys[i] = y;
                        keys[o] = x;
                    }
                }
            }
            __syncthreads();
        }
    }
    // Thread t holds the ranks [t * kPerThread, (t + 1) * kPerThread).
    const int in_k = mode == kModeTopK ? min(m, p.top_k) : m;
    if (t == 0) d.first_out = in_k;
    __syncthreads();
    unsigned long long q[kPerThread], zk = 0;
    for (int j = 0; j < kPerThread; ++j) {
        const int i = t * kPerThread + j;
        q[j] = 0;
        if (i >= in_k) continue;
        const float e = expf(weight_x(key_float(~static_cast<unsigned int>(keys[i] >> 32)), mx, p.temperature));
        q[j] = mass_q(e);
        zk += q[j];
        if (p.min_p > 0.0f && e < p.min_p) atomicMin(&d.first_out, i);
    }
    unsigned long long z;
    block_excl_scan<kDrawThreads>(zk, z);  // the mass of the top-k set, before min-p
    if (mode == kModeTopP) z = s->z_all;
    const int n_surv = d.first_out;  // >= 1: the best weighs 1 >= min_p
    unsigned long long mine = 0;
    for (int j = 0; j < kPerThread; ++j) {
        if (t * kPerThread + j >= n_surv) q[j] = 0;
        mine += q[j];
    }
    unsigned long long total;
    const unsigned long long before0 = block_excl_scan<kDrawThreads>(mine, total);
    // top-p: a token stays while the mass before it has not reached the target.
    const unsigned long long target = p.top_p < 1.0f ? static_cast<unsigned long long>(static_cast<double>(p.top_p) *
                                                                                       static_cast<double>(z))
                                                     : ~0ull;
    unsigned long long kept = 0, acc = before0;
    for (int j = 0; j < kPerThread; ++j) {
        const int i = t * kPerThread + j;
        if (q[j] == 0 || (i > 0 && acc >= target)) q[j] = 0;
        acc += q[j];
        kept += q[j];
    }
    unsigned long long kept_total;
    acc = block_excl_scan<kDrawThreads>(kept, kept_total);
    if (t == 0) d.r = draw_below(p, kept_total);  // kept_total >= 2^40: the best is kept
    __syncthreads();
    const unsigned long long r = d.r;
    for (int j = 0; j < kPerThread; ++j) {
        if (q[j] > 0 && acc <= r && r < acc + q[j])
            *p.out = static_cast<unsigned int>(keys[t * kPerThread + j] & 0xffffffffull);
        acc += q[j];
    }
}

__device__ void final_body(const SampleParams& p, const unsigned int* mask) {
    const SampleScratch* s = scratch(p);
    __shared__ union {
        SampleShared fallback;
        unsigned long long keys[kSampleCap];
    } sm;
    __shared__ DrawShared d;
    const unsigned int mode = s->mode;
    if (mode == kModeNone || mode == kModeGreedy) {
        if (threadIdx.x == 0) *p.out = mode == kModeNone ? TACHYON_NO_TOKEN : s->best_id;
        return;
    }
    if (mode == kModeById) {
        draw_by_id(p, mask, s, d);
        return;
    }
    const unsigned int m = s->cand_count;
    if (m > static_cast<unsigned int>(kSampleCap)) {
        fallback_draw(p, mask, p.work + TACHYON_SAMPLE_SCRATCH_WORDS, sm.fallback);
        return;
    }
    draw_sorted(p, s, sm.keys, static_cast<int>(m), d);
}

// The draw, then the next decode step's inputs from it (StepAdvance): the token is
// written by whichever thread's range holds it, so the barrier comes first.
__device__ void final_and_advance(const SampleParams& p, const unsigned int* mask) {
    final_body(p, mask);
    __syncthreads();
    if (threadIdx.x == 0) tachyon::advance_step(p.advance, *p.out);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kDrawThreads) sample_logits(const SampleParams p) {
    tachyon::pdl_trigger_then_wait();
    final_and_advance(with_config(p), nullptr);
}

// The same draw among the tokens the mask allows (the passes read the mask too).
extern "C" __global__ void __launch_bounds__(kDrawThreads) sample_logits_masked(const MaskedSampleParams p) {
    tachyon::pdl_trigger_then_wait();
    final_and_advance(with_config(p.base), p.mask);
}
