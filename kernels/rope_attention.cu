/*
 * rope_attention.cu: one decode step of a layer's attention in one kernel: qwen3's per-head
 * q/k RMSNorm (when the model has it), rope of q and k, the KV append and causal
 * grouped-query attention over the cache, flash-decoding with the split and the reduce
 * merged (the last block to finish a head group combines the splits).
 *
 * Computes, for the one query row at position p (`*pos_dev`, or `pos`):
 *   q_h = rope(norm_q(q_h)), k = rope(norm_k(k)) (norms only when given), written with v at
 *   cache position p (rounded to the cache's element type), then for each head h
 *   out_h = softmax(q_h . K^T / sqrt(head_dim)) V over positions first..=p of kv head
 *   h / (n_heads / n_kv_heads) (first = 0, or p + 1 - window with a sliding window).
 * Layouts: q `n_heads x HD`, k / v `n_kv_heads x HD` f32 (one row, before norm and rope);
 *   caches `ctx x n_kv_heads x HD` of T (f32, bf16 or f16); rope tables `rope_ctx x half`
 *   f32 (the CPU backend's, so both rotate by the same angles); out `n_heads x HD` f32.
 * Launch: one instantiation per head size HD (16, 32, 64, 80, 96, 128, 256) and cache type,
 *   chosen at launch. grid = (n_kv_heads * ceil(group / 8), max_splits), block = (128):
 *   block x holds up to 8 q heads of one kv head (every q head of a group of up to 8, so
 *   each K/V byte is read once per kv head; a group of 16 takes two blocks). The visible
 *   positions are cut into n_splits = ceil(len / chunk) chunks, chunk = max(min_chunk,
 *   ceil(len / max_splits)), computed on the device from the position, so a replayed graph
 *   launches `max_splits` (sized on the host to fill every SM) and the blocks past the
 *   context's needs exit at once. Within a block, a warp reads P = 32 / L positions per step
 *   (L lanes per position, each lane 16-byte loads of the row: L = 16 for HD 64 f32, 8 for
 *   HD 64 bf16), the next step's K and V loaded before the current step's scores. Each
 *   block writes its split's (max, exp-sum, unnormalized output) per head, then counts
 *   itself done on a per-block-x counter; the block that brings it to n_splits merges the
 *   splits in split order (deterministic) and resets the counter. No block waits on another.
 *   The new position's k / v are used from shared memory (never read back from the cache
 *   in the same launch); the first head block of the kv head writes them to the cache.
 * Programmatic dependent launch (kernels/README.md): the trigger and the wait come after
 *   the block's index arithmetic, before the position is read: everything the kernel reads
 *   but the norm weights is written by earlier kernels.
 * Bytes on the 1B shape (32 q heads, 8 kv heads, HD 64; kv_dim 512), per layer and token:
 *   K + V read once per kv head: 2 * L * 512 * sizeof(T) = 4k: 16.8 MB f32 / 8.4 MB bf16;
 *   8k: 33.6 MB f32 / 16.8 MB bf16; plus q, k, v (10 KB), partials 32 heads x splits x 66
 *   floats written and read (33 splits: 0.28 MB), tables 0.5 KB.
 * Flops: 4 * L * n_heads * HD = 4k: 33.6 MFLOP; 8k: 67 MFLOP (about 4 flops per bf16 byte):
 *   memory-bound. Expected: close to the copy bandwidth once the splits fill the SMs (33 x 8
 *   = 264 blocks on 132 SMs), less the partials' traffic (about 3% at 4k bf16); not
 *   measured on a GPU yet.
 */
#include <math.h>

#include "common.cuh"

namespace fused_attn {

constexpr int kWarps = 4;
constexpr int kHeads = 8;  // q heads per block

// max that keeps a NaN (fmaxf drops it), so a NaN score comes out as NaN as on the CPU.
__device__ __forceinline__ float max_nan(float a, float b) {
    return (isnan(a) || isnan(b)) ? NAN : fmaxf(a, b);
}

// exp(m - mt), 0 for a state that saw no position (m = -inf).
__device__ __forceinline__ float rescale(float m, float mt) {
    return m == -INFINITY ? 0.0f : expf(m - mt);
}

__host__ __device__ constexpr int pow2_at_least(int v) {
    int p = 1;
    while (p < v) p *= 2;
    return p;
}

// The cache's element type: E values per 16-byte load, and f32 conversions.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
    static constexpr int E = 4;
    __device__ static float to_f(float x) { return x; }
    __device__ static float from_f(float x) { return x; }
};
template <>
struct Elem<__nv_bfloat16> {
    static constexpr int E = 8;
    __device__ static float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
    __device__ static __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Elem<__half> {
    static constexpr int E = 8;
    __device__ static float to_f(__half x) { return __half2float(x); }
    __device__ static __half from_f(float x) { return __float2half_rn(x); }
};

template <int HD, typename T>
struct Shape {
    static constexpr int E = Elem<T>::E;
    static_assert(HD % E == 0, "a row is whole 16-byte chunks");
    static constexpr int CH = HD / E;                                  // chunks per row
    static constexpr int L = CH >= 32 ? 32 : pow2_at_least(CH);        // lanes per position
    static constexpr int C = (CH + L - 1) / L;                         // chunks per lane
    static constexpr int P = 32 / L;                                   // positions per warp step
    static constexpr int R = C * E;                                    // values per lane
};

// Lane `li`'s values of one cache row (zeros for chunks past the row).
template <int HD, typename T>
__device__ __forceinline__ void load_row(const T* row, int li, float (&out)[Shape<HD, T>::R]) {
    using S = Shape<HD, T>;
#pragma unroll
    for (int c = 0; c < S::C; ++c) {
        const int ch = li + c * S::L;
        if (S::CH % S::L == 0 || ch < S::CH) {
            const uint4 u = *reinterpret_cast<const uint4*>(row + ch * S::E);
            const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
            for (int i = 0; i < S::E; ++i) out[c * S::E + i] = Elem<T>::to_f(e[i]);
        } else {
#pragma unroll
            for (int i = 0; i < S::E; ++i) out[c * S::E + i] = 0.0f;
        }
    }
}

// Lane `li`'s values of a shared-memory f32 row.
template <int HD, typename T>
__device__ __forceinline__ void shared_row(const float* row, int li, float (&out)[Shape<HD, T>::R]) {
    using S = Shape<HD, T>;
#pragma unroll
    for (int c = 0; c < S::C; ++c) {
        const int ch = li + c * S::L;
#pragma unroll
        for (int i = 0; i < S::E; ++i)
            out[c * S::E + i] = (S::CH % S::L == 0 || ch < S::CH) ? row[ch * S::E + i] : 0.0f;
    }
}

// The block's shared memory, in the launch's dynamic shared memory (one static buffer per
// instantiation would make every kernel of this file count them all under the emulator).
// Its size is the launcher's `smem_bytes`: 4 * (42 * HD + 65) bytes.
template <int HD>
struct Smem {
    float q[kHeads][HD];  // q after norm and rope
    float k[HD];          // the new position's k (norm, rope) and v, rounded to the cache type
    float v[HD];
    float m[kWarps][kHeads];
    float l[kWarps][kHeads];
    float acc[kWarps][kHeads][HD];
    int last;
};
static_assert(sizeof(Smem<64>) == 4 * (42 * 64 + 65), "the launcher's smem_bytes");
static_assert(sizeof(Smem<80>) == 4 * (42 * 80 + 65), "the launcher's smem_bytes");

template <int HD, typename T>
__device__ __forceinline__ void rope_attn(const RopeAttnParams& p) {
    using S = Shape<HD, T>;
    TACHYON_DYNAMIC_SMEM(float, rope_attn_smem);
    Smem<HD>& sm = *reinterpret_cast<Smem<HD>*>(rope_attn_smem);
    const int tid = threadIdx.x;
    const int lane = tid % tachyon::kWarp;
    const int warp = tid / tachyon::kWarp;
    const int li = lane % S::L;  // lane within its position group
    const int pg = lane / S::L;  // position group within the warp

    const int group = p.n_heads / p.n_kv_heads;
    const int blocks_per_kv = (group + kHeads - 1) / kHeads;
    const int kvh = blockIdx.x / blocks_per_kv;
    const int h0 = kvh * group + (blockIdx.x % blocks_per_kv) * kHeads;
    const int nh = min(kHeads, (kvh + 1) * group - h0);
    const int split = blockIdx.y;
    const int kv_dim = p.n_kv_heads * HD;

    // Everything below reads what earlier kernels wrote (q, k, v, the position, the cache,
    // the counters): the programmatic launch's wait comes first.
    tachyon::pdl_trigger_then_wait();
    const int qp = tachyon::read_pos(p.pos_dev, p.pos);
    if (qp < 0 || qp >= p.ctx || qp >= p.rope_ctx) {
        // A position past the cache or the table: NaN out, nothing written to the cache.
        if (split == 0)
            for (int i = tid; i < nh * HD; i += blockDim.x)
                p.out[static_cast<size_t>(h0) * HD + i] = __int_as_float(0x7fc00000);
        return;
    }
    const int first = p.window > 0 ? max(0, qp + 1 - p.window) : 0;
    const int len = qp + 1 - first;
    const int chunk = max(p.min_chunk, (len + p.max_splits - 1) / p.max_splits);
    const int n_splits = (len + chunk - 1) / chunk;
    if (split >= n_splits) return;
    const int c0 = first + split * chunk;
    const int c1 = min(c0 + chunk, qp + 1);
    const bool has_new = c1 == qp + 1;  // this split ends at the new position
    const int cached_end = has_new ? qp : c1;

    // 1. Norm (when given) of this block's q heads, and of k for the split with the new
    //    position; one warp per vector. v copied, rounded to the cache type.
    const int nvec = nh + (has_new ? 1 : 0);
    for (int vi = warp; vi < nvec; vi += kWarps) {
        const bool is_q = vi < nh;
        const float* src = is_q ? p.q + static_cast<size_t>(h0 + vi) * HD : p.k + kvh * HD;
        const float* w = is_q ? p.q_norm : p.k_norm;
        float* dst = is_q ? sm.q[vi] : sm.k;
        float scale = 1.0f;
        if (w != nullptr) {
            float ss = 0.0f;
            for (int d = lane; d < HD; d += tachyon::kWarp) ss = fmaf(src[d], src[d], ss);
            ss = tachyon::warp_sum_f(ss);
            scale = 1.0f / sqrtf(ss / static_cast<float>(HD) + p.eps);
        }
        for (int d = lane; d < HD; d += tachyon::kWarp)
            dst[d] = w != nullptr ? src[d] * (scale * w[d]) : src[d];
    }
    if (has_new)
        for (int d = tid; d < HD; d += blockDim.x)
            sm.v[d] = Elem<T>::to_f(Elem<T>::from_f(p.v[kvh * HD + d]));
    __syncthreads();

    // 2. Rope, in place: each (vector, pair) is one thread's.
    for (int i = tid; i < nvec * p.half; i += blockDim.x) {
        const int vi = i / p.half;
        const int j = i % p.half;
        float* x = vi < nh ? sm.q[vi] : sm.k;
        const int a = p.interleaved ? 2 * j : j;
        const int b = p.interleaved ? 2 * j + 1 : j + p.half;
        const float c = p.cos[static_cast<size_t>(qp) * p.half + j];
        const float s = p.sin[static_cast<size_t>(qp) * p.half + j];
        const float x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
    __syncthreads();

    // 3. The new k rounded to the cache type (what later steps will read), and appended.
    if (has_new) {
        const bool writer = blockIdx.x % blocks_per_kv == 0;
        T* kc = static_cast<T*>(p.k_cache) + static_cast<size_t>(qp) * kv_dim + kvh * HD;
        T* vc = static_cast<T*>(p.v_cache) + static_cast<size_t>(qp) * kv_dim + kvh * HD;
        for (int d = tid; d < HD; d += blockDim.x) {
            const T kt = Elem<T>::from_f(sm.k[d]);
            sm.k[d] = Elem<T>::to_f(kt);
            if (writer) {
                kc[d] = kt;
                vc[d] = Elem<T>::from_f(sm.v[d]);
            }
        }
    }
    __syncthreads();

    // 4. Online softmax over this split's cached positions: per position group of lanes.
    const float qscale = 1.0f / sqrtf(static_cast<float>(HD));
    float q[kHeads][S::R], acc[kHeads][S::R], m[kHeads], l[kHeads];
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
        shared_row<HD, T>(sm.q[g < nh ? g : 0], li, q[g]);
#pragma unroll
        for (int r = 0; r < S::R; ++r) {
            q[g][r] *= qscale;
            acc[g][r] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    const T* kbase = static_cast<const T*>(p.k_cache) + kvh * HD;
    const T* vbase = static_cast<const T*>(p.v_cache) + kvh * HD;

    auto consume = [&](const float (&kr)[S::R], const float (&vr)[S::R], bool valid) {
#pragma unroll
        for (int g = 0; g < kHeads; ++g) {
            if (g < nh) {  // block-uniform: every lane takes part in the shuffles
                float s = 0.0f;
#pragma unroll
                for (int r = 0; r < S::R; ++r) s = fmaf(q[g][r], kr[r], s);
#pragma unroll
                for (int o = S::L / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (valid) {
                    const float m_new = max_nan(m[g], s);
                    const float corr = expf(m[g] - m_new);
                    const float e = expf(s - m_new);
                    l[g] = l[g] * corr + e;
#pragma unroll
                    for (int r = 0; r < S::R; ++r) acc[g][r] = fmaf(acc[g][r], corr, e * vr[r]);
                    m[g] = m_new;
                }
            }
        }
    };

    constexpr int kStep = kWarps * S::P;
    int t0 = c0 + warp * S::P;  // warp-uniform: the warp's first position this step
    float kr[S::R] = {}, vr[S::R] = {};
    if (t0 + pg < cached_end) {
        load_row<HD, T>(kbase + static_cast<size_t>(t0 + pg) * kv_dim, li, kr);
        load_row<HD, T>(vbase + static_cast<size_t>(t0 + pg) * kv_dim, li, vr);
    }
    for (; t0 < cached_end; t0 += kStep) {
        // Prefetch the next step's rows before this step's arithmetic.
        const int tn = t0 + kStep + pg;
        float kn[S::R] = {}, vn[S::R] = {};
        if (tn < cached_end) {
            load_row<HD, T>(kbase + static_cast<size_t>(tn) * kv_dim, li, kn);
            load_row<HD, T>(vbase + static_cast<size_t>(tn) * kv_dim, li, vn);
        }
        consume(kr, vr, t0 + pg < cached_end);
#pragma unroll
        for (int r = 0; r < S::R; ++r) {
            kr[r] = kn[r];
            vr[r] = vn[r];
        }
    }
    if (has_new && warp == 0) {
        // The new position, from shared memory: position group 0 of warp 0 takes it.
        shared_row<HD, T>(sm.k, li, kr);
        shared_row<HD, T>(sm.v, li, vr);
        consume(kr, vr, pg == 0);
    }

    // 5. Merge the position groups of each warp (shuffles), then the warps (shared memory).
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
        if (g < nh) {
            float mt = m[g];
#pragma unroll
            for (int o = S::L; o < tachyon::kWarp; o <<= 1)
                mt = max_nan(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            const float f = rescale(m[g], mt);
            float lt = l[g] * f;
#pragma unroll
            for (int o = S::L; o < tachyon::kWarp; o <<= 1) lt += __shfl_xor_sync(0xffffffffu, lt, o);
#pragma unroll
            for (int r = 0; r < S::R; ++r) {
                float a = acc[g][r] * f;
#pragma unroll
                for (int o = S::L; o < tachyon::kWarp; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                acc[g][r] = a;
            }
            if (lane == 0) {
                sm.m[warp][g] = mt;
                sm.l[warp][g] = lt;
            }
            if (pg == 0) {
#pragma unroll
                for (int c = 0; c < S::C; ++c) {
                    const int ch = li + c * S::L;
                    if (S::CH % S::L == 0 || ch < S::CH)
#pragma unroll
                        for (int i = 0; i < S::E; ++i) sm.acc[warp][g][ch * S::E + i] = acc[g][c * S::E + i];
                }
            }
        }
    }
    __syncthreads();
    for (int g = warp; g < nh; g += kWarps) {
        float mx = -INFINITY;
        for (int w = 0; w < kWarps; ++w) mx = max_nan(mx, sm.m[w][g]);
        float sum = 0.0f;
        for (int w = 0; w < kWarps; ++w) sum += sm.l[w][g] * rescale(sm.m[w][g], mx);
        const size_t slot = static_cast<size_t>(h0 + g) * p.max_splits + split;
        for (int d = lane; d < HD; d += tachyon::kWarp) {
            float o = 0.0f;
            for (int w = 0; w < kWarps; ++w) o += sm.acc[w][g][d] * rescale(sm.m[w][g], mx);
            if (n_splits == 1) {
                p.out[static_cast<size_t>(h0 + g) * HD + d] = o / sum;
            } else {
                p.part_acc[slot * HD + d] = o;
            }
        }
        if (lane == 0 && n_splits > 1) {
            p.part_max[slot] = mx;
            p.part_sum[slot] = sum;
        }
    }
    if (n_splits == 1) return;

    // 6. The last block of this head group to finish merges the splits, in split order.
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned done = atomicAdd(&p.counters[blockIdx.x], 1u);
        sm.last = done + 1 == static_cast<unsigned>(n_splits);
    }
    __syncthreads();
    if (!sm.last) return;
    __threadfence();
    for (int g = warp; g < nh; g += kWarps) {
        const size_t base = static_cast<size_t>(h0 + g) * p.max_splits;
        float mx = -INFINITY;
        for (int s = 0; s < n_splits; ++s) mx = max_nan(mx, __ldcg(p.part_max + base + s));
        float sum = 0.0f;
        for (int s = 0; s < n_splits; ++s)
            sum += __ldcg(p.part_sum + base + s) * rescale(__ldcg(p.part_max + base + s), mx);
        for (int d = lane; d < HD; d += tachyon::kWarp) {
            float o = 0.0f;
            for (int s = 0; s < n_splits; ++s)
                o += __ldcg(p.part_acc + (base + s) * HD + d) *
                     rescale(__ldcg(p.part_max + base + s), mx);
            p.out[static_cast<size_t>(h0 + g) * HD + d] = o / sum;
        }
    }
    if (tid == 0) p.counters[blockIdx.x] = 0;  // ready for the next launch
}

}  // namespace fused_attn

// One kernel per head size and cache type (written out: the emulator's registry reads
// the kernel names from this text).
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h16_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<16, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h16_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<16, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h16_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<16, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h32_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<32, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h32_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<32, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h32_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<32, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h64_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<64, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h64_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<64, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h64_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<64, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h80_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<80, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h80_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<80, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h80_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<80, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h96_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<96, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h96_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<96, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h96_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<96, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h128_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<128, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h128_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<128, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h128_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<128, __half>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h256_f32(const RopeAttnParams p) {
    fused_attn::rope_attn<256, float>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h256_bf16(const RopeAttnParams p) {
    fused_attn::rope_attn<256, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) rope_attn_decode_h256_f16(const RopeAttnParams p) {
    fused_attn::rope_attn<256, __half>(p);
}
