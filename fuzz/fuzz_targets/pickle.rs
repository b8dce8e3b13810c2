//! The restricted unpickler, fed through a fixed well-formed ZIP. The body is in `common.rs`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::pickle(data);
});
