//! GGUF files: the reader, then everything a load derives from the file (config, weight
//! views checked against the config, the tokenizer, the chat template's compilation).
//!
//! Input: the bytes of a GGUF file. `Ok` means the whole load succeeded.

use std::sync::Arc;

use super::{Outcome, Rejected};
use crate::format::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

pub fn run(data: &[u8]) -> Outcome {
    let file = GgufFile::from_bytes(data.to_vec()).map_err(Rejected::from)?;
    check_layout(&file);
    let file = Arc::new(file);
    // Each later stage reads the file independently, so run them all and report the first
    // refusal: a broken config must not hide a panic in the tokenizer.
    let weights = crate::format::gguf_weights(&file).map(|(cfg, w)| check_weights(&cfg, &w));
    let tokenizer = Tokenizer::from_gguf(&file)
        .map(|t| super::tokenizer::exercise(&t, "Hello, world! 123 <|im_start|>"));
    weights.map_err(Rejected::from)?;
    tokenizer.map_err(Rejected::from)?.map_err(Rejected::from)
}

/// What the rest of the engine relies on in a file the reader accepted.
fn check_layout(f: &GgufFile) {
    assert!(f.alignment().is_power_of_two());
    let mut spans = Vec::with_capacity(f.tensors().len());
    for t in f.tensors() {
        assert_eq!(
            f.tensor_bytes(t).len() as u64,
            t.n_bytes,
            "tensor {}",
            t.name
        );
        assert_eq!(t.offset % f.alignment(), 0, "tensor {}", t.name);
        assert!((1..=4).contains(&t.dims.len()), "tensor {}", t.name);
        assert_eq!(
            t.ty.bytes_for(t.n_elements()),
            Some(t.n_bytes),
            "tensor {}",
            t.name
        );
        spans.push((t.offset, t.offset + t.n_bytes));
    }
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlapping tensors accepted"
    );
}

/// Every accepted weight has the config's shape and its bytes are all inside the file.
fn check_weights(cfg: &crate::format::ModelConfig, w: &crate::format::ModelWeights) {
    assert_eq!((w.embed.rows, w.embed.cols), (cfg.vocab_size, cfg.dim));
    assert_eq!(w.layers.len(), cfg.n_layers);
    assert_eq!(w.final_norm.len(), cfg.dim);
    for l in &w.layers {
        for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
            assert_eq!(m.bytes().len(), m.row_bytes() * m.rows, "{}", m.name);
        }
    }
}
