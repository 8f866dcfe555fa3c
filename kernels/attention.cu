/*
 * attention.cu: causal grouped-query attention over the KV cache as flash-decoding.
 *
 * 1. attn_kv_append: k, v rows (n of them) are copied into the caches at positions
 *    pos..pos+n. grid = (n), block = (256).
 * 2. attn_decode_split: query row i (position p = pos + i) sees cache positions
 *    first..=p. Those are cut into n_splits chunks; block (head group, split, row) runs an
 *    online softmax over its chunk for up to 8 query heads that share one kv head, so each
 *    K/V byte of the chunk is read once per kv head (not once per query head). Warps take
 *    positions round-robin, lanes own head dimensions (d = lane + 32 j); scores are warp
 *    sums. The 4 warps' (max, sum, acc) are merged in shared memory and written as the
 *    chunk's partial result. grid = (n_kv_heads * ceil(group / 8), n_splits, n),
 *    block = (128), static shared memory 4 * 8 * 256 floats + 64 (33 KB; D = ceil(head_dim /
 *    32) <= 8 per-lane dimensions, head_dim <= 256).
 * 3. attn_decode_reduce: per (row, head), merges the n_splits partials:
 *    out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). grid = (n * n_heads),
 *    block = (128).
 * Layout: q `n x n_heads x head_dim`, k/v `n x n_kv_heads x head_dim` f32, caches
 * `ctx x n_kv_heads x head_dim` of f32, f16 or bf16 (`kv_dtype`; the CPU backend's layout,
 * its f32 type or half the bytes), widened to f32 as read.
 * Used for verify rows and the prefill chunks kernels/attention_prefill.cu does not take (f32
 * or f16 caches, head sizes other than 64 and 128, fewer than 16 rows); a decode row runs
 * kernels/rope_attention.cu.
 * Bytes per step and layer: 2 * e * L * kv_dim (K and V of L visible positions, read once,
 * e bytes per element) + partials 4 * n_heads * n_splits * (head_dim + 2) written and read
 * back.
 * Flops: 4 * L * n_heads * head_dim. Memory-bound; the split keeps all SMs reading when
 * there are few kv heads.
 */
#include <math.h>

#include "common.cuh"

namespace {

constexpr int kAttnWarps = 4;
constexpr int kHeadsPerBlock = 8;

struct Range {
    int first;
    int end;  // exclusive
};

// The visible positions of query row `row`, and this split's share of them.
__device__ __forceinline__ Range split_range(const AttnParams& p, int pos, int row, int split) {
    const int qp = pos + row;
    const int first = p.window > 0 ? max(0, qp + 1 - p.window) : 0;
    const int len = qp + 1 - first;
    const int chunk = (len + p.n_splits - 1) / p.n_splits;
    const int c0 = first + split * chunk;
    return Range{c0, min(c0 + chunk, qp + 1)};
}

constexpr int kMaxD = 8;  // head_dim <= 256

// One cache element written from f32 (rounded to nearest for the 16-bit types).
__device__ __forceinline__ void store_kv(void* base, size_t i, int dtype, float x) {
    if (dtype == TACHYON_DTYPE_BF16) {
        static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(x);
    } else if (dtype == TACHYON_DTYPE_F16) {
        static_cast<__half*>(base)[i] = __float2half_rn(x);
    } else {
        static_cast<float*>(base)[i] = x;
    }
}

// max that keeps a NaN: fmaxf(-inf, NaN) is -inf, which would let a NaN score vanish
// (a warp whose only scores are NaN keeps m = -inf and is skipped as "saw no position").
// A NaN in a score must come out as NaN, as in the CPU backend.
__device__ __forceinline__ float max_keep_nan(float a, float b) {
    return (isnan(a) || isnan(b)) ? NAN : fmaxf(a, b);
}

struct SplitShared {
    float m[kAttnWarps][kHeadsPerBlock];
    float l[kAttnWarps][kHeadsPerBlock];
    // [warp][head][D * 32], flattened so every instantiation shares one buffer.
    float acc[kAttnWarps * kHeadsPerBlock * kMaxD * tachyon::kWarp];
};

template <int D>
__device__ __forceinline__ void attn_split(const AttnParams& p, SplitShared& sm) {
    auto acc_at = [&](int w, int g, int idx) -> float& {
        return sm.acc[(w * kHeadsPerBlock + g) * (D * tachyon::kWarp) + idx];
    };

    const int lane = threadIdx.x % tachyon::kWarp;
    const int warp = threadIdx.x / tachyon::kWarp;
    const int hd = p.head_dim;
    const int group = p.n_heads / p.n_kv_heads;
    const int groups_per_kv = (group + kHeadsPerBlock - 1) / kHeadsPerBlock;
    const int kvh = blockIdx.x / groups_per_kv;
    const int h0 = kvh * group + (blockIdx.x % groups_per_kv) * kHeadsPerBlock;
    const int nh = min(kHeadsPerBlock, (kvh + 1) * group - h0);
    const int split = blockIdx.y;
    const int row = blockIdx.z;
    const int pos = tachyon::read_pos(p.pos_dev, p.pos);
    const Range r = split_range(p, pos, row, split);
    const int kv_dim = p.n_kv_heads * hd;
    const float scale = 1.0f / sqrtf(static_cast<float>(hd));

    float q[kHeadsPerBlock][D];
    float acc[kHeadsPerBlock][D];
    float m[kHeadsPerBlock], l[kHeadsPerBlock];
#pragma unroll
    for (int g = 0; g < kHeadsPerBlock; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < D; ++j) {
            const int d = lane + j * tachyon::kWarp;
            acc[g][j] = 0.0f;
            q[g][j] = (g < nh && d < hd)
                          ? p.q[(static_cast<size_t>(row) * p.n_heads + h0 + g) * hd + d] * scale
                          : 0.0f;
        }
    }

    for (int t = r.first + warp; t < r.end; t += kAttnWarps) {
        const size_t row = static_cast<size_t>(t) * kv_dim + kvh * hd;
        float kr[D], vr[D];
#pragma unroll
        for (int j = 0; j < D; ++j) {
            const int d = lane + j * tachyon::kWarp;
            kr[j] = d < hd ? tachyon::load_elem(p.k_cache, row + d, p.kv_dtype) : 0.0f;
            vr[j] = d < hd ? tachyon::load_elem(p.v_cache, row + d, p.kv_dtype) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < kHeadsPerBlock; ++g) {
            if (g < nh) {
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < D; ++j) s = fmaf(q[g][j], kr[j], s);
                s = tachyon::warp_sum_f(s);
                const float m_new = max_keep_nan(m[g], s);
                const float corr = expf(m[g] - m_new);
                const float e = expf(s - m_new);
                l[g] = l[g] * corr + e;
#pragma unroll
                for (int j = 0; j < D; ++j) acc[g][j] = fmaf(acc[g][j], corr, e * vr[j]);
                m[g] = m_new;
            }
        }
    }

    // Merge the warps: each writes its state, then warp w finishes heads w, w + 4.
#pragma unroll
    for (int g = 0; g < kHeadsPerBlock; ++g) {
        if (lane == 0) {
            sm.m[warp][g] = m[g];
            sm.l[warp][g] = l[g];
        }
#pragma unroll
        for (int j = 0; j < D; ++j) acc_at(warp, g, lane + j * tachyon::kWarp) = acc[g][j];
    }
    __syncthreads();
    for (int g = warp; g < nh; g += kAttnWarps) {
        float mx = -INFINITY;
        for (int w = 0; w < kAttnWarps; ++w) mx = max_keep_nan(mx, sm.m[w][g]);
        const size_t slot = (static_cast<size_t>(row) * p.n_heads + h0 + g) * p.n_splits + split;
        float sum = 0.0f;
        float o[D];
#pragma unroll
        for (int j = 0; j < D; ++j) o[j] = 0.0f;
        if (mx != -INFINITY) {
            for (int w = 0; w < kAttnWarps; ++w) {
                if (sm.m[w][g] == -INFINITY) continue;  // that warp saw no position
                const float c = expf(sm.m[w][g] - mx);
                sum += sm.l[w][g] * c;
#pragma unroll
                for (int j = 0; j < D; ++j) o[j] += acc_at(w, g, lane + j * tachyon::kWarp) * c;
            }
        }
        if (lane == 0) {
            p.part_max[slot] = mx;
            p.part_sum[slot] = sum;
        }
#pragma unroll
        for (int j = 0; j < D; ++j) {
            const int d = lane + j * tachyon::kWarp;
            if (d < hd) p.part_acc[slot * hd + d] = o[j];
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) attn_kv_append(const AttnParams p) {
    const int row = blockIdx.x;
    if (row >= p.n) return;
    const int at = tachyon::read_pos(p.pos_dev, p.pos) + row;
    if (at < 0 || at >= p.ctx) return;
    const int kv_dim = p.n_kv_heads * p.head_dim;
    const size_t src = static_cast<size_t>(row) * kv_dim;
    const size_t dst = static_cast<size_t>(at) * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        store_kv(p.k_cache, dst + i, p.kv_dtype, p.k[src + i]);
        store_kv(p.v_cache, dst + i, p.kv_dtype, p.v[src + i]);
    }
}

extern "C" __global__ void __launch_bounds__(kAttnWarps * 32) attn_decode_split(const AttnParams p) {
    __shared__ SplitShared sm;
    const int d = (p.head_dim + tachyon::kWarp - 1) / tachyon::kWarp;
    if (d <= 1) attn_split<1>(p, sm);
    else if (d <= 2) attn_split<2>(p, sm);
    else if (d <= 4) attn_split<4>(p, sm);
    else attn_split<8>(p, sm);
}

extern "C" __global__ void __launch_bounds__(256) attn_decode_reduce(const AttnParams p) {
    const int rh = blockIdx.x;  // row * n_heads + head
    if (rh >= p.n * p.n_heads) return;
    const size_t base = static_cast<size_t>(rh) * p.n_splits;
    float mx = -INFINITY;
    for (int s = 0; s < p.n_splits; ++s) mx = max_keep_nan(mx, p.part_max[base + s]);
    float sum = 0.0f;
    for (int s = 0; s < p.n_splits; ++s) {
        const float ms = p.part_max[base + s];
        if (ms != -INFINITY) sum += p.part_sum[base + s] * expf(ms - mx);
    }
    const float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < p.n_splits; ++s) {
            const float ms = p.part_max[base + s];
            if (ms != -INFINITY) o += p.part_acc[(base + s) * p.head_dim + d] * expf(ms - mx);
        }
        p.out[static_cast<size_t>(rh) * p.head_dim + d] = o * inv;
    }
}
