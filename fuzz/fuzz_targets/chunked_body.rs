//! Fuzzes the chunked body decoder in `BodyReader` with input of the form `READ_LEN\nBODY`,
//! over a loopback socket; the properties are in `streamserver_fuzz::chunked`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamserver_fuzz::check_chunked_input(data);
});
