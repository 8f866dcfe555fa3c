//! GGUF, the model file format, read and written. The reader parses the header (metadata
//! key/values and tensor infos) of a GGUF v2/v3 file and hands out bounds-checked slices of
//! tensor data from a read-only memory map.
//!
//! Threat model: the file's *contents* are hostile. Every count, length, offset and shape is
//! validated before use; a malformed file yields a [`GgufError`] naming what is wrong, never a
//! panic, never an allocation sized by an unchecked count, never unsafe reads. Out of scope:
//! another process truncating or rewriting the file while it is mapped (the usual mmap caveat).
//!
//! Files: this one (limits, errors, metadata values, tensor infos, [`GgufFile`]), `reader`
//! (the header parser), [`writer`] (the one GGUF encoder: [`writer::write_gguf`] streams a
//! model out), [`builder`] ([`GgufBuilder`]: valid or deliberately broken files for tests,
//! through the writer's encoder) and `tests`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub mod builder;
mod reader;
#[cfg(test)]
mod tests;
pub mod writer;

pub use builder::GgufBuilder;

use crate::format::GgmlType;
use reader::parse_header;

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Arrays may hold arrays, but no deeper: an array value is level 1, an array inside it is
/// level 2, and an array inside that is rejected. Real files use level 1 only; the bound keeps
/// recursion (and the stack) shallow on hostile input.
pub const MAX_ARRAY_NESTING: u32 = 2;

/// Most metadata key/value pairs accepted. Real files carry a few dozen; the cap bounds the
/// memory a header of tiny pairs could make us spend (roughly 10x its size otherwise).
pub const MAX_METADATA_KV: u64 = 1 << 16;

/// Most tensors accepted. The largest real models (unmerged MoE experts) have ~50k.
pub const MAX_TENSORS: u64 = 1 << 20;

/// Most metadata array elements accepted, summed over all arrays (nested ones included).
/// Each element costs a 32-byte [`MetaValue`] even when the file spends 1 byte on it, so this
/// is what bounds memory; real vocabularies (tokens + scores + types + merges) stay below 2M.
pub const MAX_METADATA_ARRAY_ELEMENTS: u64 = 1 << 23;

/// The most tensor dimensions ggml supports.
const MAX_DIMS: u32 = 4;

/// The most elements reserved up front for any one array/list; beyond this the vector grows
/// as elements are actually parsed, so memory follows the bytes that really exist.
const PREALLOC_CAP: u64 = 1 << 16;

// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Smallest possible encodings, used to reject counts the remaining bytes cannot hold.
/// Key: u64 length + at least 1 byte (empty keys are rejected) + u32 type + at least 1 byte.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Tensor info: u64 name length + 1 name byte + u32 n_dims + one u64 dim + u32 type + u64 offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// Why a GGUF file was rejected. Messages say what was wrong, where, and which limit applied.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot open {path}: {error}")]
    Open { path: String, error: std::io::Error },
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("{}", version_message(*.0))]
    UnsupportedVersion(u32),
    #[error(
        "truncated file: {what} at offset {offset} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{0}")]
    Invalid(String),
    /// An error inside one metadata entry or tensor info; `context` names it.
    #[error("{context}: {error}")]
    Context {
        context: String,
        error: Box<GgufError>,
    },
}

fn version_message(v: u32) -> String {
    if matches!(v.swap_bytes(), 2 | 3) {
        format!(
            "unsupported GGUF version {v:#x}: this looks like a big-endian file, only little-endian is supported"
        )
    } else {
        format!("unsupported GGUF version {v} (supported: 2 and 3)")
    }
}

impl GgufError {
    /// The error with all [`GgufError::Context`] layers removed.
    pub fn innermost(&self) -> &GgufError {
        let mut e = self;
        while let GgufError::Context { error, .. } = e {
            e = error;
        }
        e
    }

    fn context(self, context: impl FnOnce() -> String) -> GgufError {
        GgufError::Context {
            context: context(),
            error: Box::new(self),
        }
    }
}

type Result<T> = std::result::Result<T, GgufError>;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// Elements of one type (GGUF arrays are homogeneous; an empty array's element type is
    /// not kept).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer value that is >= 0.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer value, converted (possibly rounding) to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v as f32),
            MetaValue::I32(v) => Some(v as f32),
            MetaValue::U64(v) => Some(v as f32),
            MetaValue::I64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// `"u32"`, `"string"`, `"array[string]"`, ...; an array is named by its first element's
    /// type (`"array"` when empty, `"array[array]"` when nested).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(a) => match a.first() {
                None => "array",
                Some(MetaValue::U8(_)) => "array[u8]",
                Some(MetaValue::I8(_)) => "array[i8]",
                Some(MetaValue::U16(_)) => "array[u16]",
                Some(MetaValue::I16(_)) => "array[i16]",
                Some(MetaValue::U32(_)) => "array[u32]",
                Some(MetaValue::I32(_)) => "array[i32]",
                Some(MetaValue::U64(_)) => "array[u64]",
                Some(MetaValue::I64(_)) => "array[i64]",
                Some(MetaValue::F32(_)) => "array[f32]",
                Some(MetaValue::F64(_)) => "array[f64]",
                Some(MetaValue::Bool(_)) => "array[bool]",
                Some(MetaValue::String(_)) => "array[string]",
                Some(MetaValue::Array(_)) => "array[array]",
            },
        }
    }

    /// The GGUF value type id this value is written with.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => T_U8,
            MetaValue::I8(_) => T_I8,
            MetaValue::U16(_) => T_U16,
            MetaValue::I16(_) => T_I16,
            MetaValue::U32(_) => T_U32,
            MetaValue::I32(_) => T_I32,
            MetaValue::U64(_) => T_U64,
            MetaValue::I64(_) => T_I64,
            MetaValue::F32(_) => T_F32,
            MetaValue::F64(_) => T_F64,
            MetaValue::Bool(_) => T_BOOL,
            MetaValue::String(_) => T_STRING,
            MetaValue::Array(_) => T_ARRAY,
        }
    }
}

/// Name of a GGUF value type id, or `None` for ids the format does not define.
fn value_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => return None,
    })
}

/// Fewest bytes one value of type `id` can take (string: its length; array: type + count).
fn min_value_bytes(id: u32) -> u64 {
    match id {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_ARRAY => 12,
        _ => 8,
    }
}

/// One tensor's description. Shapes are in ggml order: `dims[0]` is the row length.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dims (checked at open to fit an `i64`).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `dims[0]`, the innermost dimension.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Product of `dims[1..]` (1 for a vector).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata, tensor infos, and the file's bytes (mapped or owned).
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment)
            .field("metadata_kv", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let open_err = |error| GgufError::Open {
            path: path.display().to_string(),
            error,
        };
        let file = std::fs::File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; the parser reports it properly.
            return Self::from_bytes(Vec::new());
        }
        // SAFETY: the mapping is read-only and only ever read through bounds-checked slices.
        // Like every mmap reader we rely on the file not being truncated or modified by another
        // process while it is open (that would be a SIGBUS or torn reads, not memory unsafety
        // in our code); hostile *contents* are handled by the parser.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(open_err)?;
        Self::parse(Storage::Mmap(map))
    }

    /// Parses an in-memory file with the same checks as [`GgufFile::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile> {
        let header = parse_header(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            meta_index: header.meta_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Alignment of the data section and of every tensor offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset where the data section starts (tensor offsets in the file are relative
    /// to it; [`TensorInfo::offset`] already includes it). May equal or exceed the file size
    /// when the file has no tensors.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The value as `u64` when it is an integer >= 0.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// The value as `f32` when it is a float or an integer.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.get(key)?.as_array()
    }

    /// `None` if missing, not an array, or any element is not a string.
    pub fn str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_array(key)?.iter().map(MetaValue::as_str).collect()
    }

    /// `None` if missing, not an array, or any element is not a number (integers convert).
    pub fn f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?.iter().map(MetaValue::as_f32).collect()
    }

    /// `None` if missing, not an array, or any element is not an integer that fits an `i32`.
    pub fn i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()))
            .collect()
    }

    /// `general.architecture`, e.g. `"llama"` or `"qwen2"`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// The data of `t`, which must be one of this file's tensor infos (their bounds were
    /// checked at open).
    ///
    /// # Panics
    /// If `t` describes a range outside this file (an info from another file, or edited).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.n_bytes).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        match range.and_then(|r| self.bytes().get(r)) {
            Some(s) => s,
            None => panic!(
                "tensor `{}` (offset {}, {} bytes) is outside this {}-byte GGUF file",
                t.name,
                t.offset,
                t.n_bytes,
                self.file_size()
            ),
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}
