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

#endif /* TACHYON_KERNELS_H */
