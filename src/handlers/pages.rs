//! The test page and the health report.

use serde::Serialize;

use super::App;
use crate::server::response::{Body, Response};

/// The upload and playback page, built into the binary so it needs no file at run time.
const TEST_PAGE: &[u8] = include_bytes!("../../upload.html");

/// `GET /testpage`: the upload test page. It is HTML, the one answer besides media that is
/// not JSON, because a browser shows it.
pub fn test_page() -> Response {
    let mut response = Response::new(200);
    response.header("Content-Type", "text/html; charset=utf-8");
    response.header("Cache-Control", "no-cache");
    response.header("X-Content-Type-Options", "nosniff");
    response.body = Body::Bytes(TEST_PAGE.to_vec());
    response
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// Tokens held by other requests; the health request's own token is not counted.
    tokens_in_use: usize,
    tokens_total: usize,
}

/// `GET /healthz`: liveness and the limiter tokens in use.
pub fn health(app: &App) -> Response {
    let health = Health {
        status: "ok",
        tokens_in_use: app.limiter.in_use().saturating_sub(1),
        tokens_total: app.limiter.capacity(),
    };
    let mut response = Response::json(200, &health);
    response.header("Cache-Control", "no-store");
    response
}
