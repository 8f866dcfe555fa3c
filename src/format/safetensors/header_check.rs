//! Names the tensor at fault when the `safetensors` crate refuses a header.
//!
//! The crate validates headers (and is what decides), but some of its errors ("tensor
//! invalid info", "overflow computing buffer size") do not say which tensor is wrong. This
//! re-reads the header only on that error path to name it, so a broken checkpoint can be
//! diagnosed from the message alone.

use safetensors::Dtype;
use serde::Deserialize;

/// One header entry, as the format defines it.
#[derive(Deserialize)]
struct Info {
    dtype: Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The first problem found in the header of the safetensors file `bytes`, naming its
/// tensor; `None` when nothing more specific than the crate's error can be said.
pub fn explain(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let data_len = (bytes.len() - 8 - n) as u64;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut spans = Vec::with_capacity(map.len());
    for (name, v) in &map {
        if name == "__metadata__" {
            continue;
        }
        let info = match Info::deserialize(v) {
            Ok(i) => i,
            Err(e) => return Some(format!("tensor {name}: {e}")),
        };
        let (start, end) = info.data_offsets;
        if end < start {
            return Some(format!(
                "tensor {name}: data_offsets [{start}, {end}) end before they start"
            ));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize() as u64));
        let Some(bits) = bits else {
            return Some(format!(
                "tensor {name}: shape {:?} of {:?} overflows",
                info.shape, info.dtype
            ));
        };
        if bits % 8 != 0 || bits / 8 != end - start {
            return Some(format!(
                "tensor {name}: {:?} shape {:?} needs {} bits but data_offsets [{start}, {end}) span {} bytes",
                info.dtype,
                info.shape,
                bits,
                end - start
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor {name}: data_offsets [{start}, {end}) extend past the {data_len} data bytes"
            ));
        }
        spans.push((start, end, name));
    }
    spans.sort_unstable();
    let mut covered = 0u64;
    let mut prev: Option<&String> = None;
    for (start, end, name) in spans {
        if start < covered {
            let other = prev.map(|p| format!(" and {p}")).unwrap_or_default();
            return Some(format!("tensors {name}{other} overlap at byte {start}"));
        }
        if start > covered {
            return Some(format!(
                "tensor {name} starts at byte {start}, leaving a hole after byte {covered}"
            ));
        }
        covered = end;
        prev = Some(name);
    }
    (covered != data_len)
        .then(|| format!("{} data bytes follow the last tensor", data_len - covered))
}
