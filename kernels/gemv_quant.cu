/*
 * gemv_quant.cu: the decode-time matrix product for weights in GGML block formats (Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), dequantized in registers, never expanded in
 * memory: `out[t, r] = dot(w[r], x[t])` for a handful of activation rows t, f32
 * accumulation; the fused parts of gemv.cu (gemv_fused.cuh): RMSNorm of the activation
 * rows in the prologue, bias, SwiGLU (w2), residual add and q/k/v split in the epilogue.
 * Stacked q/k/v matrices are whole rows of one block type (the host stacks them only then).
 *
 * Layout: w (and w2) `rows` rows of `cols / block_elems` whole blocks, as in the GGUF file
 * (cols is a multiple of the block size: 32, or 256 for the K formats; the host checks);
 * x `n x cols` f32; out `n x rows` f32.
 * Launch: block = (32, 8): 8 warps; `warps_per_row` warps share one output row (as in
 * gemv.cu); grid = (ceil(rows / (8 / warps_per_row))). Shared memory: as gemv.cu.
 * Work split: a warp takes 32 consecutive elements of its row at a time, lane l element l
 * of them, so the lanes of a warp read the same block (its bytes arrive in one or two
 * transactions) and consecutive x values. The parts of a row interleave by 32-element
 * chunks. Activation rows are processed 4 at a time (a weight chunk is dequantized once
 * per 4 rows).
 * Bytes: rows * cols * bits / 8 (4.5 bits for Q4_0 ... 8.5 for Q8_0, x2 with w2) +
 * n * cols * 4 (x) + n * rows * 4 (out). Flops: 2 * n * rows * cols plus the dequantize.
 * At the 1B shape in Q4_K (4.5 bits): norm+QKV 3.5 MB, o-proj 2.4 MB, norm+gate+up 18.9 MB,
 * down 9.4 MB per token.
 * Programmatic dependent launch (kernels/README.md): before the wait, an L2 prefetch of the
 * start of each row; everything else after it.
 * This is the correctness-first form (one byte load per element, scales re-read per lane
 * from L1), kept as the readable one and for a block matrix uploaded as stored: matrices
 * uploaded for the products are repacked and run on gemv_qpack.cu (wide loads, scales
 * once per 32 elements).
 */
#include "gemv_fused.cuh"
#include "quant.cuh"

namespace {

constexpr int kQWarps = 8;
constexpr int kQBatch = tachyon::kGemvBatch;

template <bool kTwo, bool kNorm>
__device__ __forceinline__ void qgemv_body(const GemvParams& p) {
    __shared__ float red[kQWarps][2][kQBatch];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int wpr = p.warps_per_row;
    const int rows_per_block = kQWarps / wpr;
    const int row = blockIdx.x * rows_per_block + warp / wpr;
    const int part = warp % wpr;
    const bool live = row < p.rows;
    const int qk = tachyon::quant_block_elems(p.dtype);
    const size_t row_bytes = static_cast<size_t>(p.cols / qk) * tachyon::quant_block_bytes(p.dtype);
    const uint8_t* wrow = static_cast<const uint8_t*>(p.w) + (live ? row : 0) * row_bytes;
    const uint8_t* wrow2 = kTwo ? static_cast<const uint8_t*>(p.w2) + (live ? row : 0) * row_bytes : nullptr;
    const int chunks = p.cols / tachyon::kWarp;
    // Before the programmatic launch's wait only the weights may be touched: the warps of a
    // row prefetch its first (warps_per_row x 4) KB into L2, one 128-byte line per lane (the
    // whole row at the 1B shape in Q4_K); x, the outputs and every write come after.
    if (live) {
        const size_t line = static_cast<size_t>(part * tachyon::kWarp + lane) * 128;
        if (line < row_bytes) {
            tachyon_prefetch_l2(wrow + line);
            if (kTwo) tachyon_prefetch_l2(wrow2 + line);
        }
    }
    tachyon::pdl_trigger_then_wait();
    for (int t0 = 0; t0 < p.n; t0 += kQBatch) {
        const int nb = min(kQBatch, p.n - t0);
        float scale[kQBatch];
        tachyon::norm_scales(p, t0, nb, scale);
        float acc[kQBatch] = {0.f, 0.f, 0.f, 0.f};
        float acc2[kQBatch] = {0.f, 0.f, 0.f, 0.f};
        if (live) {
            for (int c = part; c < chunks; c += wpr) {
                const int i = c * tachyon::kWarp + lane;
                const float wv = tachyon::quant_row_elem(wrow, p.dtype, i);
                const float wv2 = kTwo ? tachyon::quant_row_elem(wrow2, p.dtype, i) : 0.0f;
                const float g = kNorm ? p.norm_w[i] : 1.0f;
#pragma unroll
                for (int b = 0; b < kQBatch; ++b) {
                    if (b < nb) {
                        float xv = p.x[static_cast<size_t>(t0 + b) * p.cols + i];
                        // The CPU's rmsnorm order: (x * scale) * weight.
                        if (kNorm) xv = xv * scale[b] * g;
                        acc[b] = fmaf(wv, xv, acc[b]);
                        if (kTwo) acc2[b] = fmaf(wv2, xv, acc2[b]);
                    }
                }
            }
        }
#pragma unroll
        for (int b = 0; b < kQBatch; ++b) {
            acc[b] = tachyon::warp_sum_f(acc[b]);
            if (kTwo) acc2[b] = tachyon::warp_sum_f(acc2[b]);
        }
        if (lane == 0) {
#pragma unroll
            for (int b = 0; b < kQBatch; ++b) {
                red[warp][0][b] = acc[b];
                red[warp][1][b] = acc2[b];
            }
        }
        __syncthreads();
        // The first warp of each row sums the row's parts (fixed order: deterministic).
        if (live && part == 0 && lane < kQBatch && t0 + lane < p.n) {
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

}  // namespace

extern "C" __global__ void __launch_bounds__(256) gemv_quant_f32out(const GemvParams p) {
    const bool norm = p.norm_w != nullptr;
    if (p.w2 != nullptr) {
        if (norm) qgemv_body<true, true>(p);
        else qgemv_body<true, false>(p);
    } else {
        if (norm) qgemv_body<false, true>(p);
        else qgemv_body<false, false>(p);
    }
}
