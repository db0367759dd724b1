//! `proxy.toml`: any text parses and validates, or errs, never a panic; a config that parses
//! and validates serialises and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_proxy::config::ProxyConfig;

fuzz_target!(|text: &str| {
    let Ok(cfg) = toml::from_str::<ProxyConfig>(text) else {
        return;
    };
    if cfg.validate(None).is_ok() {
        let again = toml::to_string(&cfg).expect("a valid config serialises");
        let back: ProxyConfig = toml::from_str(&again).expect("and parses back");
        assert_eq!(back, cfg);
    }
});
