//! Launch of `kernels/embed.cu`: the embedding rows of token ids already in device memory
//! (a host id list is copied into the backend's id buffer first, by the caller).

use cudarc::driver::CudaSlice;

use super::{i32_of, launch, ptr, ptr_mut, shape_err, u32_of};
use crate::backend::BackendError;
use crate::backend::cuda::buffers::{CudaAct, CudaMat};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::params::EmbedParams;

/// `out[i] = table[ids[i]]` for the first `n_tokens` ids of `ids`; an id past the table
/// gives a NaN row.
pub fn embed(
    dev: &CudaDevice,
    table: &CudaMat,
    ids: &CudaSlice<u32>,
    n_tokens: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    if n_tokens > out.rows || n_tokens > ids.len() || out.width != table.cols {
        return Err(shape_err(format!(
            "embedding {n_tokens} tokens (of {} ids) of {} into [{} x {}]",
            ids.len(),
            table.cols,
            out.rows,
            out.width
        )));
    }
    if table.packed {
        // The products' layout (repack.rs), which embed.cu does not read.
        return Err(shape_err(
            "an embedding table must be uploaded with upload_table, not repacked".into(),
        ));
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let p = EmbedParams {
        table: ptr(&table.buf, dev) as *const std::ffi::c_void,
        tokens: ptr(ids, dev) as *const u32,
        out: ptr_mut(&mut out.buf, dev) as *mut f32,
        n_tokens: i32_of(n_tokens, "tokens")?,
        dim: i32_of(table.cols, "embedding width")?,
        vocab: i32_of(table.rows, "vocabulary")?,
        dtype: table.dtype,
    };
    launch(
        dev,
        &dev.kernels.embed_gather,
        (u32_of(n_tokens, "tokens")?, 1, 1),
        (256, 1, 1),
        &p,
        "embed_gather",
    )
}
