/*
 * gemv.cu: the decode-time matrix product, `out[t, r] = dot(w[r], x[t])` for a handful of
 * activation rows t, weights in F16/BF16 (or F32), f32 accumulation; optional bias, and a
 * fused SwiGLU form that streams the gate and up matrices together and writes
 * `silu(gate . x) * (up . x)`.
 *
 * Layout: w (and w2) `rows x cols` row-major; x `n x cols` f32; out `n x rows` f32.
 * Launch: block = (32, 8): 8 warps; `warps_per_row` (1/2/4/8) warps share one output row,
 * so a block covers 8 / warps_per_row rows and grid = (ceil(rows / rows_per_block)).
 * Shared memory: 8 warps x 4 batch x 2 products floats, static.
 * Vector path (16-bit weights, cols % 8 == 0, w/w2/x 16-byte aligned): each lane loads 16
 * bytes of weights (8 values) and two float4 of x per step, so a warp moves 512 weight
 * bytes per load instruction. Otherwise a scalar path with the same reduction.
 * Activation rows are processed 4 at a time; a weight chunk is loaded once per 4 rows
 * (n > 4 re-reads the weights, mostly from L2).
 * Bytes: rows * cols * elem (x2 with w2) + n * cols * 4 (x, cached) + n * rows * 4 out.
 * Flops: 2 * n * rows * cols (x2 with w2). At n = 1 this is ~1 flop per weight byte:
 * memory-bound on every GPU; the goal is the copy bandwidth.
 */
#include "common.cuh"

namespace {

constexpr int kWarps = 8;
constexpr int kBatch = 4;

__device__ __forceinline__ void unpack8(const uint4 raw, int dtype, float f[8]) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (dtype == TACHYON_DTYPE_BF16) {
            // bf16 -> f32 is a 16-bit shift: low half is the first element.
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

template <bool kVec, bool kTwo>
__device__ __forceinline__ void gemv_rows(const GemvParams& p, int row, int part, int lane,
                                          int t0, float acc[kBatch], float acc2[kBatch]) {
    const int nb = min(kBatch, p.n - t0);
    const size_t row_off = static_cast<size_t>(row) * p.cols;
    const int step = p.warps_per_row * tachyon::kWarp;
    if (kVec) {
        const int chunks = p.cols / 8;
        const uint4* w4 = reinterpret_cast<const uint4*>(
            static_cast<const unsigned short*>(p.w) + row_off);
        const uint4* w24 = kTwo ? reinterpret_cast<const uint4*>(
                                      static_cast<const unsigned short*>(p.w2) + row_off)
                                : nullptr;
#pragma unroll 2
        for (int c = part * tachyon::kWarp + lane; c < chunks; c += step) {
            float wf[8], wf2[8];
            unpack8(__ldg(w4 + c), p.dtype, wf);
            if (kTwo) unpack8(__ldg(w24 + c), p.dtype, wf2);
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                if (b < nb) {
                    const float4* x4 = reinterpret_cast<const float4*>(
                        p.x + static_cast<size_t>(t0 + b) * p.cols) + 2 * c;
                    const float4 xa = x4[0], xb = x4[1];
                    const float xs[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        acc[b] = fmaf(wf[j], xs[j], acc[b]);
                        if (kTwo) acc2[b] = fmaf(wf2[j], xs[j], acc2[b]);
                    }
                }
            }
        }
    } else {
        for (int i = part * tachyon::kWarp + lane; i < p.cols; i += step) {
            const float wv = tachyon::load_elem(p.w, row_off + i, p.dtype);
            const float wv2 = kTwo ? tachyon::load_elem(p.w2, row_off + i, p.dtype) : 0.0f;
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                if (b < nb) {
                    const float xv = p.x[static_cast<size_t>(t0 + b) * p.cols + i];
                    acc[b] = fmaf(wv, xv, acc[b]);
                    if (kTwo) acc2[b] = fmaf(wv2, xv, acc2[b]);
                }
            }
        }
    }
}

template <bool kVec, bool kTwo>
__device__ __forceinline__ void gemv_body(const GemvParams& p) {
    __shared__ float red[kWarps][2][kBatch];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int wpr = p.warps_per_row;
    const int rows_per_block = kWarps / wpr;
    const int row = blockIdx.x * rows_per_block + warp / wpr;
    const int part = warp % wpr;
    const bool live = row < p.rows;
    for (int t0 = 0; t0 < p.n; t0 += kBatch) {
        float acc[kBatch] = {0.f, 0.f, 0.f, 0.f};
        float acc2[kBatch] = {0.f, 0.f, 0.f, 0.f};
        if (live) gemv_rows<kVec, kTwo>(p, row, part, lane, t0, acc, acc2);
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
            p.out[static_cast<size_t>(t0 + lane) * p.rows + row] = y;
        }
        __syncthreads();
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) gemv_f32out(const GemvParams p) {
    const uintptr_t bits = reinterpret_cast<uintptr_t>(p.w) |
                           reinterpret_cast<uintptr_t>(p.w2) |
                           reinterpret_cast<uintptr_t>(p.x);
    const bool vec = p.dtype != TACHYON_DTYPE_F32 && p.cols % 8 == 0 && bits % 16 == 0;
    const bool two = p.w2 != nullptr;
    if (vec) {
        if (two) gemv_body<true, true>(p);
        else gemv_body<true, false>(p);
    } else {
        if (two) gemv_body<false, true>(p);
        else gemv_body<false, false>(p);
    }
}
