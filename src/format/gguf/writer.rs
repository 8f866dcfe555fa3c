//! Writes GGUF v3 files as llama.cpp and the `gguf` Python package read them, streaming the
//! tensor data so a model never has to fit in memory twice.
//!
//! Layout: header (magic, version, tensor count, metadata count), metadata key/values,
//! tensor infos (name, dims innermost first, type, offset from the data start), zero
//! padding to the alignment, then each tensor's bytes at its aligned offset.

use std::io::{self, Write};

use super::{MetaValue, write_str, write_value};
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
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(specs.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_str(&mut head, k);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        write_value(&mut head, v);
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(specs.len());
    for s in specs {
        let size = s.bytes()?;
        write_str(&mut head, &s.name);
        // GGUF lists dimensions innermost first: a [rows, cols] matrix is (cols, rows).
        if s.vector {
            head.extend_from_slice(&1u32.to_le_bytes());
            head.extend_from_slice(&(s.rows * s.cols).to_le_bytes());
        } else {
            head.extend_from_slice(&2u32.to_le_bytes());
            head.extend_from_slice(&s.cols.to_le_bytes());
            head.extend_from_slice(&s.rows.to_le_bytes());
        }
        head.extend_from_slice(&(s.ty as u32).to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = pad_to(offset + size);
        sizes.push(size);
    }
    head.resize(pad_to(head.len() as u64) as usize, 0);
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
                let n = s.ty.bytes_for((s.rows * s.cols) as u64).unwrap() as usize;
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
