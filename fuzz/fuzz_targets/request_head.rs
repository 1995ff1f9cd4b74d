//! Fuzzes `parse_head` with raw bytes as a connection would buffer them; the properties are in
//! `streamserver_fuzz::request_head`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamserver_fuzz::check_request_head(data);
});
