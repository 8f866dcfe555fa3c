/*
 * gemv.cu: the decode-time matrix product, `out[t, r] = dot(w[r], x[t])` for a handful of
 * activation rows t, weights in BF16/F16/F32, f32 accumulation, with the fused parts of
 * GemvParams (tachyon_kernels.h; prologue and epilogue in gemv_fused.cuh):
 * - RMSNorm of each activation row in the prologue (`norm_w`): the QKV and gate/up
 *   products of a decoder layer read the residual stream itself, no norm launch before;
 * - a bias (`bias`), the SwiGLU form (`w2`: gate and up streamed together, stored
 *   `silu(gate . x) * (up . x)`), the residual add (`accumulate`: `x += W a`) and the
 *   q/k/v split of a stacked matrix (`out_b`, `out_c`) in the epilogue.
 * A decoder layer's GEMVs are then three: norm+QKV(+biases), o-proj+add, and after the
 * MLP's norm+gate+up+SwiGLU, down+add (four with o-proj).
 *
 * Layout: w (and w2) `rows x cols` row-major; x `n x cols` f32; out `n x rows` f32 (or the
 * three q/k/v outputs, `n x rows_a`, `n x rows_b`, `n x rows_c`).
 * Launch: block = (32, 8): 8 warps; `warps_per_row` (1/2/4/8) warps share one output row,
 * splitting its columns (split-K inside the block, summed in a fixed order: deterministic),
 * so a block covers 8 / warps_per_row rows and grid = (ceil(rows / rows_per_block)). The
 * launcher raises warps_per_row until there are 4 blocks per SM: at the 1B shape the stacked
 * QKV (3072 rows) runs 2 warps a row, o-proj (2048 rows) 4, so every SM streams.
 * Shared memory: static, 8 warps x 4 batch x 2 products floats + the norm's 32 x 4 floats.
 *
 * Streaming: the dtype is a template parameter (no run-time dtype branch in the loop). In
 * the vector path (cols a multiple of the 16-byte element count, pointers 16-byte
 * aligned) each lane issues kUnroll = 4 16-byte weight loads (8 with w2) before it uses the
 * first: 2 KB in flight per warp (4 KB with w2). ptxas gives the kernel 128 registers
 * (sm_90, no spills), so an SM keeps 2 blocks, 16 warps, resident: 32 KB in flight per SM,
 * 64 KB for gate/up (one load per lane, 16 KB, capped a GEMV near 2.2-2.6 TB/s whatever
 * the card). Otherwise a scalar path with the same reduction.
 * Programmatic dependent launch (kernels/README.md): before its griddepcontrol.wait each
 * lane only prefetches its first two unrolled steps of weights into L2 (prefetch_weights);
 * x, the outputs and every write come after the wait. The trigger comes with the wait, at
 * the start: the next kernel's blocks are scheduled as this grid's last blocks run.
 * Activation rows are processed 4 at a time; a weight chunk is loaded once per 4 rows
 * (n > 4 re-reads the weights, mostly from L2); with the norm each block first sums the
 * squares of those rows (4 x cols floats from L2).
 *
 * Bytes and flops per call at the 1B shape (dim 2048, ffn 8192, 32 q / 8 kv heads of 64),
 * n = 1, BF16 weights:
 *   norm+QKV:        3072 x 2048: 12.6 MB weights + 8 KB x (x 12 KB out); 12.6 Mflop
 *   o-proj + add:    2048 x 2048:  8.4 MB;  8.4 Mflop
 *   norm+gate+up:    2 x 8192 x 2048: 67.1 MB; 67.1 Mflop
 *   down + add:      2048 x 8192: 33.6 MB; 33.6 Mflop
 * About 1 flop per weight byte: memory-bound on every GPU. Expected: 85-95% of the copy
 * bandwidth for the large products (gate/up, down), 70-85% for o-proj and QKV (8-13 MB
 * is a few microseconds, where launch tail and the norm prologue's L2 reads show);
 * unmeasured until a GPU run (benches/gemv_fused.rs prints it).
 */
#include "gemv_fused.cuh"

namespace {

using tachyon::kGemvBatch;
constexpr int kWarps = 8;
constexpr int kBatch = kGemvBatch;
// 16-byte weight loads each lane issues before using the first.
constexpr int kUnroll = 4;

// Elements in one 16-byte load.
template <int kDtype>
struct Per16 {
    static constexpr int kElems = kDtype == TACHYON_DTYPE_F32 ? 4 : 8;
};

// The values of one 16-byte load of weights.
template <int kDtype>
__device__ __forceinline__ void unpack(const uint4 raw, float f[Per16<kDtype>::kElems]) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (kDtype == TACHYON_DTYPE_F32) {
            f[j] = __uint_as_float(words[j]);
        } else if (kDtype == TACHYON_DTYPE_BF16) {
            // bf16 -> f32 is a 16-bit shift: the low half is the first element.
            f[2 * j] = __uint_as_float(words[j] << 16);
            f[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
        } else {
            __half2 h;
            memcpy(&h, &words[j], 4);
            const float2 v = __half22float2(h);
            f[2 * j] = v.x;
            f[2 * j + 1] = v.y;
        }
    }
}

// One weight element, the dtype known at compile time.
template <int kDtype>
__device__ __forceinline__ float load_one(const void* base, size_t i) {
    if (kDtype == TACHYON_DTYPE_BF16) {
        return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    } else if (kDtype == TACHYON_DTYPE_F16) {
        return __half2float(static_cast<const __half*>(base)[i]);
    }
    return static_cast<const float*>(base)[i];
}

// acc[b] += w_chunk . x[t0 + b] over the per16 elements of chunk c (and acc2 with w2).
template <int kDtype, bool kTwo, bool kNorm>
__device__ __forceinline__ void dot_chunk(const GemvParams& p, const uint4 raw,
                                          const uint4 raw2, int c, int t0, int nb,
                                          const float scale[kBatch], float acc[kBatch],
                                          float acc2[kBatch]) {
    constexpr int kE = Per16<kDtype>::kElems;
    float wf[kE], wf2[kE], g[kE];
    unpack<kDtype>(raw, wf);
    if (kTwo) unpack<kDtype>(raw2, wf2);
    if (kNorm) {
        const float4* g4 = reinterpret_cast<const float4*>(p.norm_w) + (kE / 4) * c;
#pragma unroll
        for (int q = 0; q < kE / 4; ++q) {
            const float4 v = g4[q];
            g[4 * q] = v.x;
            g[4 * q + 1] = v.y;
            g[4 * q + 2] = v.z;
            g[4 * q + 3] = v.w;
        }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
        if (b < nb) {
            const float4* x4 = reinterpret_cast<const float4*>(
                                   p.x + static_cast<size_t>(t0 + b) * p.cols) +
                               (kE / 4) * c;
            float xs[kE];
#pragma unroll
            for (int q = 0; q < kE / 4; ++q) {
                const float4 v = x4[q];
                xs[4 * q] = v.x;
                xs[4 * q + 1] = v.y;
                xs[4 * q + 2] = v.z;
                xs[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < kE; ++j) {
                // The CPU's rmsnorm order: (x * scale) * weight.
                const float xv = kNorm ? xs[j] * scale[b] * g[j] : xs[j];
                acc[b] = fmaf(wf[j], xv, acc[b]);
                if (kTwo) acc2[b] = fmaf(wf2[j], xv, acc2[b]);
            }
        }
    }
}

template <int kDtype, bool kVec, bool kTwo, bool kNorm>
__device__ __forceinline__ void gemv_rows(const GemvParams& p, int row, int part, int lane,
                                          int t0, const float scale[kBatch],
                                          float acc[kBatch], float acc2[kBatch]) {
    const int nb = min(kBatch, p.n - t0);
    const size_t row_off = static_cast<size_t>(row) * p.cols;
    const int step = p.warps_per_row * tachyon::kWarp;
    if (kVec) {
        constexpr int kE = Per16<kDtype>::kElems;
        constexpr int kElemBytes = 16 / kE;
        const int chunks = p.cols / kE;
        const uint4* w4 = reinterpret_cast<const uint4*>(
            static_cast<const unsigned char*>(p.w) + row_off * kElemBytes);
        const uint4* w24 = kTwo ? reinterpret_cast<const uint4*>(
                                      static_cast<const unsigned char*>(p.w2) +
                                      row_off * kElemBytes)
                                : nullptr;
        // Every load of a step is issued before the first is used; the last step's loads
        // past the row are predicated off (a lane may have fewer than kUnroll chunks:
        // o-proj at the 1B shape gives each lane 2).
        for (int c = part * tachyon::kWarp + lane; c < chunks; c += kUnroll * step) {
            uint4 raw[kUnroll], raw2[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                if (c + u * step < chunks) {
                    raw[u] = __ldg(w4 + c + u * step);
                    if (kTwo) raw2[u] = __ldg(w24 + c + u * step);
                }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                if (c + u * step < chunks) {
                    dot_chunk<kDtype, kTwo, kNorm>(p, raw[u], kTwo ? raw2[u] : raw[u],
                                                   c + u * step, t0, nb, scale, acc, acc2);
                }
            }
        }
    } else {
        for (int i = part * tachyon::kWarp + lane; i < p.cols; i += step) {
            const float wv = load_one<kDtype>(p.w, row_off + i);
            const float wv2 = kTwo ? load_one<kDtype>(p.w2, row_off + i) : 0.0f;
            const float g = kNorm ? p.norm_w[i] : 1.0f;
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                if (b < nb) {
                    float xv = p.x[static_cast<size_t>(t0 + b) * p.cols + i];
                    if (kNorm) xv = xv * scale[b] * g;
                    acc[b] = fmaf(wv, xv, acc[b]);
                    if (kTwo) acc2[b] = fmaf(wv2, xv, acc2[b]);
                }
            }
        }
    }
}

// Unrolled steps of weight loads a lane asks L2 for before the programmatic launch's wait.
constexpr int kPrefetchSteps = 2;

// Before the wait only the weights may be touched (no kernel writes them): each lane
// prefetches into L2 the chunks of its first kPrefetchSteps steps of gemv_rows's loop, so
// the row's first bytes stream in while the kernel before this one still finishes. At the
// 1B shape that is every chunk of o-proj and QKV (2-4 per lane), 8 of gate/up's 16 and 8 of
// down's 32 (4 KB, 8 KB with w2, per warp).
template <int kDtype, bool kTwo>
__device__ __forceinline__ void prefetch_weights(const GemvParams& p, int row, int part, int lane) {
    constexpr int kE = Per16<kDtype>::kElems;
    constexpr int kElemBytes = 16 / kE;
    const int chunks = p.cols / kE;
    const int step = p.warps_per_row * tachyon::kWarp;
    const size_t row_bytes_off = static_cast<size_t>(row) * p.cols * kElemBytes;
    const uint4* w4 = reinterpret_cast<const uint4*>(static_cast<const unsigned char*>(p.w) + row_bytes_off);
    const uint4* w24 = kTwo ? reinterpret_cast<const uint4*>(static_cast<const unsigned char*>(p.w2) + row_bytes_off)
                            : nullptr;
#pragma unroll
    for (int u = 0; u < kPrefetchSteps * kUnroll; ++u) {
        const int c = part * tachyon::kWarp + lane + u * step;
        if (c < chunks) {
            tachyon_prefetch_l2(w4 + c);
            if (kTwo) tachyon_prefetch_l2(w24 + c);
        }
    }
}

template <int kDtype, bool kVec, bool kTwo, bool kNorm>
__device__ __forceinline__ void gemv_body(const GemvParams& p) {
    __shared__ float red[kWarps][2][kBatch];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int wpr = p.warps_per_row;
    const int rows_per_block = kWarps / wpr;
    const int row = blockIdx.x * rows_per_block + warp / wpr;
    const int part = warp % wpr;
    const bool live = row < p.rows;
    if (kVec && live) prefetch_weights<kDtype, kTwo>(p, row, part, lane);
    // x (the norm reads it first), the bias's neighbours in scratch and the outputs all
    // belong to earlier kernels: the programmatic launch's wait comes before them.
    tachyon::pdl_trigger_then_wait();
    for (int t0 = 0; t0 < p.n; t0 += kBatch) {
        float scale[kBatch];
        tachyon::norm_scales(p, t0, min(kBatch, p.n - t0), scale);
        float acc[kBatch] = {0.f, 0.f, 0.f, 0.f};
        float acc2[kBatch] = {0.f, 0.f, 0.f, 0.f};
        if (live) gemv_rows<kDtype, kVec, kTwo, kNorm>(p, row, part, lane, t0, scale, acc, acc2);
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            acc[b] = tachyon::warp_sum_f(acc[b]);
            if (kTwo) acc2[b] = tachyon::warp_sum_f(acc2[b]);
        }
        if (lane == 0) {
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                red[warp][0][b] = acc[b];
                red[warp][1][b] = acc2[b];
            }
        }
        __syncthreads();
        // The first warp of each row sums the row's parts (fixed order: deterministic).
        if (live && part == 0 && lane < kBatch && t0 + lane < p.n) {
            float y = 0.f, y2 = 0.f;
            for (int k = 0; k < wpr; ++k) {
                y += red[warp + k][0][lane];
                y2 += red[warp + k][1][lane];
            }
            if (p.bias != nullptr) y += p.bias[row];
            if (kTwo) y = y / (1.0f + expf(-y)) * y2;
            tachyon::gemv_store(p, t0 + lane, row, y);
        }
        __syncthreads();
    }
}

template <int kDtype>
__device__ __forceinline__ void gemv_dtype(const GemvParams& p) {
    const uintptr_t bits = reinterpret_cast<uintptr_t>(p.w) |
                           reinterpret_cast<uintptr_t>(p.w2) |
                           reinterpret_cast<uintptr_t>(p.x) |
                           reinterpret_cast<uintptr_t>(p.norm_w);
    const bool vec = p.cols % Per16<kDtype>::kElems == 0 && bits % 16 == 0;
    const bool two = p.w2 != nullptr;
    const bool norm = p.norm_w != nullptr;
    // Each combination is its own straight loop (uniform over the grid).
    if (vec) {
        if (two) {
            if (norm) gemv_body<kDtype, true, true, true>(p);
            else gemv_body<kDtype, true, true, false>(p);
        } else {
            if (norm) gemv_body<kDtype, true, false, true>(p);
            else gemv_body<kDtype, true, false, false>(p);
        }
    } else {
        if (two) {
            if (norm) gemv_body<kDtype, false, true, true>(p);
            else gemv_body<kDtype, false, true, false>(p);
        } else {
            if (norm) gemv_body<kDtype, false, false, true>(p);
            else gemv_body<kDtype, false, false, false>(p);
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) gemv_f32out(const GemvParams p) {
    if (p.dtype == TACHYON_DTYPE_BF16) {
        gemv_dtype<TACHYON_DTYPE_BF16>(p);
    } else if (p.dtype == TACHYON_DTYPE_F16) {
        gemv_dtype<TACHYON_DTYPE_F16>(p);
    } else {
        gemv_dtype<TACHYON_DTYPE_F32>(p);
    }
}
