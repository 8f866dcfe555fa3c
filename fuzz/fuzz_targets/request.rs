//! Fuzz target `request`: see `tachyon::fuzzing::request` for what it covers and its input layout.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Refusals are expected; only a panic (a broken guarantee) or a sanitizer report is a bug.
    let _ = tachyon::fuzzing::request::run(data);
});
