//! `tokenizer.json`: loading, then encoding and decoding a fixed text with whatever loaded.
#![no_main]

use std::path::Path;

use coil_checkpoints::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tokenizer) = Tokenizer::from_bytes(data, Path::new("tokenizer.json")) {
        if let Ok(ids) = tokenizer.encode("Hello, world! 123 Ünïcode ✓") {
            let _ = tokenizer.decode(&ids);
        }
        let _ = tokenizer.decode(&[0, 1, 2, 3, 50000, u32::MAX]);
    }
});
