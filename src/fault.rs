//! Panics on request, so the tests can check what the server does when a handler panics: the
//! client gets a 500, its token comes back, an upload leaves no file, and the worker goes on.
//!
//! Built only with the `fault-injection` cargo feature, which `scripts/test.sh` turns on for
//! `tests/handler_panic.rs` in a target folder of its own. Without the feature, [`inject`] is
//! empty and no request can reach a panic through it.

use crate::server::request::Request;

/// The places a test can ask for a panic, named by the value of its `X-Fault` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `X-Fault: panic`: when the handler starts, before routing.
    HandlerStart,
    /// `X-Fault: panic-mid-upload`: after an upload wrote its first block to the temporary file.
    MidUpload,
}

/// Panics when the request's `X-Fault` header names `point`.
#[cfg(feature = "fault-injection")]
pub fn inject(request: &Request, point: Point) {
    let requested = match request.header("x-fault") {
        Some("panic") => Point::HandlerStart,
        Some("panic-mid-upload") => Point::MidUpload,
        _ => return,
    };
    if requested == point {
        panic!("fault injected at {point:?} by the X-Fault header");
    }
}

/// Does nothing: this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn inject(_request: &Request, _point: Point) {}
