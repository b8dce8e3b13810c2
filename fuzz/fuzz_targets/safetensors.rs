//! A safetensors file: header, offsets, dtypes, shapes and values through `TensorStore`. The body is in `common.rs`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::weights("model.safetensors", data);
});
