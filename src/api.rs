//! The JSON API format: every response that is not media is `application/json`.
//!
//! An error is `{"error": {"code": "<stable snake_case>", "message": "<what to do>"}}`. This
//! module owns the one exhaustive mapping from [`ApiError`] to HTTP status and code; handlers
//! return `ApiError` values and never pick a status for an error themselves. Internal error text
//! goes to the log, never to the client.

use std::fmt;

use serde::Serialize;

use crate::server::response::Response;

/// An error response, one variant per distinct cause a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No route has this path.
    RouteNotFound,
    /// The path exists but not for this method; the value lists the allowed methods.
    MethodNotAllowed { allow: &'static str },
    /// The video id in the path breaks the id rules; the value names the rule.
    InvalidId(String),
    /// No video is stored under this id.
    VideoNotFound(String),
    /// No requested range overlaps the file of this size.
    RangeNotSatisfiable { size: u64 },
    /// An `If-Match` or `If-Unmodified-Since` precondition failed.
    PreconditionFailed,
    /// An upload or delete came without the configured bearer token, or with a wrong one.
    Unauthorized { presented: bool },
    /// Every limiter token is in use.
    TooManyRequests,
    /// The upload body is larger than `max_upload_bytes` (the value).
    UploadTooLarge { limit: u64 },
    /// A video with this id exists and the request did not ask to overwrite it.
    VideoExists(String),
    /// The upload's `Content-Type` is not `multipart/form-data` with a boundary.
    NotMultipart(String),
    /// The multipart body is malformed; the value describes how.
    MalformedMultipart(String),
    /// The multipart body has no part named `file`.
    MissingFileField,
    /// The request body ended or stalled before it was complete.
    IncompleteBody,
    /// The request head has too many headers or is too long.
    HeadersTooLarge,
    /// The request is not valid HTTP/1.x; the value gives the reason.
    BadRequest(String),
    /// The request head did not arrive within `header_timeout_secs`.
    RequestTimeout,
    /// An upload came without `Content-Length` or chunked framing.
    LengthRequired,
    /// A `Transfer-Encoding` other than chunked.
    NotImplemented(String),
    /// An HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    /// Open sockets reached `max_connections`.
    TooManyConnections,
    /// The disk is full.
    InsufficientStorage,
    /// The storage bucket rejected this server's credentials or their permissions.
    StorageAccessDenied,
    /// The storage bucket could not be reached, timed out, or reported itself unavailable.
    StorageUnavailable,
    /// The storage bucket answered with an error this server cannot act on.
    StorageFailed,
    /// A failure inside the server; details are in the log.
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::RouteNotFound | ApiError::VideoNotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::InvalidId(_)
            | ApiError::MalformedMultipart(_)
            | ApiError::MissingFileField
            | ApiError::IncompleteBody
            | ApiError::BadRequest(_) => 400,
            ApiError::RangeNotSatisfiable { .. } => 416,
            ApiError::PreconditionFailed => 412,
            ApiError::TooManyRequests => 429,
            ApiError::Unauthorized { .. } => 401,
            ApiError::UploadTooLarge { .. } => 413,
            ApiError::VideoExists(_) => 409,
            ApiError::NotMultipart(_) => 415,
            ApiError::HeadersTooLarge => 431,
            ApiError::RequestTimeout => 408,
            ApiError::LengthRequired => 411,
            ApiError::NotImplemented(_) => 501,
            ApiError::VersionNotSupported => 505,
            ApiError::TooManyConnections => 503,
            ApiError::InsufficientStorage => 507,
            ApiError::StorageAccessDenied | ApiError::StorageFailed => 502,
            ApiError::StorageUnavailable => 503,
            ApiError::Internal => 500,
        }
    }

    /// The stable snake_case code clients match on. The README lists every one.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::VideoNotFound(_) => "video_not_found",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::PreconditionFailed => "precondition_failed",
            ApiError::TooManyRequests => "too_many_requests",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::UploadTooLarge { .. } => "upload_too_large",
            ApiError::VideoExists(_) => "video_exists",
            ApiError::NotMultipart(_) => "not_multipart",
            ApiError::MalformedMultipart(_) => "malformed_multipart",
            ApiError::MissingFileField => "missing_file_field",
            ApiError::IncompleteBody => "incomplete_body",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::LengthRequired => "length_required",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::VersionNotSupported => "http_version_not_supported",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::InsufficientStorage => "insufficient_storage",
            ApiError::StorageAccessDenied => "storage_access_denied",
            ApiError::StorageUnavailable => "storage_unavailable",
            ApiError::StorageFailed => "storage_failed",
            ApiError::Internal => "internal_error",
        }
    }

    /// Builds the JSON error response, with the headers this status needs.
    pub fn to_response(&self) -> Response {
        let message = self.to_string();
        let body = ErrorBody { error: ErrorFields { code: self.code(), message: &message } };
        let mut response = Response::json(self.status(), &body);

        match self {
            ApiError::MethodNotAllowed { allow } => response.header("Allow", *allow),
            ApiError::TooManyRequests => response.header("Retry-After", "1"),
            ApiError::Unauthorized { presented: false } => {
                response.header("WWW-Authenticate", "Bearer realm=\"streamserver\"")
            }
            ApiError::Unauthorized { presented: true } => response.header(
                "WWW-Authenticate",
                "Bearer realm=\"streamserver\", error=\"invalid_token\"",
            ),
            ApiError::TooManyConnections | ApiError::StorageUnavailable => response.header("Retry-After", "5"),
            ApiError::RangeNotSatisfiable { size } => {
                response.header("Content-Range", format!("bytes */{size}"))
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::RouteNotFound => write!(f, "no such endpoint; see the API table in the README"),
            ApiError::MethodNotAllowed { allow } => {
                write!(f, "this endpoint accepts only {allow}")
            }
            ApiError::InvalidId(why) => write!(
                f,
                "invalid video id: {why}; use 1 to 255 letters, digits, '.', '_' or '-', not starting with '.'"
            ),
            ApiError::VideoNotFound(id) => write!(f, "video {id:?} not found"),
            ApiError::RangeNotSatisfiable { size } => write!(
                f,
                "no requested range overlaps the file of {size} bytes; ask for bytes below {size}"
            ),
            ApiError::PreconditionFailed => {
                write!(f, "a precondition failed: the video changed since the given ETag or date")
            }
            ApiError::TooManyRequests => {
                write!(f, "the server is busy with other requests; retry after a second")
            }
            ApiError::Unauthorized { presented: false } => write!(
                f,
                "this server requires an upload token; send it as \"Authorization: Bearer <token>\""
            ),
            ApiError::Unauthorized { presented: true } => {
                write!(f, "the upload token is wrong; check the token configured on the server")
            }
            ApiError::UploadTooLarge { limit } => {
                write!(f, "the upload is larger than the limit of {limit} bytes")
            }
            ApiError::VideoExists(id) => write!(
                f,
                "video {id:?} already exists; add ?overwrite=true to replace it"
            ),
            ApiError::NotMultipart(why) => {
                write!(f, "the upload must be multipart/form-data with a boundary: {why}")
            }
            ApiError::MalformedMultipart(why) => write!(f, "malformed multipart body: {why}"),
            ApiError::MissingFileField => {
                write!(f, "the multipart body has no part named \"file\"; send the video in field \"file\"")
            }
            ApiError::IncompleteBody => {
                write!(f, "the request body ended or stalled before it was complete; send it again")
            }
            ApiError::HeadersTooLarge => {
                write!(f, "the request headers are too large or too many; send fewer or shorter headers")
            }
            ApiError::BadRequest(why) => write!(f, "malformed HTTP request: {why}"),
            ApiError::RequestTimeout => {
                write!(f, "the request head did not arrive in time; send it again")
            }
            ApiError::LengthRequired => write!(
                f,
                "the upload needs a Content-Length header or a chunked body"
            ),
            ApiError::NotImplemented(what) => write!(f, "not supported: {what}"),
            ApiError::VersionNotSupported => write!(f, "only HTTP/1.0 and HTTP/1.1 are supported"),
            ApiError::TooManyConnections => {
                write!(f, "the server has too many open connections; retry in a few seconds")
            }
            ApiError::InsufficientStorage => {
                write!(f, "the server's disk is full; the upload was not stored")
            }
            ApiError::StorageAccessDenied => write!(
                f,
                "the storage bucket denied access to this server; the server log has the details"
            ),
            ApiError::StorageUnavailable => {
                write!(f, "the storage bucket is unavailable; retry in a few seconds")
            }
            ApiError::StorageFailed => write!(
                f,
                "the storage bucket answered with an error; the server log has the details"
            ),
            ApiError::Internal => write!(f, "internal server error; the server log has the details"),
        }
    }
}

impl std::error::Error for ApiError {}

/// A handler's result: a response to send, or an error to render as JSON.
pub type ApiResult = Result<Response, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_the_documented_json() {
        let response = ApiError::VideoNotFound("a.mp4".into()).to_response();
        assert_eq!(response.status, 404);
        let body: serde_json::Value = serde_json::from_slice(response.body_bytes()).unwrap();
        assert_eq!(body["error"]["code"], "video_not_found");
        assert_eq!(body["error"]["message"], "video \"a.mp4\" not found");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = ApiError::MethodNotAllowed { allow: "GET, HEAD" }.to_response();
        assert_eq!(response.status, 405);
        assert_eq!(response.header_value("Allow"), Some("GET, HEAD"));
    }

    #[test]
    fn storage_errors_are_gateway_statuses() {
        assert_eq!(ApiError::StorageAccessDenied.status(), 502);
        assert_eq!(ApiError::StorageAccessDenied.code(), "storage_access_denied");
        assert_eq!(ApiError::StorageFailed.status(), 502);

        let unavailable = ApiError::StorageUnavailable.to_response();
        assert_eq!(unavailable.status, 503);
        assert_eq!(unavailable.header_value("Retry-After"), Some("5"));
        let body: serde_json::Value = serde_json::from_slice(unavailable.body_bytes()).unwrap();
        assert_eq!(body["error"]["code"], "storage_unavailable");
    }

    #[test]
    fn unsatisfiable_range_carries_size() {
        let response = ApiError::RangeNotSatisfiable { size: 10 }.to_response();
        assert_eq!(response.header_value("Content-Range"), Some("bytes */10"));
    }
}
