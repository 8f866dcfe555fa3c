/*
 * gemm.cu: the prefill matrix product, `out[t, r] = dot(w[r], x[t]) (+ bias[r])` for many
 * activation rows t at once, weights in F16/BF16/F32, f32 accumulation. Takes GemvParams
 * (`w2` and `norm_w` must be NULL: the host runs the norm first; `warps_per_row` is
 * ignored). The epilogue is gemv_fused.cuh's: the residual add and the q/k/v split.
 *
 * A plain shared-memory tiled SIMT GEMM: each block owns 64 weight rows x 32 tokens and
 * walks K in steps of 32, staging a 64x32 weight tile (converted to f32) and a 32x32
 * activation tile in shared memory; each of the 256 threads accumulates 4 rows x 2 tokens.
 * Every weight element is read from memory once per 32 tokens (the GEMV re-reads it every
 * 4), which is what makes prefill cheaper; it does not use tensor cores. BF16 weights with
 * cols a multiple of 8 run gemm_mma.cu (mma.sync) instead; this kernel takes the rest.
 * Layout: w `rows x cols` row-major; x `n x cols` f32; out `n x rows` f32. Any sizes
 * (edges are zero-filled).
 * Launch: grid = (ceil(rows / 64), ceil(n / 32)), block = (256). Static shared memory
 * 32 x 65 + 32 x 33 floats (12.5 KB).
 * Bytes: rows * cols * elem * ceil(n / 32) + n * cols * 4 * ceil(rows / 64) + n * rows * 4.
 * Flops: 2 * n * rows * cols.
 */
#include "gemv_fused.cuh"

namespace {

constexpr int kTileRows = 64;
constexpr int kTileTokens = 32;
constexpr int kTileK = 32;
constexpr int kGemmThreads = 256;

}  // namespace

extern "C" __global__ void __launch_bounds__(kGemmThreads) gemm_f32out(const GemvParams p) {
    __shared__ float ws[kTileK][kTileRows + 1];
    __shared__ float xs[kTileK][kTileTokens + 1];
    const int tid = threadIdx.x;
    const int row0 = blockIdx.x * kTileRows;
    const int tok0 = blockIdx.y * kTileTokens;
    // This thread's outputs: rows r_base + 0..3, tokens t_base + 0..1 (within the tile).
    const int r_base = (tid / 16) * 4;
    const int t_base = (tid % 16) * 2;
    float acc[4][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};

    for (int k0 = 0; k0 < p.cols; k0 += kTileK) {
        // Weight tile: 64 rows x 32 k; consecutive threads take consecutive k of one row.
#pragma unroll
        for (int i = 0; i < kTileRows * kTileK / kGemmThreads; ++i) {
            const int idx = tid + i * kGemmThreads;
            const int r = idx / kTileK, k = idx % kTileK;
            const int gr = row0 + r, gk = k0 + k;
            ws[k][r] = (gr < p.rows && gk < p.cols)
                           ? tachyon::load_elem(p.w, static_cast<size_t>(gr) * p.cols + gk, p.dtype)
                           : 0.0f;
        }
        // Activation tile: 32 tokens x 32 k.
#pragma unroll
        for (int i = 0; i < kTileTokens * kTileK / kGemmThreads; ++i) {
            const int idx = tid + i * kGemmThreads;
            const int t = idx / kTileK, k = idx % kTileK;
            const int gt = tok0 + t, gk = k0 + k;
            xs[k][t] = (gt < p.n && gk < p.cols) ? p.x[static_cast<size_t>(gt) * p.cols + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kTileK; ++k) {
            float a[4], b[2];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = ws[k][r_base + i];
#pragma unroll
            for (int j = 0; j < 2; ++j) b[j] = xs[k][t_base + j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + r_base + i;
        if (r >= p.rows) continue;
        const float bias = p.bias != nullptr ? p.bias[r] : 0.0f;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int t = tok0 + t_base + j;
            if (t < p.n) tachyon::gemv_store(p, t, r, acc[i][j] + bias);
        }
    }
}
