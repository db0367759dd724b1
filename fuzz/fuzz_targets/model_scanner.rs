//! The streaming `model` scanner (request bodies, read for routing): any bytes, cut into
//! chunks where the input's first byte says, give an answer or an error, never a panic; and
//! the answer does not depend on where the body was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_proxy::request::model_scan::{ModelScanner, Scan, MAX_MODEL_LEN};

fn scan(body: &[u8], chunk: usize) -> Option<Result<Option<String>, String>> {
    let mut scanner = ModelScanner::new();
    for part in body.chunks(chunk.max(1)) {
        match scanner.feed(part) {
            Ok(Scan::Found(model)) => return Some(Ok(Some(model))),
            Ok(_) => {}
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = scan(body, body.len());
    let cut = scan(body, usize::from(cut));
    if let Some(Ok(Some(model))) = &whole {
        assert!(model.len() <= MAX_MODEL_LEN);
        assert_eq!(whole, cut, "a found model does not depend on the chunking");
    }
});
