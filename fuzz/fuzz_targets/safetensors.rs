//! A safetensors file: header, offsets, dtypes, shapes and values through `TensorStore`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::exercise("model.safetensors", data));
