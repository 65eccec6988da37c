//! Any bytes as the body of `POST /v1/notifications`: the parser must answer every input
//! with a validated notification or a client error (400/413/422 with a JSON body), never a
//! panic; what it accepts must survive the wire encoding exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    herald::fuzzing::check_request(body);
});
