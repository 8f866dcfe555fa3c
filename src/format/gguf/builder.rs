//! [`GgufBuilder`]: GGUF bytes for tests and fuzz seeds, valid or deliberately broken,
//! encoded by the one GGUF writer ([`super::writer::encode_header`]).

use super::writer::{RawTensorInfo, encode_header};
use super::{DEFAULT_ALIGNMENT, GgufError, GgufFile, MetaValue};
use crate::format::GgmlType;

/// Writes GGUF bytes, for tests and fixtures.
///
/// It does not validate: it writes exactly what it is given (heterogeneous arrays, tensor data
/// of the wrong length, bogus type ids and offsets via [`GgufBuilder::tensor_raw`]), so tests
/// can craft broken files as easily as valid ones. Layout: header, metadata in insertion order,
/// tensor infos in insertion order, padding to the alignment, then each data-carrying tensor
/// at the next aligned offset, then any [`GgufBuilder::trailing_bytes`]. The alignment used for
/// layout is `general.alignment` when set to a valid `U32`, else 32.
///
/// ```
/// use tachyon::format::gguf::{GgufBuilder, GgufFile, MetaValue};
/// let bytes = GgufBuilder::new()
///     .meta("general.architecture", MetaValue::String("llama".into()))
///     .tensor_f32("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
///     .build();
/// let f = GgufFile::from_bytes(bytes).unwrap();
/// assert_eq!(f.architecture(), Some("llama"));
/// ```
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    version: u32,
    pub(super) metadata: Vec<(String, MetaValue)>,
    tensors: Vec<BuilderTensor>,
    trailing: Vec<u8>,
}

#[derive(Clone, Debug)]
struct BuilderTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    placement: Placement,
}

#[derive(Clone, Debug)]
enum Placement {
    /// Laid out in the data section by the builder.
    Data(Vec<u8>),
    /// Info only, with this relative offset written verbatim.
    At(u64),
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    /// An empty version-3 file.
    pub fn new() -> Self {
        GgufBuilder {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
            trailing: Vec::new(),
        }
    }

    /// The version field to write (default 3).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Appends a metadata pair (duplicates are written as given). An empty array is written
    /// with element type u8.
    pub fn meta(mut self, key: impl Into<String>, value: MetaValue) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor whose `data` the builder places at the next aligned offset.
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Self {
        self.tensors.push(BuilderTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id: ty as u32,
            placement: Placement::Data(data),
        });
        self
    }

    /// An F32 tensor holding `values`.
    pub fn tensor_f32(self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    /// A tensor of type `ty` whose data is all zero bytes, sized for `dims` (no data when the
    /// size is not computable).
    pub fn tensor_zeros(self, name: impl Into<String>, dims: &[u64], ty: GgmlType) -> Self {
        let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let len = n
            .and_then(|n| ty.bytes_for(n))
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(0);
        self.tensor(name, dims, ty, vec![0; len])
    }

    /// Appends a tensor info written verbatim (any type id, any relative `offset`) with no
    /// data of its own; pair with [`GgufBuilder::trailing_bytes`] to give it bytes to point at.
    pub fn tensor_raw(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> Self {
        self.tensors.push(BuilderTensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            placement: Placement::At(offset),
        });
        self
    }

    /// Bytes appended after the last placed tensor's data (unpadded).
    pub fn trailing_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.trailing.extend_from_slice(&bytes);
        self
    }

    fn layout_alignment(&self) -> u64 {
        match self
            .metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
        {
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let align = self.layout_alignment() as usize;
        // Place data-carrying tensors first so their offsets can be written in the infos.
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            match &t.placement {
                Placement::Data(bytes) => {
                    data.resize(data.len().next_multiple_of(align), 0);
                    offsets.push(data.len() as u64);
                    data.extend_from_slice(bytes);
                }
                Placement::At(off) => offsets.push(*off),
            }
        }
        data.extend_from_slice(&self.trailing);

        let infos: Vec<RawTensorInfo> = self
            .tensors
            .iter()
            .zip(offsets)
            .map(|(t, offset)| RawTensorInfo {
                name: &t.name,
                dims: &t.dims,
                type_id: t.type_id,
                offset,
            })
            .collect();
        let mut out = encode_header(self.version, &self.metadata, &infos, align as u64);
        out.extend_from_slice(&data);
        out
    }

    /// Builds and parses.
    pub fn build_file(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.build())
    }
}
