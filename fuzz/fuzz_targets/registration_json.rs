//! A backend registration's JSON (`POST /backends`): any text is parsed and validated, or
//! refused, never a panic; a valid one serialises and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_control::backends::BackendSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<BackendSpec>(data) else {
        return;
    };
    if spec.validate().is_ok() {
        let text = serde_json::to_string(&spec).expect("a valid registration serialises");
        let back: BackendSpec = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(back, spec);
    }
});
