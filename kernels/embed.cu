/*
 * embed.cu: token embedding gather, `out[i] = f32(table[tokens[i]])`.
 *
 * Layout: table `vocab x dim` row-major in F32/F16/BF16; tokens `n_tokens` u32 on the
 * device (a CUDA graph replays whatever id was written there); out `n_tokens x dim` f32.
 * An id >= vocab fills its row with NaN (loud, and no out-of-bounds read).
 * Launch: grid = (n_tokens), block = (256). No shared memory.
 * Bytes: dim * elem_size read + 4 * dim written per token; no flops. Latency-bound at
 * decode (one row): a single block, one pass.
 */
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) embed_gather(const EmbedParams p) {
    const int row = blockIdx.x;
    if (row >= p.n_tokens) return;
    const unsigned int tok = p.tokens[row];
    float* out = p.out + static_cast<size_t>(row) * p.dim;
    if (tok >= static_cast<unsigned int>(p.vocab)) {
        for (int i = threadIdx.x; i < p.dim; i += blockDim.x) out[i] = __int_as_float(0x7fc00000);
        return;
    }
    const size_t base = static_cast<size_t>(tok) * p.dim;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
        out[i] = tachyon::load_elem(p.table, base + i, p.dtype);
    }
}
