//! The GGUF reader against valid and hostile files (built with [`GgufBuilder`]), and the
//! builder's layout.

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
