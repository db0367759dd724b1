//! The logs slice query (`?start=&end=`, Python's `seq[start:end]`): any length and any
//! integers give a range inside the log, never a panic or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multiverse_control::instances::logs::py_slice;

fuzz_target!(|input: (u32, Option<i64>, Option<i64>)| {
    let (len, start, end) = input;
    let len = len as usize;
    let r = py_slice(len, start, end);
    assert!(r.start <= r.end && r.end <= len, "{r:?} of {len}");
});
