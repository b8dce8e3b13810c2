//! A whole `pytorch_model.bin`: ZIP directory, local headers, pickle and storages.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::exercise("pytorch_model.bin", data));
