//! Writes GGUF v3 files as llama.cpp and the `gguf` Python package read them, streaming the
//! tensor data so a model never has to fit in memory twice.
//!
//! Layout: header (magic, version, tensor count, metadata count), metadata key/values,
//! tensor infos (name, dims innermost first, type, offset from the data start), zero
//! padding to the alignment, then each tensor's bytes at its aligned offset.

use std::io::{self, Write};

use super::{MetaValue, T_U8};
use crate::format::GgmlType;

/// The alignment written (GGUF's default, so no `general.alignment` key is needed).
const ALIGNMENT: u64 = 32;

/// One tensor to write: its name, type and shape as `[rows, cols]` (1-D: `[1, len]`).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub ty: GgmlType,
    pub rows: u64,
    pub cols: u64,
    /// Written as 1-D (norms, biases) rather than 2-D.
    pub vector: bool,
}

impl TensorSpec {
    pub fn bytes(&self) -> io::Result<u64> {
        self.rows
            .checked_mul(self.cols)
            .and_then(|n| self.ty.bytes_for(n))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{}: {} x {} {} is not a whole number of blocks",
                    self.name, self.rows, self.cols, self.ty
                ))
            })
    }
}

/// One tensor info as it goes into the header: dims innermost first, the type id and the
/// data offset relative to the data section, all written verbatim.
#[derive(Clone, Debug)]
pub struct RawTensorInfo<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub type_id: u32,
    pub offset: u64,
}

/// The header of a GGUF file: magic, `version`, the counts, `metadata` in order, the tensor
/// `infos` in order, then zero padding to `alignment`. Everything is written as given (the
/// caller decides whether the file is valid), so the model writer and the test builder
/// share this one encoder.
pub fn encode_header(
    version: u32,
    metadata: &[(String, MetaValue)],
    infos: &[RawTensorInfo],
    alignment: u64,
) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&version.to_le_bytes());
    head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        write_value(&mut head, v);
    }
    for t in infos {
        write_str(&mut head, t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.type_id.to_le_bytes());
        head.extend_from_slice(&t.offset.to_le_bytes());
    }
    head.resize(
        (head.len() as u64).next_multiple_of(alignment.max(1)) as usize,
        0,
    );
    head
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(b) => out.push(u8::from(*b)),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::Array(items) => {
            let elem_ty = items.first().map_or(T_U8, MetaValue::type_id);
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

fn pad_to(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Write a GGUF file to `out`: `metadata`, then the tensors of `specs`, each one's bytes
/// produced on demand by `data(i)` (which must return exactly `specs[i].bytes()` bytes).
pub fn write_gguf<W: Write>(
    out: &mut W,
    metadata: &[(String, MetaValue)],
    specs: &[TensorSpec],
    mut data: impl FnMut(usize) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    // GGUF lists dimensions innermost first: a [rows, cols] matrix is (cols, rows).
    let dims: Vec<Vec<u64>> = specs
        .iter()
        .map(|s| {
            if s.vector {
                vec![s.rows * s.cols]
            } else {
                vec![s.cols, s.rows]
            }
        })
        .collect();
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(specs.len());
    let mut infos = Vec::with_capacity(specs.len());
    for (s, dims) in specs.iter().zip(&dims) {
        let size = s.bytes()?;
        infos.push(RawTensorInfo {
            name: &s.name,
            dims,
            type_id: s.ty as u32,
            offset,
        });
        offset = pad_to(offset + size);
        sizes.push(size);
    }
    let head = encode_header(3, metadata, &infos, ALIGNMENT);
    out.write_all(&head)?;
    for (i, &size) in sizes.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != size {
            return Err(io::Error::other(format!(
                "{}: {} bytes produced, {size} expected",
                specs[i].name,
                bytes.len()
            )));
        }
        out.write_all(&bytes)?;
        let pad = (pad_to(size) - size) as usize;
        out.write_all(&[0u8; ALIGNMENT as usize][..pad])?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gguf::GgufFile;

    #[test]
    fn written_files_read_back() {
        let specs = vec![
            TensorSpec {
                name: "a.weight".into(),
                ty: GgmlType::Q8_0,
                rows: 3,
                cols: 64,
                vector: false,
            },
            TensorSpec {
                name: "b.weight".into(),
                ty: GgmlType::F32,
                rows: 1,
                cols: 5,
                vector: true,
            },
            TensorSpec {
                name: "c.weight".into(),
                ty: GgmlType::Q4K,
                rows: 2,
                cols: 256,
                vector: false,
            },
        ];
        // The writer stores whatever bytes it is handed (encoding is the quantizer's job), so
        // each tensor gets distinct arbitrary bytes of its exact size and must read back as is.
        let data: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let n = s.ty.bytes_for(s.rows * s.cols).unwrap() as usize;
                (0..n).map(|i| (i * 37 + k * 101) as u8).collect()
            })
            .collect();
        let meta = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String("llama".into()),
            ),
            (
                "x.list".to_string(),
                MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(7)]),
            ),
        ];
        let mut buf = Vec::new();
        write_gguf(&mut buf, &meta, &specs, |i| Ok(data[i].clone())).unwrap();
        let g = GgufFile::from_bytes(buf).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.i32_array("x.list"), Some(vec![-1, 7]));
        for (s, bytes) in specs.iter().zip(&data) {
            let t = g.tensor(&s.name).unwrap();
            assert_eq!(
                (t.ty, t.n_rows(), t.row_len()),
                (s.ty, s.rows, s.cols),
                "{}",
                s.name
            );
            assert_eq!(g.tensor_bytes(t), &bytes[..], "{}", s.name);
        }
    }

    #[test]
    fn a_short_tensor_is_an_error() {
        let specs = vec![TensorSpec {
            name: "a".into(),
            ty: GgmlType::F32,
            rows: 1,
            cols: 4,
            vector: true,
        }];
        let err = write_gguf(&mut Vec::new(), &[], &specs, |_| Ok(vec![0u8; 8])).unwrap_err();
        assert!(
            err.to_string().contains("8 bytes produced, 16 expected"),
            "{err}"
        );
    }
}
