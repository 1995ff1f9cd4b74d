//! Fuzzes `evaluate_range` and `plan_byteranges` with input of the form
//! `SIZE\nMAX_RANGES\nHEADER`; the properties are in `streamserver_fuzz::range`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streamserver_fuzz::check_range_input(data);
});
