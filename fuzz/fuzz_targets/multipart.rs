//! Fuzzes `MultipartReader` with input of the form `READ,SIZES;CHUNK_LEN;BOUNDARY\nBODY`; the
//! properties are in `streamserver_fuzz::multipart`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamserver_fuzz::check_multipart_input(data);
});
