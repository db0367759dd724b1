//! The standalone routes file: any text loads as a snapshot or gives an error naming the
//! file, never a panic. (The loader reads a path, so each input is written to one file per
//! fuzzing process first.)
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("mv-fuzz-routes-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    if let Err(e) = multiverse_proxy::standalone::load(path) {
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
});
