//! Properties of streamserver's input parsers and of its chunked body decoder, shared by the
//! libFuzzer targets in `fuzz_targets/` and the stable-toolchain property test
//! `tests/parsers_proptest.rs`.
//!
//! Each `check_*` function feeds one input to a parser and panics when a property fails, so a
//! fuzzer reports the input as a crash and a property test shrinks it. The functions own the
//! properties and the decoding of raw fuzz input. Generating inputs is left to the callers.

pub mod chunked;
pub mod multipart;
pub mod range;
pub mod request_head;

pub use chunked::{check_chunked_body, check_chunked_input};
pub use multipart::{check_multipart, check_multipart_input, MultipartCase};
pub use range::{check_range, check_range_input};
pub use request_head::check_request_head;
