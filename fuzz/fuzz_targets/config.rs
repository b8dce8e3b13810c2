//! `config.json` in either dialect. The body is in `common.rs`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::config(data));
