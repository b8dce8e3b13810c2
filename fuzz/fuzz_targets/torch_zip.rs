//! A whole `pytorch_model.bin`: ZIP directory, local headers, pickle and storages. The body is in `common.rs`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::weights("pytorch_model.bin", data);
});
