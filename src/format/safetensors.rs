//! HF checkpoints: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, read over mmap with the `safetensors` crate (which checks
//! the header: offsets inside the file, dtype x elements = byte span, no overlaps).
//! Shards can also come from memory ([`SafetensorsDir::from_shards`]) so the same checks are
//! fuzzed and tested without files.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::ModelError;
use super::weights::{ByteSource, TensorLookup, Weight};

mod header_check;
use crate::format::GgmlType;

/// Where one tensor's bytes are.
struct Entry {
    file: Arc<dyn ByteSource>,
    ty: GgmlType,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// Every tensor of an HF checkpoint directory, by HF name.
pub struct SafetensorsDir {
    tensors: HashMap<String, Entry>,
}

/// Largest safetensors JSON header we accept; real ones are well under 1 MiB.
pub const MAX_HEADER: u64 = 64 << 20;

/// Most shards an index may name; real checkpoints have a few dozen at most.
const MAX_SHARDS: usize = 4096;

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<SafetensorsDir, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if single.is_file() {
            vec!["model.safetensors".into()]
        } else if index.is_file() {
            let text = read_index(&index)?;
            shard_names(&text)
                .map_err(|m| ModelError::Format(format!("{}: {m}", index.display())))?
        } else {
            return Err(ModelError::Format(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut shards: Vec<(String, Arc<dyn ByteSource>)> = Vec::with_capacity(files.len());
        for f in files {
            let path = dir.join(&f);
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is read-only; a model file changing under a running engine is
            // outside what we can defend against (same as every mmap-based loader).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            shards.push((f, Arc::new(map)));
        }
        Self::from_shards(shards)
    }

    /// Parses shards already in memory (`(file name, bytes)`), with the same checks as
    /// [`SafetensorsDir::open`]: the header size limit, the `safetensors` crate's validation
    /// (offsets inside the file, dtype x elements = byte span, no overlaps or holes), the
    /// supported dtypes, and no tensor in two shards.
    pub fn from_shards(
        shards: Vec<(String, Arc<dyn ByteSource>)>,
    ) -> Result<SafetensorsDir, ModelError> {
        let mut tensors = HashMap::new();
        for (f, src) in shards {
            let bytes = src.bytes();
            if let Some(n) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                let n = u64::from_le_bytes(n);
                if n > MAX_HEADER {
                    return Err(ModelError::Format(format!(
                        "{f}: header of {n} bytes is over the limit of {MAX_HEADER}"
                    )));
                }
            }
            let st = SafeTensors::deserialize(bytes).map_err(|e| {
                // The crate's message does not always say which tensor is at fault; find it.
                let why = header_check::explain(bytes)
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                ModelError::Format(format!("{f}: {e}{why}"))
            })?;
            let base = bytes.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let ty = match view.dtype() {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(ModelError::Tensor {
                            name,
                            msg: format!("dtype {other:?} (supported: F32, F16, BF16)"),
                        });
                    }
                };
                let data = view.data();
                let entry = Entry {
                    file: src.clone(),
                    ty,
                    shape: view.shape().to_vec(),
                    offset: data.as_ptr() as usize - base,
                    len: data.len(),
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::Tensor {
                        name,
                        msg: "appears in two shards".into(),
                    });
                }
            }
        }
        Ok(SafetensorsDir { tensors })
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Counts of tensors per format, for `tachyon info`.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for e in self.tensors.values() {
            match counts.iter_mut().find(|(t, _)| *t == e.ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.ty, 1)),
            }
        }
        counts
    }
}

/// Reads a shard index, refusing one larger than any real index could be.
fn read_index(path: &Path) -> Result<String, ModelError> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_HEADER + 1)
        .read_to_string(&mut text)
        .map_err(|e| ModelError::io(path, e))?;
    if text.len() as u64 > MAX_HEADER {
        return Err(ModelError::Format(format!(
            "{}: over {MAX_HEADER} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// The distinct shard files a `model.safetensors.index.json` names, in first-seen order.
/// Shards must be plain file names next to the index: names that climb out are refused.
pub fn shard_names(index_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| e.to_string())?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("weight_map missing")?;
    let mut files: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f.as_str().ok_or("weight_map value not a string")?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(format!("shard name {f:?} is not a plain file name"));
        }
        if !files.iter().any(|x| x == f) {
            if files.len() == MAX_SHARDS {
                return Err(format!("more than {MAX_SHARDS} shards"));
            }
            files.push(f.to_string());
        }
    }
    Ok(files)
}

/// The HF name of a tensor given its GGUF-style name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, role) = rest.split_once('.')?;
    let hf_role = match role {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_role}"))
}

impl TensorLookup for SafetensorsDir {
    fn file_name(&self, gguf_name: &str) -> String {
        hf_name(gguf_name).unwrap_or_else(|| gguf_name.to_string())
    }

    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Older Llama checkpoints store each layer's rope inverse frequencies, which tachyon
    /// recomputes from the config.
    fn is_ignorable(&self, file_name: &str) -> bool {
        file_name.starts_with("model.layers.")
            && file_name.ends_with(".self_attn.rotary_emb.inv_freq")
    }

    fn find(&self, gguf_name: &str) -> Result<Option<Weight>, ModelError> {
        let Some(name) = hf_name(gguf_name) else {
            return Ok(None);
        };
        let Some(e) = self.tensors.get(&name) else {
            return Ok(None);
        };
        let (rows, cols) = match e.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            s => {
                return Err(ModelError::Tensor {
                    name,
                    msg: format!("has {} dimensions, expected 1 or 2", s.len()),
                });
            }
        };
        let src: Arc<dyn ByteSource> = e.file.clone();
        Weight::new(&name, e.ty, rows, cols, src, e.offset, e.len).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.bias").as_deref(),
            Some("model.layers.12.self_attn.q_proj.bias")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.x"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
