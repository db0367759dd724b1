//! `control.toml`: any text parses and validates, or errs, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_control::config::ControlConfig;

fuzz_target!(|text: &str| {
    if let Ok(cfg) = toml::from_str::<ControlConfig>(text) {
        let _ = cfg.validate(None);
    }
});
