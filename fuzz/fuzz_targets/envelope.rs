//! Arbitrary bytes through ingest's envelope parser (depth scan included):
//! an envelope or an error, never a panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookstream_shared::envelope::parse(data);
});
