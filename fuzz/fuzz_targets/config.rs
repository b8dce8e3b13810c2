//! `config.json` in either dialect: any text must parse to a validated config or an error.
#![no_main]

use std::path::Path;

use coil_checkpoints::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_json(text, Path::new("config.json")) {
            // Derived sizes must not overflow for a config that validated.
            let _ = (config.in_proj_rows(), config.conv_dim(), config.state_elements());
        }
    }
});
