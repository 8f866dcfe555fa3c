//! Memory bound on hostile model files: opening one allocates at most a small constant plus
//! a small multiple of the bytes the file really has, whatever counts and lengths it claims
//! (2^32 and 2^63 tensors, key/value pairs, string and array lengths, safetensors headers).
//! Allocations are counted in-process by a counting global allocator, which is why this
//! test has a binary of its own and runs its cases one after another in a single test.

mod fuzz_seeds;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tachyon::format::load_weights;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most bytes live at once while `f` ran, beyond what was live before.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

const CONSTANT: usize = 1 << 20;

/// Loads `path` (a GGUF file or an HF directory) and checks the bound: `CONSTANT` plus
/// `per_byte` times the file's real size. Returns the peak.
fn check(label: &str, path: &Path, real_bytes: usize, per_byte: usize) -> usize {
    let (result, peak) = peak_of(|| load_weights(path).map(|_| ()));
    let limit = CONSTANT + per_byte * real_bytes;
    eprintln!(
        "{label}: {real_bytes} bytes on disk, peak {peak} bytes allocated ({:?})",
        result.as_ref().err().map(|e| e.to_string())
    );
    assert!(
        peak <= limit,
        "{label}: {peak} bytes allocated for a {real_bytes}-byte file (limit {limit})"
    );
    peak
}

/// One key whose value is an array of `elem` claiming `count` elements.
fn array_claim(elem: u32, count: u64, real: usize) -> Vec<u8> {
    let mut v = gguf_header(0, 1);
    v.extend_from_slice(&1u64.to_le_bytes());
    v.push(b'a');
    v.extend_from_slice(&9u32.to_le_bytes());
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend(std::iter::repeat_n(0u8, real));
    v
}

fn gguf_header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v
}

#[test]
fn hostile_files_allocate_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Claimed counts with a little real data behind them.
    for n in [1u64 << 32, 1 << 63] {
        let pad = vec![0u8; 4096];
        cases.push((
            format!("n_kv {n}"),
            [gguf_header(0, n), pad.clone()].concat(),
        ));
        cases.push((
            format!("n_tensors {n}"),
            [gguf_header(n, 0), pad.clone()].concat(),
        ));
        for (elem, name) in [(0u32, "u8"), (10, "u64"), (8, "string"), (9, "array")] {
            cases.push((format!("array[{name}] of {n}"), array_claim(elem, n, 4096)));
        }
        let mut v = gguf_header(0, 1);
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&pad);
        cases.push((format!("key length {n}"), v));
        let mut v = gguf_header(0, 1);
        v.extend_from_slice(&1u64.to_le_bytes());
        v.push(b'k');
        v.extend_from_slice(&8u32.to_le_bytes());
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&pad);
        cases.push((format!("string length {n}"), v));
        let mut v = gguf_header(1, 0);
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&pad);
        cases.push((format!("tensor name length {n}"), v));
    }
    // Every CVE-shaped GGUF seed as well.
    for (t, name, bytes) in fuzz_seeds::all() {
        if t == "gguf" {
            cases.push((format!("seed {name}"), bytes));
        }
    }
    for (label, bytes) in &cases {
        std::fs::write(&file, bytes).unwrap();
        check(label, &file, bytes.len(), 8);
    }

    // Safetensors headers claiming huge sizes, in an HF directory with a valid config.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let config = r#"{"model_type":"llama","hidden_size":8,"num_attention_heads":2,"num_hidden_layers":1,"intermediate_size":16,"vocab_size":16}"#;
    std::fs::write(hf.join("config.json"), config).unwrap();
    let st = hf.join("model.safetensors");
    let shapes = [
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
        r#"{"w":{"dtype":"F32","shape":[9223372036854775807],"data_offsets":[0,36893488147419103228]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,9223372036854775808]}}"#,
    ];
    for n in [1u64 << 32, 1 << 63, u64::MAX] {
        let bytes = [n.to_le_bytes().to_vec(), b"{}".to_vec(), vec![0; 4096]].concat();
        std::fs::write(&st, &bytes).unwrap();
        check(
            &format!("safetensors header length {n}"),
            &hf,
            bytes.len(),
            8,
        );
    }
    for h in shapes {
        let bytes = [
            (h.len() as u64).to_le_bytes().to_vec(),
            h.as_bytes().to_vec(),
            vec![0; 16],
        ]
        .concat();
        std::fs::write(&st, &bytes).unwrap();
        check(&format!("safetensors header {h}"), &hf, bytes.len(), 8);
    }

    // A file that really holds many tiny metadata values: the multiple of the file size is
    // what each parsed value costs (a 32-byte value per 1-byte u8 element, up to twice that
    // while the list grows), capped in total by the reader's element limit (2^23).
    let many = array_claim(0, 100_000, 100_000);
    std::fs::write(&file, &many).unwrap();
    let peak = check("100000 real u8 array elements", &file, many.len(), 64);
    eprintln!(
        "  = {:.1} bytes allocated per byte of file",
        peak as f64 / many.len() as f64
    );

    // The real models, when present: far below the size of the file.
    for name in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            let (r, peak) = peak_of(|| load_weights(&path).map(|_| ()));
            r.unwrap();
            eprintln!(
                "{name}: {} bytes on disk, peak {peak} bytes allocated",
                meta.len()
            );
            assert!(
                peak < CONSTANT + meta.len() as usize / 4,
                "{name}: {peak} bytes allocated"
            );
        }
    }
}
