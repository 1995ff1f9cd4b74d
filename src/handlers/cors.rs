//! CORS for pages on other origins that play or upload videos.
//!
//! Only origins listed in `cors_allow_origins` (or any, with `"*"`) get CORS headers. Media
//! answers expose the headers a player needs to seek (`Content-Range`, `Content-Length`,
//! `Accept-Ranges`, `ETag`), and preflights allow `Range` and the conditional headers.

use crate::config::Config;
use crate::server::request::Request;
use crate::server::response::Response;

const EXPOSED: &str = "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified, Location";
const ALLOWED_REQUEST_HEADERS: &str =
    "Range, If-Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, Authorization, Content-Type";

/// The value for `Access-Control-Allow-Origin`, when the request's origin is allowed.
fn allowed_origin(config: &Config, request: &Request) -> Option<String> {
    let origin = request.header("origin")?;
    if config.cors_allow_origins.iter().any(|o| o == "*") {
        return Some("*".to_string());
    }
    config.cors_allow_origins.iter().find(|o| o.as_str() == origin).cloned()
}

/// Adds CORS headers to an answer for an allowed origin.
pub fn add_headers(config: &Config, request: &Request, response: &mut Response) {
    if config.cors_allow_origins.is_empty() {
        return;
    }
    response.header("Vary", "Origin");
    if let Some(origin) = allowed_origin(config, request) {
        response.header("Access-Control-Allow-Origin", origin);
        response.header("Access-Control-Expose-Headers", EXPOSED);
    }
}

/// Answers an `OPTIONS` request: 204 with `Allow`, and the preflight headers for an allowed
/// origin.
pub fn preflight(config: &Config, request: &Request, methods: &'static str) -> Response {
    let mut response = Response::new(204);
    response.header("Allow", methods);
    if allowed_origin(config, request).is_some() {
        response.header("Access-Control-Allow-Methods", methods);
        response.header("Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS);
        response.header("Access-Control-Max-Age", "86400");
    }
    response
}
