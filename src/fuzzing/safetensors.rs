//! HF checkpoints: `config.json` validation, safetensors headers (size limit, dtype x
//! elements against byte spans, overlaps), tensors checked against the config, shard index
//! parsing.
//!
//! Input layout (see `bytes`): a flags byte; a u16 length and that many bytes of
//! `config.json`; with flag bit 1, a u16 length and that many bytes of
//! `model.safetensors.index.json`; then the safetensors file, or with flag bit 0 two shards
//! (a u32 length and the first, then the second). `Ok` means config and weights loaded.

use std::sync::Arc;

use super::bytes::Bytes;
use super::{Outcome, Rejected};
use crate::format::safetensors::{SafetensorsDir, shard_names};
use crate::format::weights::ByteSource;
use crate::format::{ModelConfig, ModelWeights};

pub fn run(data: &[u8]) -> Outcome {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let n = usize::from(b.u16());
    let config = b.take(n);
    if flags & 2 != 0 {
        let n = usize::from(b.u16());
        if let Ok(names) = shard_names(&String::from_utf8_lossy(b.take(n))) {
            for name in names {
                assert!(
                    !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
                    "{name:?}"
                );
            }
        }
    }
    let mut shards: Vec<(String, Arc<dyn ByteSource>)> = Vec::new();
    if flags & 1 != 0 {
        let n = b.u32() as usize;
        shards.push((
            "model-00001-of-00002.safetensors".into(),
            Arc::new(b.take(n).to_vec()),
        ));
        shards.push((
            "model-00002-of-00002.safetensors".into(),
            Arc::new(b.rest().to_vec()),
        ));
    } else {
        shards.push(("model.safetensors".into(), Arc::new(b.rest().to_vec())));
    }
    // The tensors are parsed even when the config is bad, so both are exercised.
    let dir = SafetensorsDir::from_shards(shards);
    let json: serde_json::Value = serde_json::from_slice(config).map_err(Rejected::from)?;
    let cfg = ModelConfig::from_hf_json(&json).map_err(Rejected::from)?;
    let dir = dir.map_err(Rejected::from)?;
    let w = ModelWeights::load(&cfg, &dir).map_err(Rejected::from)?;
    assert_eq!((w.embed.rows, w.embed.cols), (cfg.vocab_size, cfg.dim));
    assert_eq!((w.output.rows, w.output.cols), (cfg.vocab_size, cfg.dim));
    for l in &w.layers {
        assert_eq!((l.wq.rows, l.wq.cols), (cfg.q_dim(), cfg.dim));
        assert_eq!((l.wk.rows, l.wv.rows), (cfg.kv_dim(), cfg.kv_dim()));
        assert_eq!((l.w_down.rows, l.w_down.cols), (cfg.dim, cfg.ffn_dim));
        for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
            assert_eq!(m.bytes().len(), m.row_bytes() * m.rows, "{}", m.name);
        }
    }
    Ok(())
}
