//! The device buffers of the CUDA backend's `Ops` types: activations, weight matrices, KV
//! caches and rope tables, all in the CPU backend's layouts (f32 row-major activations and
//! caches, weights as stored in the file), so every op has the CPU op as its twin.

use cudarc::driver::CudaSlice;

use super::params::{
    TACHYON_DTYPE_BF16, TACHYON_DTYPE_F16, TACHYON_DTYPE_F32, TACHYON_DTYPE_Q4_0,
    TACHYON_DTYPE_Q4_1, TACHYON_DTYPE_Q4_K, TACHYON_DTYPE_Q5_0, TACHYON_DTYPE_Q5_1,
    TACHYON_DTYPE_Q5_K, TACHYON_DTYPE_Q6_K, TACHYON_DTYPE_Q8_0,
};
use crate::backend::BackendError;
use crate::format::{GgmlType, Weight};

/// An activation matrix: `rows x width` f32 on the device.
pub struct CudaAct {
    pub buf: CudaSlice<f32>,
    pub rows: usize,
    pub width: usize,
}

/// A weight matrix on the device, bytes as in the file (F32/F16/BF16 elements or GGML
/// blocks).
pub struct CudaMat {
    pub buf: CudaSlice<u8>,
    pub rows: usize,
    pub cols: usize,
    /// A `TACHYON_DTYPE_*` value.
    pub dtype: i32,
}

/// One layer's KV cache: `ctx x kv_dim` f32 for K and for V.
pub struct CudaKv {
    pub k: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
    pub ctx: usize,
    pub kv_dim: usize,
}

/// The rope angle tables (`format::Rope::fill_angles`), on the device.
pub struct CudaRope {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub half: usize,
    pub ctx: usize,
    pub interleaved: bool,
}

/// The kernels' code for a weight format (`TACHYON_DTYPE_*`). Every format tachyon reads
/// runs on the device as stored: F32/F16/BF16 elements or GGML blocks (kernels/quant.cuh).
pub fn dtype_code(ty: GgmlType) -> i32 {
    (match ty {
        GgmlType::F32 => TACHYON_DTYPE_F32,
        GgmlType::F16 => TACHYON_DTYPE_F16,
        GgmlType::BF16 => TACHYON_DTYPE_BF16,
        GgmlType::Q4_0 => TACHYON_DTYPE_Q4_0,
        GgmlType::Q4_1 => TACHYON_DTYPE_Q4_1,
        GgmlType::Q5_0 => TACHYON_DTYPE_Q5_0,
        GgmlType::Q5_1 => TACHYON_DTYPE_Q5_1,
        GgmlType::Q8_0 => TACHYON_DTYPE_Q8_0,
        GgmlType::Q4K => TACHYON_DTYPE_Q4_K,
        GgmlType::Q5K => TACHYON_DTYPE_Q5_K,
        GgmlType::Q6K => TACHYON_DTYPE_Q6_K,
    }) as i32
}

/// Whether a `TACHYON_DTYPE_*` code is a GGML block format.
pub fn is_block_format(dtype: i32) -> bool {
    dtype >= TACHYON_DTYPE_Q4_0 as i32
}

/// The kernels' code for `w`'s format, once its rows are checked to be whole blocks (the
/// kernels index blocks by `cols / block_elems`).
pub fn dtype_of(w: &Weight) -> Result<i32, BackendError> {
    let qk = w.ty.block_len();
    if !w.cols.is_multiple_of(qk) {
        return Err(BackendError::Device(format!(
            "{}: rows of {} elements are not whole {}-element {} blocks",
            w.name, w.cols, qk, w.ty
        )));
    }
    Ok(dtype_code(w.ty))
}
