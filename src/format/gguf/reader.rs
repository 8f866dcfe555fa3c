//! Parsing a GGUF header: a bounds-checked cursor over the bytes, the metadata values and
//! tensor infos, each count and length checked against what is left before anything is
//! allocated.

use std::collections::HashMap;

use super::*;

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

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_offset: u64,
    pub(super) metadata: Vec<(String, MetaValue)>,
    pub(super) meta_index: HashMap<String, usize>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) tensor_index: HashMap<String, usize>,
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

pub(super) fn parse_header(buf: &[u8]) -> Result<Header> {
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
