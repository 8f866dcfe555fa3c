//! Host copies of `CudaBackend`'s activations and KV caches, for tests and tools: each
//! read-back synchronizes (the forward pass itself never does, see the parent module).

use super::CudaBackend;
use crate::backend::BackendError;
use crate::backend::cuda::buffers::{CudaAct, CudaKv, kv_decode, kv_encode};
use crate::backend::cuda::launch::{dev_err, shape_err};

impl CudaBackend {
    /// An activation matrix holding `data` (`rows * width` values).
    pub fn act_from_host(
        &mut self,
        rows: usize,
        width: usize,
        data: &[f32],
    ) -> Result<CudaAct, BackendError> {
        if data.len() != rows * width {
            return Err(shape_err(format!(
                "{} values for a [{rows} x {width}] matrix",
                data.len()
            )));
        }
        let buf = self
            .dev
            .stream()
            .clone_htod(data)
            .map_err(dev_err("uploading activations"))?;
        Ok(CudaAct { buf, rows, width })
    }

    /// All values of an activation matrix, after the queued work finished.
    pub fn act_to_host(&mut self, x: &CudaAct) -> Result<Vec<f32>, BackendError> {
        let v = self
            .dev
            .stream()
            .clone_dtoh(&x.buf)
            .map_err(dev_err("reading activations"))?;
        self.dev.synchronize().map_err(dev_err("running kernels"))?;
        Ok(v)
    }

    /// A KV cache of the backend's element type holding `k` and `v` (`ctx * kv_dim` values
    /// each, rounded to that type).
    pub fn kv_from_host(
        &mut self,
        ctx: usize,
        kv_dim: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<CudaKv, BackendError> {
        if k.len() != ctx * kv_dim || v.len() != ctx * kv_dim {
            return Err(shape_err("KV cache contents of the wrong size".into()));
        }
        let s = self.dev.stream();
        let d = self.kv_dtype;
        Ok(CudaKv {
            k: s.clone_htod(&kv_encode(d, k))
                .map_err(dev_err("uploading a KV cache"))?,
            v: s.clone_htod(&kv_encode(d, v))
                .map_err(dev_err("uploading a KV cache"))?,
            ctx,
            kv_dim,
            dtype: d,
        })
    }

    /// The K and V caches' contents widened to f32, after the queued work finished.
    pub fn kv_to_host(&mut self, kv: &CudaKv) -> Result<(Vec<f32>, Vec<f32>), BackendError> {
        let s = self.dev.stream();
        let k = s.clone_dtoh(&kv.k).map_err(dev_err("reading a KV cache"))?;
        let v = s.clone_dtoh(&kv.v).map_err(dev_err("reading a KV cache"))?;
        self.dev.synchronize().map_err(dev_err("running kernels"))?;
        Ok((kv_decode(kv.dtype, &k), kv_decode(kv.dtype, &v)))
    }
}
