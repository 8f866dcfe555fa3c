//! A model whose tensors disagree with its config (missing, extra, wrong shape, wrong type,
//! wrong number of dimensions) is refused at load, before anything reaches a backend, with
//! a message naming the tensor as the file names it.

mod fuzz_seeds;

use std::sync::Arc;

use fuzz_seeds::{DIM, TinyGguf, hf_tensors, st_file, st_input};
use tachyon::format::GgmlType;
use tachyon::format::gguf::{GgufFile, MetaValue};
use tachyon::format::gguf_weights;
use tachyon::fuzzing;

fn gguf_error(model: TinyGguf) -> String {
    let file =
        Arc::new(GgufFile::from_bytes(model.build()).expect("the container itself is valid"));
    match gguf_weights(&file) {
        Ok(_) => panic!("loaded a model that disagrees with its config"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "{p:?} not in: {err}");
    }
}

#[test]
fn gguf_tiny_model_loads() {
    let file = Arc::new(GgufFile::from_bytes(TinyGguf::new().build()).unwrap());
    let (cfg, w) = gguf_weights(&file).unwrap();
    assert_eq!((cfg.n_layers, cfg.dim), (1, DIM as usize));
    assert!(w.tied_output);
    // Rope factors of the right size are used, not refused as extra.
    let with_rope = TinyGguf::new().tensor("rope_freqs.weight", &[2], GgmlType::F32);
    let file = Arc::new(GgufFile::from_bytes(with_rope.build()).unwrap());
    let (cfg, _) = gguf_weights(&file).unwrap();
    assert_eq!(cfg.rope.freq_factors, Some(vec![1.0, 1.0]));
}

#[test]
fn gguf_mismatches_name_the_tensor() {
    let t = TinyGguf::new;
    assert_names(
        &gguf_error(t().without("blk.0.ffn_up.weight")),
        &["blk.0.ffn_up.weight", "missing"],
    );
    assert_names(
        &gguf_error(t().set("llama.block_count", MetaValue::U32(2))),
        &["blk.1.attn_norm.weight", "missing"],
    );
    assert_names(
        &gguf_error(t().tensor("blk.1.attn_norm.weight", &[DIM], GgmlType::F32)),
        &[
            "blk.1.attn_norm.weight",
            "not used by a llama model of 1 layers",
        ],
    );
    assert_names(
        &gguf_error(
            t().tensor("blk.0.attn_q.bias", &[DIM], GgmlType::F32)
                .tensor("v.extra", &[4], GgmlType::F32),
        ),
        &["blk.0.attn_q.bias", "(and 1 more)"],
    );
    assert_names(
        &gguf_error(t().tensor("blk.0.attn_k.weight", &[DIM, DIM], GgmlType::F16)),
        &[
            "blk.0.attn_k.weight",
            "shape [8, 8], the config needs [4, 8]",
        ],
    );
    assert_names(
        &gguf_error(t().tensor("blk.0.attn_q.weight", &[DIM, 2, DIM / 2], GgmlType::F16)),
        &["blk.0.attn_q.weight", "expected 1 or 2 dimensions"],
    );
    assert_names(
        &gguf_error(t().tensor("rope_freqs.weight", &[32], GgmlType::Q8_0)),
        &["rope_freqs.weight", "needs 2 float values"],
    );
    // Quantized vectors: only possible where a row is whole blocks.
    let wide = || TinyGguf::with_dim(32);
    assert!(gguf_weights(&Arc::new(GgufFile::from_bytes(wide().build()).unwrap())).is_ok());
    assert_names(
        &gguf_error(wide().tensor("blk.0.attn_norm.weight", &[32], GgmlType::Q8_0)),
        &[
            "blk.0.attn_norm.weight",
            "is Q8_0; vectors must be F32, F16 or BF16",
        ],
    );
    assert_names(
        &gguf_error(wide().tensor("output_norm.weight", &[32], GgmlType::Q4_0)),
        &["output_norm.weight", "is Q4_0"],
    );
}

const CONFIG: &str = r#"{"model_type":"qwen2","hidden_size":8,"num_attention_heads":2,"num_key_value_heads":1,"num_hidden_layers":1,"intermediate_size":16,"vocab_size":16}"#;

type Tensors = Vec<(String, &'static str, Vec<u64>, Vec<u8>)>;

fn st_error(edit: impl FnOnce(&mut Tensors)) -> String {
    let mut t = hf_tensors();
    edit(&mut t);
    let e: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = t
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    match fuzzing::safetensors::run(&st_input(CONFIG, None, &[st_file(&e)])) {
        Ok(()) => panic!("loaded a checkpoint that disagrees with its config"),
        Err(e) => e.to_string(),
    }
}

fn replace(t: &mut Tensors, suffix: &str, dtype: &'static str, shape: Vec<u64>, elem_bytes: u64) {
    let n: u64 = shape.iter().product();
    let e = t.iter_mut().find(|e| e.0.ends_with(suffix)).unwrap();
    (e.1, e.2, e.3) = (dtype, shape, vec![0; (n * elem_bytes) as usize]);
}

#[test]
fn safetensors_tiny_model_loads() {
    let e: Vec<(String, &str, Vec<u64>, Vec<u8>)> = hf_tensors();
    let e: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = e
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    fuzzing::safetensors::run(&st_input(CONFIG, None, &[st_file(&e)])).unwrap();
    // Precomputed rope tables of old checkpoints are ignored, not refused.
    let mut with_inv = e.clone();
    with_inv.push((
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "F32",
        vec![2],
        vec![0; 8],
    ));
    fuzzing::safetensors::run(&st_input(CONFIG, None, &[st_file(&with_inv)])).unwrap();
}

#[test]
fn safetensors_mismatches_name_the_tensor() {
    let k_bias = "model.layers.0.self_attn.k_proj.bias";
    assert_names(
        &st_error(|t| t.retain(|e| e.0 != k_bias)),
        &[k_bias, "missing"],
    );
    assert_names(
        &st_error(|t| {
            t.push((
                "model.layers.0.self_attn.o_proj.bias".into(),
                "F32",
                vec![DIM],
                vec![0; 32],
            ))
        }),
        &[
            "model.layers.0.self_attn.o_proj.bias",
            "not used by a qwen2 model",
        ],
    );
    assert_names(
        &st_error(|t| replace(t, "k_proj.weight", "F16", vec![DIM, DIM], 2)),
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "the config needs [4, 8]",
        ],
    );
    assert_names(
        &st_error(|t| replace(t, "q_proj.weight", "I16", vec![DIM, DIM], 2)),
        &["model.layers.0.self_attn.q_proj.weight", "dtype I16"],
    );
    assert_names(
        &st_error(|t| replace(t, "q_proj.weight", "F16", vec![DIM, 2, DIM / 2], 2)),
        &["model.layers.0.self_attn.q_proj.weight", "3 dimensions"],
    );
}

#[test]
fn safetensors_format_violations_name_the_tensor() {
    let run = |header: &str, data: usize| {
        let file = [
            (header.len() as u64).to_le_bytes().to_vec(),
            header.as_bytes().to_vec(),
            vec![0; data],
        ]
        .concat();
        fuzzing::safetensors::run(&st_input(CONFIG, None, &[file]))
            .unwrap_err()
            .to_string()
    };
    assert_names(
        &run(
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#,
            8,
        ),
        &[
            "tensor w",
            "F32 shape [2, 2] needs 128 bits but data_offsets [0, 8) span 8 bytes",
        ],
    );
    assert_names(
        &run(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
        ),
        &["tensors b and a overlap"],
    );
    assert_names(
        &run(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
        ),
        &["tensor a", "hole"],
    );
    assert_names(
        &run(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
            16,
        ),
        &["tensor a", "overflows"],
    );
    assert_names(
        &run(
            r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
            16,
        ),
        &["tensor a", "extend past"],
    );
    let mut huge = (1u64 << 63).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let err = fuzzing::safetensors::run(&st_input(CONFIG, None, &[huge]))
        .unwrap_err()
        .to_string();
    assert_names(
        &err,
        &["header of 9223372036854775808 bytes is over the limit"],
    );
}
