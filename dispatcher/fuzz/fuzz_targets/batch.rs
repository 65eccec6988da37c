//! Any bytes as the body of `POST /v1/notifications/batch`: split into items, each parsed
//! on its own; never a panic, every error a client error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    herald::fuzzing::check_batch(body);
});
