//! Property tests (proptest, in CI) for the control plane's parsers of untrusted input:
//! arbitrary input never panics, valid input comes back as it went in. The entry points: a
//! backend registration's JSON, the config file, and the log slice query (`start`/`end`).

use multiverse_control::backends::BackendSpec;
use multiverse_control::config::ControlConfig;
use multiverse_control::instances::logs::py_slice;
use proptest::prelude::*;

/// Python's `seq[start:end]` computed the obvious way, in i128 so nothing overflows.
fn python_slice(len: usize, start: Option<i64>, end: Option<i64>) -> (usize, usize) {
    let n = len as i128;
    let resolve = |i: i64| {
        let i = i128::from(i);
        let i = if i < 0 { i + n } else { i };
        i.clamp(0, n) as usize
    };
    let s = start.map_or(0, resolve);
    let e = end.map_or(len, resolve);
    (s, e.max(s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `?start=&end=` slices exactly as Python's `seq[start:end]`, for any integers.
    #[test]
    fn log_slices_are_pythons(
        len in 0usize..5000,
        start in prop::option::of(any::<i64>()),
        end in prop::option::of(any::<i64>()),
    ) {
        let r = py_slice(len, start, end);
        prop_assert!(r.start <= r.end && r.end <= len, "{:?} of {}", r, len);
        prop_assert_eq!((r.start, r.end), python_slice(len, start, end));
    }

    /// Any text as a registration body: parsed and validated, or an error, never a panic.
    #[test]
    fn any_registration_text_is_checked_or_refused(text in "(?s).{0,200}") {
        if let Ok(spec) = serde_json::from_str::<BackendSpec>(&text) {
            let _ = spec.validate();
        }
    }

    /// Registration bodies with the right shape and any strings and numbers in them.
    #[test]
    fn registrations_with_any_values_are_checked_or_refused(
        name in ".{0,40}",
        url in ".{0,60}",
        models in prop::collection::vec(".{0,20}", 0..3),
        weight in any::<i64>(),
    ) {
        let body = serde_json::json!({"name": name, "url": url, "models": models, "weight": weight});
        if let Ok(spec) = serde_json::from_value::<BackendSpec>(body) {
            let _ = spec.validate();
        }
    }

    /// A valid registration serialises and parses back to itself.
    #[test]
    fn valid_registrations_round_trip(
        name in "[a-z][a-z0-9-]{0,20}",
        port in 1u16..,
        model in "[a-z][a-z0-9.-]{0,20}",
    ) {
        let body = serde_json::json!({
            "name": name, "url": format!("http://10.0.0.1:{port}"), "models": [model],
        });
        let spec: BackendSpec = serde_json::from_value(body).expect("the shape is right");
        prop_assert!(spec.validate().is_ok(), "{:?}", spec.validate());
        let text = serde_json::to_string(&spec).expect("serialise");
        let back: BackendSpec = serde_json::from_str(&text).expect("parse back");
        prop_assert_eq!(back, spec);
    }

    /// Any text as `control.toml`: parsed and validated, or an error, never a panic.
    #[test]
    fn any_config_text_parses_and_validates_or_errs(text in "(?s).{0,200}") {
        if let Ok(cfg) = toml::from_str::<ControlConfig>(&text) {
            let _ = cfg.validate(None);
        }
    }
}
