//! The config loader on arbitrary text: every outcome is a Config or a list of errors, never a
//! panic (YAML, unknown-key reporting, line mapping and validation all run). Relative paths
//! resolve under a directory that does not exist, so no real file is read by accident.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = cvgate::config::Config::parse(text, "fuzz.yaml", std::path::Path::new("/nonexistent/fuzz")) {
            assert!(!e.errors.is_empty(), "a refused config must say why");
            let _ = e.to_string();
        }
    }
});
