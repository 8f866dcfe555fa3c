/*
 * embed.cu: token embedding gather, `out[i] = f32(table[tokens[i]])`.
 *
 * Layout: table `vocab x dim` row-major in F32/F16/BF16, or rows of whole blocks of a GGML
 * block format (dequantized on the fly, see quant.cuh); tokens `n_tokens` u32 on the
 * device (a CUDA graph replays whatever id was written there); out `n_tokens x dim` f32.
 * An id >= vocab fills its row with NaN (loud, and no out-of-bounds read).
 * Launch: grid = (n_tokens), block = (256). No shared memory.
 * Bytes: dim * elem_size read + 4 * dim written per token; no flops. Latency-bound at
 * decode (one row): a single block, one pass.
 * Programmatic dependent launch (kernels/README.md): the kernel's first statement triggers
 * the next kernel and waits for the previous ones (tachyon::pdl_trigger_then_wait); nothing
 * is read or written before it.
 */
#include "quant.cuh"

extern "C" __global__ void __launch_bounds__(1024) embed_gather(const EmbedParams p) {
    tachyon::pdl_trigger_then_wait();
    const int row = blockIdx.x;
    if (row >= p.n_tokens) return;
    const unsigned int tok = p.tokens[row];
    float* out = p.out + static_cast<size_t>(row) * p.dim;
    if (tok >= static_cast<unsigned int>(p.vocab)) {
        for (int i = threadIdx.x; i < p.dim; i += blockDim.x) out[i] = __int_as_float(0x7fc00000);
        return;
    }
    if (tachyon::is_quant(p.dtype)) {
        const size_t row_bytes = static_cast<size_t>(p.dim / tachyon::quant_block_elems(p.dtype)) *
                                 tachyon::quant_block_bytes(p.dtype);
        const uint8_t* trow = static_cast<const uint8_t*>(p.table) + tok * row_bytes;
        for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
            out[i] = tachyon::quant_row_elem(trow, p.dtype, i);
        }
        return;
    }
    const size_t base = static_cast<size_t>(tok) * p.dim;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
        out[i] = tachyon::load_elem(p.table, base + i, p.dtype);
    }
}
