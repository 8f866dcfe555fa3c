//! GGUF reader: parses the header (metadata key/values and tensor infos) of a GGUF v2/v3
//! file and hands out bounds-checked slices of tensor data from a read-only memory map.
//!
//! Threat model: the file's *contents* are hostile. Every count, length, offset and shape is
//! validated before use; a malformed file yields a [`GgufError`] naming what is wrong, never a
//! panic, never an allocation sized by an unchecked count, never unsafe reads. Out of scope:
//! another process truncating or rewriting the file while it is mapped (the usual mmap caveat).
//!
//! [`GgufBuilder`] writes GGUF bytes (valid or deliberately broken) for tests.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub mod writer;

use crate::format::GgmlType;

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

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| Some((self.buf.get(self.pos..end)?, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 length followed by that many UTF-8 bytes.
    fn str(&mut self, what: &str) -> Result<&'a str> {
        let len = self.u64(what)?;
        let at = self.offset();
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            GgufError::Invalid(format!("{what} at offset {at} is not valid UTF-8 ({e})"))
        })
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Rejects `count` items of at least `min_bytes` each when the rest of the file cannot hold
/// them, then applies the sanity cap `max`.
fn check_count(c: &Cursor, count: u64, min_bytes: u64, what: &str, max: u64) -> Result<()> {
    if count > c.remaining() / min_bytes {
        return Err(GgufError::Truncated {
            what: format!("{what} {count} (at least {min_bytes} bytes each)"),
            offset: c.offset(),
            needed: count.saturating_mul(min_bytes),
            available: c.remaining(),
        });
    }
    if count > max {
        return Err(GgufError::Invalid(format!(
            "{what} {count} exceeds the limit of {max}"
        )));
    }
    Ok(())
}

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata key/value count")?;
    check_count(
        &c,
        kv_count,
        MIN_KV_BYTES,
        "metadata key/value count",
        MAX_METADATA_KV,
    )?;
    check_count(
        &c,
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        "tensor count",
        MAX_TENSORS,
    )?;

    let mut meta = MetaParser {
        c,
        elements_left: MAX_METADATA_ARRAY_ELEMENTS,
    };
    let mut metadata = Vec::with_capacity(kv_count.min(PREALLOC_CAP) as usize);
    let mut meta_index = HashMap::with_capacity(kv_count.min(PREALLOC_CAP) as usize);
    for i in 0..kv_count {
        let key = meta
            .c
            .str("metadata key")
            .map_err(|e| e.context(|| format!("metadata entry {i} of {kv_count}")))?;
        let value = meta
            .read_entry_value(key)
            .map_err(|e| e.context(|| format!("metadata key `{key}`")))?;
        if meta_index.insert(key.to_owned(), metadata.len()).is_some() {
            return Err(GgufError::Invalid(format!(
                "duplicate metadata key `{key}`"
            )));
        }
        metadata.push((key.to_owned(), value));
    }
    let mut c = meta.c;

    let alignment = match meta_index
        .get("general.alignment")
        .and_then(|&i| metadata.get(i))
    {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, MetaValue::U32(a))) => {
            return Err(GgufError::Invalid(format!(
                "general.alignment is {a}; it must be a nonzero power of two"
            )));
        }
        Some((_, v)) => {
            return Err(GgufError::Invalid(format!(
                "general.alignment must be a u32, found a {}",
                v.type_name()
            )));
        }
    };

    // Re-check now that the metadata's size is known.
    check_count(
        &c,
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        "tensor count",
        MAX_TENSORS,
    )?;
    let mut tensors = Vec::with_capacity(tensor_count.min(PREALLOC_CAP) as usize);
    let mut tensor_index = HashMap::with_capacity(tensor_count.min(PREALLOC_CAP) as usize);
    for i in 0..tensor_count {
        let name = c
            .str("tensor name")
            .map_err(|e| e.context(|| format!("tensor {i} of {tensor_count}")))?;
        let t = read_tensor_info(&mut c, name, alignment)
            .map_err(|e| e.context(|| format!("tensor `{name}`")))?;
        if tensor_index
            .insert(name.to_owned(), tensors.len())
            .is_some()
        {
            return Err(GgufError::Invalid(format!(
                "duplicate tensor name `{name}`"
            )));
        }
        tensors.push(t);
    }

    // The data section starts at the next multiple of the alignment after the infos.
    let data_offset = c
        .offset()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::Invalid("data section offset overflows".into()))?;
    let file_size = buf.len() as u64;
    for t in &mut tensors {
        let bad = |msg: String| GgufError::Invalid(msg).context(|| format!("tensor `{}`", t.name));
        let start = data_offset.checked_add(t.offset).ok_or_else(|| {
            bad(format!(
                "offset {} + data section start {data_offset} overflows",
                t.offset
            ))
        })?;
        let end = start.checked_add(t.n_bytes).ok_or_else(|| {
            bad(format!(
                "absolute offset {start} + size {} overflows",
                t.n_bytes
            ))
        })?;
        if end > file_size {
            return Err(bad(format!(
                "data [{start}, {end}) ({} bytes of {}) extends past the end of the {file_size}-byte file",
                t.n_bytes, t.ty
            )));
        }
        t.offset = start;
    }

    // Overlap check: sort by start; each tensor must end at or before the next one starts.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::Invalid(format!(
                "tensors `{}` [{}, {}) and `{}` [{}, {}) overlap",
                a.name,
                a.offset,
                a.offset + a.n_bytes,
                b.name,
                b.offset,
                b.offset + b.n_bytes
            )));
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        meta_index,
        tensors,
        tensor_index,
    })
}

/// Reads the rest of a tensor info after its name. `offset` stays relative here.
fn read_tensor_info(c: &mut Cursor, name: &str, alignment: u64) -> Result<TensorInfo> {
    if name.is_empty() {
        return Err(GgufError::Invalid("empty tensor name".into()));
    }
    let n_dims = c.u32("dimension count")?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(GgufError::Invalid(format!(
            "{n_dims} dimensions; must be between 1 and {MAX_DIMS}"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elements: u64 = 1;
    for d in 0..n_dims {
        let dim = c.u64("dimension")?;
        if dim == 0 {
            return Err(GgufError::Invalid(format!("dimension {d} is 0")));
        }
        // ggml stores shapes as i64, so the element count must fit one.
        n_elements = n_elements
            .checked_mul(dim)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                GgufError::Invalid(format!(
                    "element count overflows: dims so far {dims:?} times {dim} exceeds {}",
                    i64::MAX
                ))
            })?;
        dims.push(dim);
    }
    let type_id = c.u32("tensor type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| {
        GgufError::Invalid(format!(
            "unknown or unsupported ggml tensor type id {type_id}"
        ))
    })?;
    let offset = c.u64("tensor data offset")?;
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::Invalid(format!(
            "data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    // Rows are quantized independently, so each row must be whole blocks.
    let block = ty.block_len() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(GgufError::Invalid(format!(
            "row length (dims[0]) {} is not a multiple of the {ty} block length {block}",
            dims[0]
        )));
    }
    let n_bytes = ty.bytes_for(n_elements).ok_or_else(|| {
        GgufError::Invalid(format!("byte size of {n_elements} {ty} elements overflows"))
    })?;
    Ok(TensorInfo {
        name: name.to_owned(),
        dims,
        ty,
        offset,
        n_bytes,
    })
}

struct MetaParser<'a> {
    c: Cursor<'a>,
    /// Budget left under [`MAX_METADATA_ARRAY_ELEMENTS`].
    elements_left: u64,
}

impl MetaParser<'_> {
    fn read_entry_value(&mut self, key: &str) -> Result<MetaValue> {
        if key.is_empty() {
            return Err(GgufError::Invalid("empty metadata key".into()));
        }
        let ty = self.c.u32("value type")?;
        self.read_value(ty, 0)
    }

    /// A value of type `ty`; `depth` is how many arrays enclose it.
    fn read_value(&mut self, ty: u32, depth: u32) -> Result<MetaValue> {
        let c = &mut self.c;
        Ok(match ty {
            T_U8 => MetaValue::U8(c.u8("u8 value")?),
            T_I8 => MetaValue::I8(i8::from_le_bytes(c.array("i8 value")?)),
            T_U16 => MetaValue::U16(u16::from_le_bytes(c.array("u16 value")?)),
            T_I16 => MetaValue::I16(i16::from_le_bytes(c.array("i16 value")?)),
            T_U32 => MetaValue::U32(u32::from_le_bytes(c.array("u32 value")?)),
            T_I32 => MetaValue::I32(i32::from_le_bytes(c.array("i32 value")?)),
            T_U64 => MetaValue::U64(u64::from_le_bytes(c.array("u64 value")?)),
            T_I64 => MetaValue::I64(i64::from_le_bytes(c.array("i64 value")?)),
            T_F32 => MetaValue::F32(f32::from_le_bytes(c.array("f32 value")?)),
            T_F64 => MetaValue::F64(f64::from_le_bytes(c.array("f64 value")?)),
            T_BOOL => {
                let at = c.offset();
                match c.u8("bool value")? {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(GgufError::Invalid(format!(
                            "bool value at offset {at} is {b}; must be 0 or 1"
                        )));
                    }
                }
            }
            T_STRING => MetaValue::String(c.str("string value")?.to_owned()),
            T_ARRAY => self.read_array(depth)?,
            _ => return Err(unknown_type(ty, c.offset())),
        })
    }

    fn read_array(&mut self, depth: u32) -> Result<MetaValue> {
        let at = self.c.offset();
        let elem_ty = self.c.u32("array element type")?;
        let elem_name = value_type_name(elem_ty).ok_or_else(|| unknown_type(elem_ty, at))?;
        if elem_ty == T_ARRAY && depth + 2 > MAX_ARRAY_NESTING {
            return Err(GgufError::Invalid(format!(
                "array at offset {at} nests arrays deeper than {MAX_ARRAY_NESTING} levels"
            )));
        }
        let count = self.c.u64("array length")?;
        let what = format!("array[{elem_name}] length");
        check_count(&self.c, count, min_value_bytes(elem_ty), &what, u64::MAX)?;
        if count > self.elements_left {
            return Err(GgufError::Invalid(format!(
                "array of {count} elements at offset {at} exceeds the limit of \
                 {MAX_METADATA_ARRAY_ELEMENTS} metadata array elements in total"
            )));
        }
        self.elements_left -= count;
        let mut items = Vec::with_capacity(count.min(PREALLOC_CAP) as usize);
        if elem_ty == T_STRING {
            // Vocabularies and merges are ~150k-string arrays; skip the per-element dispatch.
            for _ in 0..count {
                items.push(MetaValue::String(self.c.str("string value")?.to_owned()));
            }
        } else {
            for _ in 0..count {
                items.push(self.read_value(elem_ty, depth + 1)?);
            }
        }
        Ok(MetaValue::Array(items))
    }
}

fn unknown_type(ty: u32, at: u64) -> GgufError {
    GgufError::Invalid(format!(
        "unknown metadata value type {ty} at offset {at} (valid: 0..=12)"
    ))
}

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
    metadata: Vec<(String, MetaValue)>,
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

        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            write_value(&mut out, v);
        }
        for (t, off) in self.tensors.iter().zip(offsets) {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(align), 0);
        out.extend_from_slice(&data);
        out
    }

    /// Builds and parses.
    pub fn build_file(&self) -> Result<GgufFile> {
        GgufFile::from_bytes(self.build())
    }
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> MetaValue {
        MetaValue::String(v.to_string())
    }

    /// A small valid file with every metadata type and tensors of several formats.
    fn sample() -> GgufBuilder {
        GgufBuilder::new()
            .meta("general.architecture", s("llama"))
            .meta("t.u8", MetaValue::U8(200))
            .meta("t.i8", MetaValue::I8(-5))
            .meta("t.u16", MetaValue::U16(60000))
            .meta("t.i16", MetaValue::I16(-30000))
            .meta("t.u32", MetaValue::U32(4_000_000_000))
            .meta("t.i32", MetaValue::I32(-7))
            .meta("t.u64", MetaValue::U64(u64::MAX))
            .meta("t.i64", MetaValue::I64(i64::MIN))
            .meta("t.f32", MetaValue::F32(1.5))
            .meta("t.f64", MetaValue::F64(-2.25))
            .meta("t.bool", MetaValue::Bool(true))
            .meta("t.string", s("héllo"))
            .meta("t.strings", MetaValue::Array(vec![s("a"), s(""), s("ü")]))
            .meta(
                "t.f32s",
                MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(-1.0)]),
            )
            .meta(
                "t.i32s",
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-2)]),
            )
            .meta(
                "t.bools",
                MetaValue::Array(vec![MetaValue::Bool(false), MetaValue::Bool(true)]),
            )
            .meta("t.empty", MetaValue::Array(vec![]))
            .meta(
                "t.nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::U16(1), MetaValue::U16(2)]),
                    MetaValue::Array(vec![MetaValue::U16(3)]),
                ]),
            )
            .tensor_f32("w.f32", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
            .tensor_zeros("w.q4_0", &[32, 3], GgmlType::Q4_0)
            .tensor(
                "w.q4k",
                &[256],
                GgmlType::Q4K,
                (0..144u32).map(|i| i as u8).collect(),
            )
    }

    /// Header for hand-crafted files.
    fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&tensors.to_le_bytes());
        v.extend_from_slice(&kvs.to_le_bytes());
        v
    }

    fn push_u32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    fn push_u64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    fn push_bytes_str(v: &mut Vec<u8>, b: &[u8]) {
        push_u64(v, b.len() as u64);
        v.extend_from_slice(b);
    }

    fn err(bytes: Vec<u8>) -> GgufError {
        GgufFile::from_bytes(bytes).unwrap_err()
    }

    /// Asserts the file is rejected and the message contains every fragment.
    fn rejects(bytes: Vec<u8>, fragments: &[&str]) -> GgufError {
        let e = err(bytes);
        let msg = e.to_string();
        for f in fragments {
            assert!(msg.contains(f), "error `{msg}` does not mention `{f}`");
        }
        e
    }

    fn is_truncated(e: &GgufError) -> bool {
        matches!(e.innermost(), GgufError::Truncated { .. })
    }

    #[test]
    fn round_trip_every_type() {
        let b = sample();
        let f = b.build_file().unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.file_size(), f.bytes().len() as u64);
        assert_eq!(f.architecture(), Some("llama"));
        // Metadata comes back in file order, value for value.
        let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
        let expected: Vec<&str> = b.metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, expected);
        for (k, v) in &b.metadata {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get_u64("t.u32"), Some(4_000_000_000));
        assert_eq!(f.get_u64("t.u64"), Some(u64::MAX));
        assert_eq!(f.get_u64("t.i8"), None);
        assert_eq!(f.get("t.i64").and_then(MetaValue::as_i64), Some(i64::MIN));
        assert_eq!(f.get_f32("t.f64"), Some(-2.25));
        assert_eq!(f.get_f32("t.u8"), Some(200.0));
        assert_eq!(f.get_bool("t.bool"), Some(true));
        assert_eq!(f.get_str("t.string"), Some("héllo"));
        assert_eq!(f.get_str("t.u8"), None);
        assert_eq!(f.get("missing"), None);
        assert_eq!(f.str_array("t.strings"), Some(vec!["a", "", "ü"]));
        assert_eq!(f.f32_array("t.f32s"), Some(vec![0.5, -1.0]));
        assert_eq!(f.i32_array("t.i32s"), Some(vec![1, -2]));
        assert_eq!(f.get_array("t.empty"), Some(&[][..]));
        assert_eq!(f.get_array("t.nested").map(<[MetaValue]>::len), Some(2));
        assert_eq!(
            f.get("t.strings").map(MetaValue::type_name),
            Some("array[string]")
        );
        assert_eq!(
            f.get("t.nested").map(MetaValue::type_name),
            Some("array[array]")
        );
        assert_eq!(f.get("t.empty").map(MetaValue::type_name), Some("array"));
        assert_eq!(f.get("t.u16").map(MetaValue::type_name), Some("u16"));

        assert_eq!(f.tensors().len(), 3);
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w.f32", "w.q4_0", "w.q4k"]);
        let t = f.tensor("w.f32").unwrap();
        assert_eq!(
            (t.dims.clone(), t.ty, t.n_bytes),
            (vec![4, 2], GgmlType::F32, 32)
        );
        assert_eq!((t.n_elements(), t.row_len(), t.n_rows()), (8, 4, 2));
        assert_eq!(t.offset, f.data_offset());
        let vals: Vec<f32> = f
            .tensor_bytes(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let q = f.tensor("w.q4_0").unwrap();
        assert_eq!((q.ty, q.n_bytes, q.n_rows()), (GgmlType::Q4_0, 3 * 18, 3));
        let k = f.tensor("w.q4k").unwrap();
        assert_eq!(k.n_bytes, 144);
        assert_eq!(
            f.tensor_bytes(k),
            (0..144u32).map(|i| i as u8).collect::<Vec<_>>()
        );
        for t in f.tensors() {
            assert_eq!(t.offset % 32, 0, "{}", t.name);
        }
        assert!(f.tensor("nope").is_none());
    }

    #[test]
    fn version_2_and_custom_alignment() {
        let f = sample()
            .version(2)
            .meta("general.alignment", MetaValue::U32(64))
            .build_file()
            .unwrap();
        assert_eq!((f.version(), f.alignment()), (2, 64));
        assert_eq!(f.data_offset() % 64, 0);
        for t in f.tensors() {
            assert_eq!(t.offset % 64, 0, "{}", t.name);
        }
    }

    #[test]
    fn file_without_tensors() {
        let f = GgufBuilder::new()
            .meta("a", MetaValue::U8(1))
            .build_file()
            .unwrap();
        assert!(f.tensors().is_empty());
        // Header only, no padding: still fine since there is no data to point into.
        let mut bytes = header(3, 0, 0);
        assert!(GgufFile::from_bytes(bytes.clone()).is_ok());
        bytes.push(0);
        assert!(GgufFile::from_bytes(bytes).is_ok());
    }

    #[test]
    fn every_prefix_is_an_error() {
        let full = sample().build();
        assert!(GgufFile::from_bytes(full.clone()).is_ok());
        for len in 0..full.len() {
            match GgufFile::from_bytes(full[..len].to_vec()) {
                Ok(_) => panic!("prefix of {len}/{} bytes parsed", full.len()),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut b = header(3, 0, 0);
        b[..4].copy_from_slice(b"GGML");
        assert!(matches!(
            rejects(b, &["not a GGUF file"]),
            GgufError::BadMagic { .. }
        ));
        assert!(matches!(
            err(header(1, 0, 0)),
            GgufError::UnsupportedVersion(1)
        ));
        rejects(header(4, 0, 0), &["version 4", "2 and 3"]);
        rejects(header(3u32.swap_bytes(), 0, 0), &["big-endian"]);
        assert!(is_truncated(&err(b"GGU".to_vec())));
    }

    #[test]
    fn tensor_count_2_pow_63() {
        let mut b = sample().build();
        b[8..16].copy_from_slice(&(1u64 << 63).to_le_bytes());
        let e = rejects(b, &["tensor count 9223372036854775808"]);
        assert!(is_truncated(&e));
    }

    #[test]
    fn kv_count_2_pow_63() {
        let mut b = sample().build();
        b[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes());
        let e = rejects(b, &["metadata key/value count 9223372036854775808"]);
        assert!(is_truncated(&e));
    }

    #[test]
    fn counts_over_sanity_caps() {
        // Enough bytes to pass the size bound, so the cap is what rejects.
        let mut b = header(3, 0, MAX_METADATA_KV + 1);
        b.resize(b.len() + (MAX_METADATA_KV as usize + 1) * 14, 0);
        rejects(b, &["exceeds the limit of 65536"]);
        let mut b = header(3, MAX_TENSORS + 1, 0);
        b.resize(b.len() + (MAX_TENSORS as usize + 1) * 33, 0);
        rejects(b, &["tensor count", "exceeds the limit"]);
    }

    #[test]
    fn string_length_past_eof() {
        let mut b = header(3, 0, 1);
        push_u64(&mut b, 1000);
        b.extend_from_slice(&[b'k'; 20]);
        let e = rejects(
            b,
            &[
                "metadata entry 0",
                "metadata key",
                "needs 1000 bytes",
                "20 remain",
            ],
        );
        assert!(is_truncated(&e));
    }

    #[test]
    fn string_length_2_pow_63() {
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"k");
        push_u32(&mut b, T_STRING);
        push_u64(&mut b, 1 << 63);
        b.extend_from_slice(&[b'x'; 64]);
        let e = rejects(
            b,
            &["metadata key `k`", "string value", "9223372036854775808"],
        );
        assert!(is_truncated(&e));
    }

    #[test]
    fn array_count_2_pow_63() {
        for elem in [T_U8, T_STRING, T_ARRAY] {
            let mut b = header(3, 0, 1);
            push_bytes_str(&mut b, b"arr");
            push_u32(&mut b, T_ARRAY);
            push_u32(&mut b, elem);
            push_u64(&mut b, 1 << 63);
            b.extend_from_slice(&[0; 256]);
            let e = rejects(b, &["metadata key `arr`", "length 9223372036854775808"]);
            assert!(is_truncated(&e));
        }
    }

    #[test]
    fn array_element_budget() {
        let n = MAX_METADATA_ARRAY_ELEMENTS + 1;
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"big");
        push_u32(&mut b, T_ARRAY);
        push_u32(&mut b, T_U8);
        push_u64(&mut b, n);
        b.resize(b.len() + n as usize, 0);
        rejects(
            b,
            &["metadata key `big`", "metadata array elements in total"],
        );
    }

    #[test]
    fn array_nesting_depth() {
        let two = MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(1)])]);
        assert!(
            GgufBuilder::new()
                .meta("k", two.clone())
                .build_file()
                .is_ok()
        );
        let three = MetaValue::Array(vec![two]);
        rejects(
            GgufBuilder::new().meta("k", three).build(),
            &["`k`", "deeper than 2 levels"],
        );
    }

    #[test]
    fn unknown_value_types() {
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"k");
        push_u32(&mut b, 13);
        b.extend_from_slice(&[0; 16]);
        rejects(b, &["`k`", "unknown metadata value type 13"]);

        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"k");
        push_u32(&mut b, T_ARRAY);
        push_u32(&mut b, 0xdead);
        push_u64(&mut b, 1);
        b.extend_from_slice(&[0; 16]);
        rejects(b, &["`k`", "unknown metadata value type 57005"]);
    }

    #[test]
    fn bool_must_be_0_or_1() {
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"flag");
        push_u32(&mut b, T_BOOL);
        b.push(2);
        rejects(b, &["`flag`", "is 2; must be 0 or 1"]);

        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"flags");
        push_u32(&mut b, T_ARRAY);
        push_u32(&mut b, T_BOOL);
        push_u64(&mut b, 3);
        b.extend_from_slice(&[1, 0, 255]);
        rejects(b, &["`flags`", "is 255"]);
    }

    #[test]
    fn invalid_utf8() {
        let bad: &[u8] = &[b'a', 0xff, 0xfe];
        // Key.
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, bad);
        push_u32(&mut b, T_U8);
        b.push(0);
        rejects(b, &["metadata entry 0", "not valid UTF-8"]);
        // String value.
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"k");
        push_u32(&mut b, T_STRING);
        push_bytes_str(&mut b, bad);
        rejects(b, &["`k`", "string value", "not valid UTF-8"]);
        // String array element.
        let mut b = header(3, 0, 1);
        push_bytes_str(&mut b, b"toks");
        push_u32(&mut b, T_ARRAY);
        push_u32(&mut b, T_STRING);
        push_u64(&mut b, 2);
        push_bytes_str(&mut b, b"ok");
        push_bytes_str(&mut b, bad);
        rejects(b, &["`toks`", "not valid UTF-8"]);
        // Tensor name.
        let mut b = header(3, 1, 0);
        push_bytes_str(&mut b, bad);
        push_u32(&mut b, 1);
        push_u64(&mut b, 8);
        push_u32(&mut b, GgmlType::F32 as u32);
        push_u64(&mut b, 0);
        b.resize(b.len().next_multiple_of(32) + 32, 0);
        rejects(b, &["tensor 0 of 1", "tensor name", "not valid UTF-8"]);
    }

    #[test]
    fn empty_key_and_name() {
        rejects(
            GgufBuilder::new().meta("", MetaValue::U8(0)).build(),
            &["empty metadata key"],
        );
        rejects(
            GgufBuilder::new().tensor_f32("", &[1], &[0.0]).build(),
            &["empty tensor name"],
        );
    }

    #[test]
    fn duplicates() {
        let b = GgufBuilder::new()
            .meta("a", MetaValue::U8(0))
            .meta("a", MetaValue::U8(1));
        rejects(b.build(), &["duplicate metadata key `a`"]);
        let b = GgufBuilder::new()
            .tensor_f32("t", &[1], &[0.0])
            .tensor_f32("t", &[1], &[1.0]);
        rejects(b.build(), &["duplicate tensor name `t`"]);
    }

    #[test]
    fn bad_alignment() {
        for a in [0u32, 3, 48, 0x8000_0001] {
            let b = sample().meta("general.alignment", MetaValue::U32(a));
            rejects(
                b.build(),
                &["general.alignment", &format!("is {a};"), "power of two"],
            );
        }
        let b = sample().meta("general.alignment", MetaValue::U64(32));
        rejects(b.build(), &["general.alignment must be a u32, found a u64"]);
    }

    #[test]
    fn n_dims_out_of_range() {
        rejects(
            GgufBuilder::new()
                .tensor_raw("t", &[], GgmlType::F32 as u32, 0)
                .trailing_bytes(vec![0; 64])
                .build(),
            &["tensor `t`", "0 dimensions"],
        );
        rejects(
            GgufBuilder::new()
                .tensor_zeros("t", &[1, 1, 1, 1, 1], GgmlType::F32)
                .build(),
            &["tensor `t`", "5 dimensions; must be between 1 and 4"],
        );
        // Four is fine.
        assert!(
            GgufBuilder::new()
                .tensor_zeros("t", &[2, 1, 3, 1], GgmlType::F32)
                .build_file()
                .is_ok()
        );
    }

    #[test]
    fn zero_dim() {
        rejects(
            GgufBuilder::new()
                .tensor_zeros("t", &[4, 0], GgmlType::F32)
                .build(),
            &["tensor `t`", "dimension 1 is 0"],
        );
    }

    #[test]
    fn dimension_product_overflow() {
        let t = |dims: &[u64]| {
            GgufBuilder::new()
                .tensor_raw("t", dims, GgmlType::F32 as u32, 0)
                .build()
        };
        rejects(
            t(&[1 << 32, 1 << 32]),
            &["tensor `t`", "element count overflows"],
        );
        // Fits a u64 but not ggml's i64.
        rejects(t(&[1 << 62, 2]), &["element count overflows"]);
        // Element count fine, byte size not.
        rejects(
            t(&[1 << 62]),
            &["byte size of 4611686018427387904 F32 elements overflows"],
        );
    }

    #[test]
    fn row_length_must_be_whole_blocks() {
        // 16 x 4 = 64 elements is two Q4_0 blocks in total, but rows of 16 are not whole blocks.
        rejects(
            GgufBuilder::new()
                .tensor_zeros("t", &[16, 4], GgmlType::Q4_0)
                .build(),
            &[
                "tensor `t`",
                "row length (dims[0]) 16",
                "Q4_0 block length 32",
            ],
        );
        rejects(
            GgufBuilder::new()
                .tensor_zeros("t", &[300], GgmlType::Q6K)
                .build(),
            &["block length 256"],
        );
    }

    #[test]
    fn unknown_tensor_type() {
        for id in [4u32, 10, 1000] {
            let b = GgufBuilder::new()
                .tensor_raw("blk.0.w", &[32], id, 0)
                .trailing_bytes(vec![0; 256]);
            rejects(
                b.build(),
                &["tensor `blk.0.w`", &format!("ggml tensor type id {id}")],
            );
        }
    }

    #[test]
    fn misaligned_offset() {
        let b = GgufBuilder::new()
            .tensor_raw("t", &[1], GgmlType::F32 as u32, 4)
            .trailing_bytes(vec![0; 64]);
        rejects(
            b.build(),
            &[
                "tensor `t`",
                "data offset 4 is not a multiple of the alignment 32",
            ],
        );
    }

    #[test]
    fn tensor_past_eof() {
        let b = GgufBuilder::new()
            .tensor_raw("t", &[8], GgmlType::F32 as u32, 0)
            .trailing_bytes(vec![0; 16]);
        rejects(b.build(), &["tensor `t`", "extends past the end"]);
        let b = GgufBuilder::new()
            .tensor_raw("t", &[8], GgmlType::F32 as u32, 1 << 40)
            .trailing_bytes(vec![0; 64]);
        rejects(b.build(), &["tensor `t`", "extends past the end"]);
        // Offset itself near u64::MAX (aligned), so the absolute offset overflows.
        let b = GgufBuilder::new().tensor_raw("t", &[8], GgmlType::F32 as u32, u64::MAX - 31);
        rejects(b.build(), &["tensor `t`", "overflows"]);
        // The last tensor's data cut short by one byte.
        let mut bytes = sample().build();
        bytes.pop();
        rejects(bytes, &["tensor `w.q4k`", "extends past the end"]);
    }

    #[test]
    fn overlapping_tensors() {
        let f32 = GgmlType::F32 as u32;
        // a: [0, 64), b: [32, 96).
        let b = GgufBuilder::new()
            .tensor_raw("a", &[16], f32, 0)
            .tensor_raw("b", &[16], f32, 32)
            .trailing_bytes(vec![0; 128]);
        rejects(b.build(), &["tensors `a`", "`b`", "overlap"]);
        // Same offset, listed in reverse order of position.
        let b = GgufBuilder::new()
            .tensor_raw("x", &[8], f32, 64)
            .tensor_raw("y", &[8], f32, 0)
            .tensor_raw("z", &[8], f32, 64)
            .trailing_bytes(vec![0; 128]);
        rejects(b.build(), &["overlap"]);
        // Adjacent is fine, and raw tensors may share the data in any order.
        let b = GgufBuilder::new()
            .tensor_raw("a", &[16], f32, 64)
            .tensor_raw("b", &[16], f32, 0)
            .trailing_bytes(vec![0; 128]);
        assert!(b.build_file().is_ok());
    }

    #[test]
    fn accessor_conversions() {
        assert_eq!(MetaValue::I32(-1).as_u64(), None);
        assert_eq!(MetaValue::I64(5).as_u64(), Some(5));
        assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(MetaValue::U16(7).as_i64(), Some(7));
        assert_eq!(MetaValue::I32(-3).as_f32(), Some(-3.0));
        assert_eq!(MetaValue::Bool(true).as_u64(), None);
        assert_eq!(MetaValue::F32(1.0).as_u64(), None);
        assert_eq!(s("x").as_f32(), None);
        assert_eq!(MetaValue::U8(1).as_bool(), None);
        let f = GgufBuilder::new()
            .meta("mixed", MetaValue::Array(vec![s("a"), MetaValue::U8(1)]))
            .meta(
                "wide",
                MetaValue::Array(vec![MetaValue::I64(1), MetaValue::I64(1 << 40)]),
            )
            .meta(
                "ints",
                MetaValue::Array(vec![MetaValue::U32(3), MetaValue::I8(-1)]),
            )
            .build();
        // Heterogeneous arrays are not valid GGUF: the builder writes them, the parser sees
        // the first element's type for all and reads garbage or fails; check it does not panic.
        let _ = GgufFile::from_bytes(f);
        let f = GgufBuilder::new()
            .meta(
                "wide",
                MetaValue::Array(vec![MetaValue::I64(1), MetaValue::I64(1 << 40)]),
            )
            .meta(
                "u32s",
                MetaValue::Array(vec![MetaValue::U32(3), MetaValue::U32(4)]),
            )
            .meta("strs", MetaValue::Array(vec![s("a")]))
            .build_file()
            .unwrap();
        assert_eq!(f.i32_array("wide"), None);
        assert_eq!(f.i32_array("u32s"), Some(vec![3, 4]));
        assert_eq!(f.f32_array("u32s"), Some(vec![3.0, 4.0]));
        assert_eq!(f.str_array("u32s"), None);
        assert_eq!(f.f32_array("strs"), None);
        assert_eq!(f.str_array("missing"), None);
    }

    #[test]
    #[should_panic(expected = "outside this")]
    fn tensor_bytes_rejects_foreign_info() {
        let f = sample().build_file().unwrap();
        let mut t = f.tensors()[0].clone();
        t.offset = f.file_size();
        let _ = f.tensor_bytes(&t);
    }

    #[test]
    fn open_reports_path_and_empty_file() {
        let e = GgufFile::open(Path::new("/nonexistent/x.gguf")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.gguf"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert!(is_truncated(&GgufFile::open(&empty).unwrap_err()));
        let good = dir.path().join("good.gguf");
        std::fs::write(&good, sample().build()).unwrap();
        let f = GgufFile::open(&good).unwrap();
        assert_eq!(f.tensors().len(), 3);
        assert_eq!(f.bytes(), &sample().build()[..]);
    }

    /// Mutates a valid file thousands of times; every outcome must be Ok or Err, and every Ok
    /// must satisfy the invariants the rest of the engine relies on.
    #[test]
    fn fuzz_mutations_never_panic() {
        let base = sample().build();
        let header_len = GgufFile::from_bytes(base.clone()).unwrap().data_offset() as usize;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..4000 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                // Mostly hit the header: mutations of tensor data are uninteresting.
                let limit = if next() % 8 == 0 { b.len() } else { header_len };
                let pos = (next() % limit as u64) as usize;
                match next() % 4 {
                    0 | 1 => b[pos] = next() as u8,
                    2 => b[pos] ^= 1 << (next() % 8),
                    _ => {
                        // Plant an extreme u64 (counts, lengths, dims, offsets are u64s).
                        let v = [0, 1, u64::MAX, 1 << 63, 1 << 32, next()][(next() % 6) as usize];
                        let end = (pos + 8).min(b.len());
                        b[pos..end].copy_from_slice(&v.to_le_bytes()[..end - pos]);
                    }
                }
            }
            if next() % 16 == 0 {
                b.truncate((next() % b.len() as u64) as usize);
            }
            match GgufFile::from_bytes(b) {
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    bad += 1;
                }
                Ok(f) => {
                    ok += 1;
                    assert!(f.alignment().is_power_of_two());
                    let mut spans = Vec::new();
                    for t in f.tensors() {
                        assert_eq!(f.tensor_bytes(t).len() as u64, t.n_bytes);
                        assert_eq!(t.offset % f.alignment(), 0);
                        assert!((1..=4).contains(&t.dims.len()));
                        spans.push((t.offset, t.offset + t.n_bytes));
                    }
                    spans.sort_unstable();
                    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
                }
            }
        }
        eprintln!("fuzz: {ok} parsed, {bad} rejected");
        assert!(bad > 0);
    }

    fn model(name: &str) -> Option<GgufFile> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        if !path.exists() {
            eprintln!("skipping: {} not present", path.display());
            return None;
        }
        let t0 = std::time::Instant::now();
        let f = GgufFile::open(&path).unwrap();
        eprintln!("opened {name} in {:?}", t0.elapsed());
        // Structural facts that hold for any well-formed file.
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        let last_end = f.tensors().iter().map(|t| t.offset + t.n_bytes).max();
        assert_eq!(last_end, Some(f.file_size()));
        Some(f)
    }

    fn check_layers(f: &GgufFile, arch: &str, layers: u64, embd: u64) {
        assert_eq!(f.architecture(), Some(arch));
        assert_eq!(f.get_u64(&format!("{arch}.block_count")), Some(layers));
        assert_eq!(f.get_u64(&format!("{arch}.embedding_length")), Some(embd));
        for i in 0..layers {
            let norm = f.tensor(&format!("blk.{i}.attn_norm.weight")).unwrap();
            assert_eq!(
                (norm.dims.as_slice(), norm.ty),
                (&[embd][..], GgmlType::F32)
            );
        }
    }

    #[test]
    fn real_smollm2() {
        let Some(f) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
            return;
        };
        check_layers(&f, "llama", 30, 576);
        assert_eq!((f.metadata().len(), f.tensors().len()), (33, 272));
        assert_eq!(f.data_offset(), 1_785_664);
        let e = f.tensor("token_embd.weight").unwrap();
        assert_eq!(
            (e.dims.as_slice(), e.ty, e.offset),
            (&[576, 49152][..], GgmlType::Q8_0, 1_785_664)
        );
        let d = f.tensor("blk.0.ffn_down.weight").unwrap();
        assert_eq!(
            (d.dims.as_slice(), d.ty),
            (&[1536, 576][..], GgmlType::Q4_1)
        );
        assert_eq!(
            f.str_array("tokenizer.ggml.tokens").map(|t| t.len()),
            Some(49152)
        );
        assert_eq!(
            f.i32_array("tokenizer.ggml.token_type").map(|t| t.len()),
            Some(49152)
        );
        assert_eq!(
            f.str_array("tokenizer.ggml.merges").map(|t| t.len()),
            Some(48900)
        );
        assert_eq!(f.get_u64("tokenizer.ggml.bos_token_id"), Some(1));
        assert_eq!(f.get_u64("tokenizer.ggml.eos_token_id"), Some(2));
        assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
        assert_eq!(f.get_bool("tokenizer.ggml.add_bos_token"), Some(false));
    }

    #[test]
    fn real_qwen25_coder_05b() {
        let Some(f) = model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
            return;
        };
        check_layers(&f, "qwen2", 24, 896);
        assert_eq!((f.metadata().len(), f.tensors().len()), (26, 291));
        let e = f.tensor("token_embd.weight").unwrap();
        assert_eq!(
            (e.dims.as_slice(), e.ty),
            (&[896, 151936][..], GgmlType::Q5_0)
        );
        assert_eq!(
            f.tensor("output.weight").map(|t| t.ty),
            Some(GgmlType::Q8_0)
        );
        assert_eq!(
            f.str_array("tokenizer.ggml.tokens").map(|t| t.len()),
            Some(151936)
        );
        assert_eq!(
            f.str_array("tokenizer.ggml.merges").map(|t| t.len()),
            Some(151387)
        );
        assert_eq!(f.get_u64("tokenizer.ggml.eos_token_id"), Some(151645));
    }

    #[test]
    fn real_qwen25_coder_15b() {
        let Some(f) = model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf") else {
            return;
        };
        check_layers(&f, "qwen2", 28, 1536);
        assert_eq!((f.metadata().len(), f.tensors().len()), (26, 339));
        let e = f.tensor("token_embd.weight").unwrap();
        assert_eq!(
            (e.dims.as_slice(), e.ty),
            (&[1536, 151936][..], GgmlType::Q4K)
        );
        let o = f.tensor("output.weight").unwrap();
        assert_eq!(
            (o.dims.as_slice(), o.ty, o.n_bytes),
            (&[1536, 151936][..], GgmlType::Q6K, 191_439_360)
        );
        assert_eq!(f.get_u64("qwen2.attention.head_count"), Some(12));
        assert_eq!(f.get_u64("qwen2.attention.head_count_kv"), Some(2));
    }
}
