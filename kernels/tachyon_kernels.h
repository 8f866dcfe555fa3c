/*
 * tachyon_kernels.h: the parameter structs every tachyon CUDA kernel takes.
 *
 * This is the one header shared by the device code (the .cu files in kernels/ include it)
 * and the Rust side (build.rs runs bindgen over it; src/backend/cuda/params.rs includes the
 * result), so a field added or reordered here changes both sides in the same build instead
 * of drifting apart.
 *
 * Comments written as C doc comments (slash, two stars) are carried into the Rust bindings
 * as doc comments; plain comments are not.
 *
 * Rules that keep it bindgen-friendly and ABI-stable:
 * - plain C only: no CUDA qualifiers, no C++, no #includes (bindgen parses it as C with
 *   whatever libclang the build machine has, and needs no system headers that way);
 * - fixed-size scalar types only (int is 32-bit and float is IEEE binary32 on every target
 *   tachyon builds for); pointers are device addresses;
 * - each struct is passed BY VALUE as the kernel's only argument, so the launch copies it
 *   into the kernel's parameter space (no device allocation, nothing to free).
 */
#ifndef TACHYON_KERNELS_H
#define TACHYON_KERNELS_H

/**
 * Parameters of `rmsnorm_residual_f32` (kernels/rmsnorm.cu).
 *
 * For each row `r` of `x` (`n_rows` rows of `dim` floats, row-major, contiguous):
 * if `add` is not NULL, `x[r] += add[r]` (written back: the new residual stream); then
 * `out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight`.
 * `out` must not overlap `x` or `add`.
 */
typedef struct {
    /** `n_rows * dim` floats added to `x` before normalizing; NULL for a plain RMSNorm. */
    const float* add;
    /** `n_rows * dim` floats: the residual stream; updated in place only when `add` is set. */
    float* x;
    /** `dim` floats: the per-channel gain. */
    const float* weight;
    /** `n_rows * dim` floats: the normalized rows. */
    float* out;
    /** Number of rows; the launch has exactly this many blocks. */
    int n_rows;
    /** Floats per row, at least 1. */
    int dim;
    /** Added to the mean square before the reciprocal square root. */
    float eps;
} RmsNormParams;

/** Element formats of weight matrices and embedding tables on the device. The quantized
 *  ones are GGML's block formats, stored on the device exactly as in a GGUF file (rows of
 *  whole blocks; 32 elements per block, 256 for the K formats; see kernels/quant.cuh). */
enum {
    TACHYON_DTYPE_F32 = 0,
    TACHYON_DTYPE_F16 = 1,
    TACHYON_DTYPE_BF16 = 2,
    TACHYON_DTYPE_Q4_0 = 3,
    TACHYON_DTYPE_Q4_1 = 4,
    TACHYON_DTYPE_Q5_0 = 5,
    TACHYON_DTYPE_Q5_1 = 6,
    TACHYON_DTYPE_Q8_0 = 7,
    TACHYON_DTYPE_Q4_K = 8,
    TACHYON_DTYPE_Q5_K = 9,
    TACHYON_DTYPE_Q6_K = 10
};

/**
 * Parameters of `embed_gather` (kernels/embed.cu).
 *
 * `out[i] = f32(table[tokens[i]])` for `i < n_tokens`; a row whose token id is not below
 * `vocab` is filled with NaN instead of reading out of bounds.
 */
typedef struct {
    /** `vocab * dim` elements of `dtype`, row-major. */
    const void* table;
    /** `n_tokens` token ids (read on the device, so a CUDA graph can replay new ids). */
    const unsigned int* tokens;
    /** `n_tokens * dim` floats. */
    float* out;
    int n_tokens;
    int dim;
    int vocab;
    /** A `TACHYON_DTYPE_*` value. */
    int dtype;
} EmbedParams;

/**
 * Parameters of `gemv_f32out` (kernels/gemv.cu) and `gemv_quant_f32out`
 * (kernels/gemv_quant.cu, for the quantized `dtype`s): the decode-time matrix product.
 *
 * For each of `n` activation rows t and weight row r:
 * `y = dot(w[r], x[t]) (+ bias[r])`; with `w2` set, also `y2 = dot(w2[r], x[t])` and the
 * stored value is `silu(y) * y2` (the SwiGLU of a gate and an up projection).
 * `out[t * rows + r]` receives the result. Weights are `rows x cols` row-major in `dtype`.
 */
typedef struct {
    const void* w;
    /** Second weight matrix (same shape and dtype) for the fused SwiGLU form, or NULL. */
    const void* w2;
    /** `rows` floats added to the first product, or NULL. */
    const float* bias;
    /** `n * cols` floats. */
    const float* x;
    /** `n * rows` floats; must not overlap `x`. */
    float* out;
    int rows;
    int cols;
    int n;
    int dtype;
    /** Warps that share one output row (1, 2, 4 or 8; the block is 8 warps). More warps
     *  per row keep every SM streaming when the matrix has few rows. */
    int warps_per_row;
    /** RMSNorm in the prologue (GEMV and quantized GEMV only), or NULL: each activation
     *  row is read as `x[t] * rsqrt(sum(x[t]^2) / cols + eps) * norm_w` (`cols` floats),
     *  the CPU's `rmsnorm` of it, every block summing the row's squares itself. */
    const float* norm_w;
    float eps;
    /** Nonzero: the epilogue adds the result to what `out` holds (`x += W a`, the
     *  residual add) instead of overwriting it. */
    int accumulate;
    /** Stacked q/k/v, or NULL: output rows `[0, rows_a)` go to `out` (`n x rows_a`),
     *  `[rows_a, rows_a + rows_b)` to `out_b` (`n x rows_b`), the rest to `out_c`
     *  (`n x (rows - rows_a - rows_b)`). With `out_b` NULL every row goes to `out`. */
    float* out_b;
    float* out_c;
    int rows_a;
    int rows_b;
    /** The activation rows as int8 codes (`quantize_act_q8`, kernels/quantize_act.cu:
     *  `n * cols` codes) for the `gemv_qpack_<format>_q8` kernels, which then read these
     *  and `xd` instead of `x` and take no norm; NULL for every other kernel. */
    const signed char* xq;
    /** Per 32 codes of `xq`: the scale d and d * (sum of the 32 codes), 2 floats. */
    const float* xd;
} GemvParams;

/**
 * Parameters of `quantize_act_q8` (kernels/quantize_act.cu): the activation rows of a
 * product as the dp4a GEMV reads them.
 *
 * Each row t of `x` (`n` rows of `cols` floats, `cols` a multiple of 32), optionally
 * RMSNorm-ed first (`x[t] * rsqrt(sum(x[t]^2) / cols + eps) * norm_w`, the CPU's order),
 * is cut into units of 32 values v; each unit gets `d = max|v| / 127` and codes
 * `q = round_half_even(v * (127 / max|v|))` in -127..=127 (all 0 when max|v| is 0), the
 * CPU's `quant::round_trip_int8` value for value. A unit holding a NaN or an infinity gets
 * d = NaN (and codes 0), so it poisons every product instead of rounding to zero.
 */
typedef struct {
    const float* x;
    /** `cols` floats: the RMSNorm weight, or NULL for no norm. */
    const float* norm_w;
    float eps;
    int n;
    int cols;
    /** `n * cols` codes (16-byte aligned). */
    signed char* q;
    /** `n * cols / 32` pairs (d, d * sum(q)). */
    float* d;
} QuantActParams;

/**
 * Parameters of `rope_f32` (kernels/rope.cu).
 *
 * Rotates the first `2 * half` values of each of the `n_heads` heads (each `head_dim`
 * wide) of each of `n` rows of `x` in place; row i is at position `pos + i`, where `pos`
 * is `*pos_dev` when `pos_dev` is set (a CUDA graph replays new positions) else `pos`.
 * Pairs are (2j, 2j+1) when `interleaved`, else (j, j + half). The angle tables are those
 * of the CPU backend: `cos[p * half + j]`, `sin[p * half + j]` for positions `p < ctx`.
 */
typedef struct {
    float* x;
    const float* cos;
    const float* sin;
    const int* pos_dev;
    int pos;
    int n;
    int n_heads;
    int head_dim;
    int half;
    int interleaved;
    int ctx;
} RopeParams;

/**
 * Parameters of `attn_decode_split` and `attn_decode_reduce` (kernels/attention.cu).
 *
 * First `k`, `v` (`n` rows of `n_kv_heads * head_dim`) are appended at positions
 * `pos..pos+n` of the caches (`attn_kv_append`); then query row i (position `pos + i`),
 * head h attends to cache positions `first..=pos+i` (first = 0, or `pos + i + 1 - window`
 * when `window > 0`) of kv head `h / (n_heads / n_kv_heads)`, scores scaled by
 * 1/sqrt(head_dim). The split kernel cuts those positions into `n_splits` chunks and writes
 * each chunk's max score, exp-sum and unnormalized output; the reduce kernel merges them.
 * `pos` is `*pos_dev` when `pos_dev` is set. The caches hold `kv_dtype` elements: the
 * append rounds to that type, the split kernel widens to f32 as it reads.
 * `attn_prefill_mma_h64` / `_h128` (kernels/attention_prefill.cu) take the same parameters
 * (a BF16 cache, `pos` on the host, no `pos_dev`): their grid z is `n_splits` shares of each
 * kv head's 32-position tiles, whose partials the same reduce kernel merges.
 */
typedef struct {
    const float* q;
    const float* k;
    const float* v;
    /** `ctx * n_kv_heads * head_dim` elements each, of type `kv_dtype`. */
    void* k_cache;
    void* v_cache;
    /** `n * n_heads * head_dim` floats. */
    float* out;
    /** Scratch: `n * n_heads * n_splits * head_dim` floats. */
    float* part_acc;
    /** Scratch: `n * n_heads * n_splits` floats each. */
    float* part_max;
    float* part_sum;
    const int* pos_dev;
    int pos;
    int n;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int window;
    int n_splits;
    int ctx;
    /** The caches' element type: TACHYON_DTYPE_F32, _F16 or _BF16. */
    int kv_dtype;
} AttnParams;

/** Elementwise ops of `elementwise_f32` (kernels/elementwise.cu). */
enum {
    /** `x[i] += y[i]` */
    TACHYON_EW_ADD = 0,
    /** `x[i] += y[i % width]` (a bias broadcast over rows) */
    TACHYON_EW_ADD_ROW = 1,
    /** `x[i] = silu(x[i]) * y[i]` */
    TACHYON_EW_SWIGLU = 2,
    /** `x[i] = y[i]` */
    TACHYON_EW_COPY = 3
};

/** Parameters of `elementwise_f32` (kernels/elementwise.cu). */
typedef struct {
    float* x;
    const float* y;
    /** Elements of `x`. */
    long long len;
    /** Row width for `TACHYON_EW_ADD_ROW`. */
    int width;
    /** A `TACHYON_EW_*` value. */
    int op;
} ElementwiseParams;

/**
 * The token id the pick kernels write when there is no token to pick: every logit is NaN
 * (a damaged model or a numerical fault). The engine ends the request with an error.
 */
enum { TACHYON_NO_TOKEN = 0xFFFFFFFFu };

/**
 * A request's sampling settings in device memory (written once when a generation starts),
 * so a replayed decode step reads them there and changing them re-captures nothing.
 * The penalties are the CPU sampler's (src/engine/sampler.rs), in its order: the
 * repetition penalty on each distinct token among the last `last_n` positions (prompt
 * included; a positive logit divided by it, a negative one multiplied), then presence +
 * frequency * count on each token generated so far (positions >= `prompt_len`).
 * `seed`: the draw at position p is seeded with seed ^ (p * 0x9E3779B97F4A7C15).
 */
typedef struct {
    float temperature;
    float top_p;
    float min_p;
    int top_k;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    int last_n;
    int prompt_len;
    int pad_;
    unsigned long long seed;
} SampleConfig;

/**
 * The next decode step's inputs, which a decode step's pick writes on the device after the
 * token (so a replayed step needs no upload from the host): `*token` = the pick (kept when
 * it is TACHYON_NO_TOKEN), `*pos` + 1, and `*rng_state` = the draw's seed for that
 * position, cfg->seed ^ (pos * 0x9E3779B97F4A7C15). `token` NULL: no advance.
 */
typedef struct {
    const SampleConfig* cfg;
    unsigned int* token;
    int* pos;
    unsigned long long* rng_state;
} StepAdvance;

/**
 * Parameters of `argmax_partial` and `argmax_final` (kernels/sample.cu).
 *
 * The index of the largest of `n` logits (lowest index on ties, NaN never chosen;
 * TACHYON_NO_TOKEN when all are NaN). The partial kernel's `gridDim.x` blocks each write
 * their best (value, index) to `part_val` / `part_idx`; the final kernel (one block) merges `n_parts` of them
 * into `*out`.
 */
typedef struct {
    const float* logits;
    float* part_val;
    int* part_idx;
    unsigned int* out;
    int n;
    int n_parts;
    /** Written by argmax_final after `*out` (see StepAdvance). */
    StepAdvance advance;
} ArgmaxParams;

/**
 * Parameters of the draw (kernels/sample_logits.cu): `sample_scan`, `sample_refine`,
 * `sample_compact` (grid = (n_parts), block = (256)) then `sample_logits` (grid = (1),
 * block = (1024)), launched in that order with the same parameters: one token drawn from the
 * logits with the CPU sampler's filters, in its order: top-k (ties broken by lower id),
 * softmax at `temperature`, min-p (relative to the most likely token), top-p (the smallest
 * most-likely set reaching the mass; ties by lower id), then a draw. NaN logits are never
 * drawn; all NaN gives TACHYON_NO_TOKEN. Penalties are not applied here. The filter values
 * are read by the kernels only: no launch shape depends on them.
 */
typedef struct {
    /** `n` logits, read only. */
    const float* logits;
    /** TACHYON_SAMPLE_SCRATCH_WORDS + `n` words of scratch, all zero before the first draw
     *  (the kernels leave their counters zero again for the next one). */
    float* work;
    /** The drawn token id. */
    unsigned int* out;
    /** A 64-bit generator state in device memory, advanced by each draw (SplitMix64), so a
     *  replayed CUDA graph draws a fresh number every step. */
    unsigned long long* rng_state;
    int n;
    /** Keep the k most likely (0 = all). */
    int top_k;
    /** Greater than 0. */
    float temperature;
    /** In (0, 1]; 1 = off. */
    float top_p;
    /** In [0, 1]; 0 = off. */
    float min_p;
    /** The grid of the three vocabulary passes, in 1..=TACHYON_SAMPLE_MAX_PARTS: block b
     *  owns ids [b * chunk, (b + 1) * chunk) with chunk = ceil(n / n_parts) rounded up to 4. */
    int n_parts;
    /** Written after `*out` (see StepAdvance). */
    StepAdvance advance;
    /** When not NULL, the filters (top_k, at most n; temperature; top_p; min_p) are read
     *  from here in place of the fields above: a replayed CUDA graph draws with the
     *  request's settings as the device holds them. */
    const SampleConfig* cfg;
} SampleParams;

/** Most blocks of the draw's vocabulary passes (SampleParams::n_parts). */
enum { TACHYON_SAMPLE_MAX_PARTS = 160 };
/** Words of the draw's fixed scratch (counters, histograms, candidates), before the n words
 *  the whole-vocabulary fallback uses. */
enum { TACHYON_SAMPLE_SCRATCH_WORDS = 16736 };

/**
 * Parameters of `argmax_partial_masked` (kernels/sample.cu; `argmax_final` then merges its
 * partials with `base`): the argmax of `base` among the tokens `mask` allows.
 * `mask` holds ceil(n / 32) words; bit k % 32 of word k / 32 set allows token k. A refused
 * token is no candidate, as a NaN logit is: TACHYON_NO_TOKEN when no allowed logit is a number.
 */
typedef struct {
    ArgmaxParams base;
    const unsigned int* mask;
} MaskedArgmaxParams;

/**
 * Parameters of `sample_scan_masked`, `sample_refine_masked`, `sample_compact_masked` and
 * `sample_logits_masked` (kernels/sample_logits.cu): the draw of `base` among the tokens
 * `mask` allows (ceil(n / 32) words, as MaskedArgmaxParams). Refused tokens are no
 * candidates (top-k counts allowed tokens only); no allowed number gives TACHYON_NO_TOKEN.
 */
typedef struct {
    SampleParams base;
    const unsigned int* mask;
} MaskedSampleParams;

/**
 * Parameters of `rope_attn_decode_h<HD>_<f32|bf16|f16>` (kernels/rope_attention.cu): one
 * query row's attention block after the projections, in one launch.
 *
 * At position p (`*pos_dev` when `pos_dev` is set, else `pos`): each head of `q`
 * (`n_heads * head_dim` f32) and `k` (`n_kv_heads * head_dim`) is RMS-normed with
 * `q_norm` / `k_norm` (`head_dim` weights, `eps`) when those are not NULL, then rotated
 * (the first `2 * half` values; pairs (2j, 2j+1) when `interleaved`, else (j, j + half);
 * angles `cos[p * half + j]`, `sin[p * half + j]`, `p < rope_ctx`); k and `v` are stored at
 * cache position p (`ctx` positions of `n_kv_heads * head_dim` elements of the kernel's
 * type), and head h attends to positions first..=p of kv head `h / (n_heads / n_kv_heads)`
 * (first = 0, or `p + 1 - window` when `window > 0`), scores scaled by 1/sqrt(head_dim).
 * `q`, `k`, `v` are read only. The grid's y extent is `max_splits`; a split covers at
 * least `min_chunk` positions. A position outside the cache or the table gives NaN.
 */
typedef struct {
    const float* q;
    const float* k;
    const float* v;
    /** `head_dim` weights each, or NULL (no per-head norm). */
    const float* q_norm;
    const float* k_norm;
    const float* cos;
    const float* sin;
    /** `ctx * n_kv_heads * head_dim` elements each (f32, bf16 or f16: the kernel's type). */
    void* k_cache;
    void* v_cache;
    /** `n_heads * head_dim` floats. */
    float* out;
    /** Scratch: `n_heads * max_splits * head_dim` floats. */
    float* part_acc;
    /** Scratch: `n_heads * max_splits` floats each. */
    float* part_max;
    float* part_sum;
    /** One per block of the grid's x extent, zero before the launch (and left zero). */
    unsigned int* counters;
    const int* pos_dev;
    int pos;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int window;
    int max_splits;
    int min_chunk;
    int ctx;
    int rope_ctx;
    int half;
    int interleaved;
    float eps;
} RopeAttnParams;


/**
 * The token history the device keeps for penalties (kernels/penalty.cu), indexed by
 * position: `hist[p]` is the token at position p (`ctx` words); `last[t]` is 1 + the latest
 * position holding token t, 0 for none (`vocab` words); `counts[t]` counts token t at the
 * generated positions (`vocab` words). `next_pos[0]`: the first position not yet recorded.
 */
typedef struct {
    unsigned int* hist;
    unsigned int* last;
    unsigned int* counts;
    int* next_pos;
    int ctx;
    int vocab;
} PenaltyState;

/**
 * Parameters of `penalty_seed`: after `last` and `counts` are zeroed and `hist[from..to)`
 * holds the prompt's last tokens, marks them in `last` and sets `next_pos` to `to`.
 */
typedef struct {
    PenaltyState st;
    int from;
    int to;
} PenaltySeedParams;

/**
 * Parameters of `penalty_apply`: records the step's token `*token` at `*pos` (once per
 * position), then applies `cfg`'s penalties to the `vocab` logits in place.
 */
typedef struct {
    PenaltyState st;
    const SampleConfig* cfg;
    float* logits;
    const unsigned int* token;
    const int* pos;
} PenaltyApplyParams;


#endif /* TACHYON_KERNELS_H */
