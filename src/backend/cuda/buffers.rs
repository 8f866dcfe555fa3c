//! The device buffers of the CUDA backend's `Ops` types: activations, weight matrices, KV
//! caches and rope tables, all in the CPU backend's layouts (f32 row-major activations,
//! caches of f32 or of a 16-bit type (`KvDtype`), weights as stored in the file), so every
//! op has the CPU op as its twin.

use cudarc::driver::CudaSlice;

use super::params::{
    TACHYON_DTYPE_BF16, TACHYON_DTYPE_F16, TACHYON_DTYPE_F32, TACHYON_DTYPE_Q4_0,
    TACHYON_DTYPE_Q4_1, TACHYON_DTYPE_Q4_K, TACHYON_DTYPE_Q5_0, TACHYON_DTYPE_Q5_1,
    TACHYON_DTYPE_Q5_K, TACHYON_DTYPE_Q6_K, TACHYON_DTYPE_Q8_0,
};
use crate::backend::{BackendError, KvDtype};
use crate::format::{GgmlType, Weight};

/// An activation matrix: `rows x width` f32 on the device.
pub struct CudaAct {
    pub buf: CudaSlice<f32>,
    pub rows: usize,
    pub width: usize,
}

/// A weight matrix on the device: bytes as in the file (F32/F16/BF16 elements or GGML
/// blocks), or, with `packed`, GGML blocks in the aligned layout of `repack.rs` (the
/// matrix products' form; embedding tables stay as in the file).
pub struct CudaMat {
    pub buf: CudaSlice<u8>,
    pub rows: usize,
    pub cols: usize,
    /// A `TACHYON_DTYPE_*` value.
    pub dtype: i32,
    /// Whether `buf` holds the repacked layout (`repack::layout`), not the file's blocks.
    pub packed: bool,
}

/// One layer's KV cache: `ctx x kv_dim` elements of `dtype` for K and for V (the bytes of
/// each; the kernels widen every element to f32 as they read it).
pub struct CudaKv {
    pub k: CudaSlice<u8>,
    pub v: CudaSlice<u8>,
    pub ctx: usize,
    pub kv_dim: usize,
    pub dtype: KvDtype,
}

/// The kernels' code for a cache element type (`TACHYON_DTYPE_*`).
pub fn kv_dtype_code(d: KvDtype) -> i32 {
    (match d {
        KvDtype::F32 => TACHYON_DTYPE_F32,
        KvDtype::F16 => TACHYON_DTYPE_F16,
        KvDtype::Bf16 => TACHYON_DTYPE_BF16,
    }) as i32
}

/// f32 values as cache elements of `d` (rounded to nearest, as the kernels store them).
pub fn kv_encode(d: KvDtype, vals: &[f32]) -> Vec<u8> {
    match d {
        KvDtype::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        KvDtype::F16 => vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        KvDtype::Bf16 => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Cache elements of `d` widened to f32.
pub fn kv_decode(d: KvDtype, bytes: &[u8]) -> Vec<f32> {
    match d {
        KvDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        KvDtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        KvDtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
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
