//! Routing: which handler a method and path go to, and what a valid video id is.
//!
//! The path is percent-decoded exactly once, and only the id segment. An id is one path
//! segment of letters, digits, `.`, `_` and `-`, 1 to 255 bytes, not starting with a dot, so
//! no decoded id can name a parent folder, a subfolder, a hidden file or an upload temporary
//! file. The query string never changes which file is served.

use crate::api::ApiError;
use crate::server::request::Method;

/// The longest accepted id, the usual file name limit.
pub const MAX_ID_BYTES: usize = 255;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD /videos/{id}`.
    Stream(String),
    /// `DELETE /videos/{id}`.
    Delete(String),
    /// `OPTIONS /videos/{id}`: a CORS preflight.
    StreamPreflight,
    /// `POST /upload/{id}`.
    Upload(String),
    /// `OPTIONS /upload/{id}`.
    UploadPreflight,
    /// `GET /testpage`.
    TestPage,
    /// `GET /healthz`.
    Health,
}

/// Picks the route for a method and a request-target path (query already removed).
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let path = strip_absolute_form(path);

    if let Some(segment) = path.strip_prefix("/videos/") {
        return match method {
            Method::Get | Method::Head => Ok(Route::Stream(parse_id(segment)?)),
            Method::Delete => Ok(Route::Delete(parse_id(segment)?)),
            Method::Options => Ok(Route::StreamPreflight),
            _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD, DELETE, OPTIONS" }),
        };
    }
    if let Some(segment) = path.strip_prefix("/upload/") {
        return match method {
            Method::Post => Ok(Route::Upload(parse_id(segment)?)),
            Method::Options => Ok(Route::UploadPreflight),
            _ => Err(ApiError::MethodNotAllowed { allow: "POST, OPTIONS" }),
        };
    }

    let fixed = match path {
        "/testpage" => Route::TestPage,
        "/healthz" => Route::Health,
        _ => return Err(ApiError::RouteNotFound),
    };
    match method {
        Method::Get | Method::Head => Ok(fixed),
        _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
    }
}

/// Turns `http://host/path` (RFC 9112 §3.2.2 absolute-form) into `/path`.
fn strip_absolute_form(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("http://").or_else(|| path.strip_prefix("https://")) else {
        return path;
    };
    rest.find('/').map_or("/", |slash| &rest[slash..])
}

/// Decodes and validates the id segment of a path.
pub fn parse_id(segment: &str) -> Result<String, ApiError> {
    if !segment.contains('%') {
        validate_id(segment)?;
        return Ok(segment.to_string());
    }
    let bytes = percent_decode(segment).ok_or_else(|| invalid("a '%' is not followed by two hex digits"))?;
    let id = String::from_utf8(bytes).map_err(|_| invalid("it is not valid UTF-8"))?;
    validate_id(&id)?;
    Ok(id)
}

/// Checks the id rules; the error says which rule failed.
pub fn validate_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(&format!("it is {} bytes long", id.len())));
    }
    if id.starts_with('.') {
        return Err(invalid("it starts with '.'"));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(invalid(&format!("it contains {c:?}")));
    }
    Ok(())
}

fn invalid(why: &str) -> ApiError {
    ApiError::InvalidId(why.to_string())
}

/// Decodes `%XX` escapes once; `None` for a malformed escape.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_upload_routes() {
        assert_eq!(route(&Method::Get, "/videos/a.mp4"), Ok(Route::Stream("a.mp4".into())));
        assert_eq!(route(&Method::Head, "/videos/a.mp4"), Ok(Route::Stream("a.mp4".into())));
        assert_eq!(route(&Method::Post, "/upload/b_1-2.webm"), Ok(Route::Upload("b_1-2.webm".into())));
        assert_eq!(route(&Method::Get, "/testpage"), Ok(Route::TestPage));
        assert_eq!(route(&Method::Get, "/healthz"), Ok(Route::Health));
        assert_eq!(route(&Method::Delete, "/videos/a.mp4"), Ok(Route::Delete("a.mp4".into())));
    }

    #[test]
    fn absolute_form_target_routes() {
        assert_eq!(route(&Method::Get, "http://h:9000/videos/a"), Ok(Route::Stream("a".into())));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        assert_eq!(
            route(&Method::Post, "/videos/a.mp4"),
            Err(ApiError::MethodNotAllowed { allow: "GET, HEAD, DELETE, OPTIONS" })
        );
        assert_eq!(route(&Method::Get, "/upload/a"), Err(ApiError::MethodNotAllowed { allow: "POST, OPTIONS" }));
        assert_eq!(route(&Method::Delete, "/healthz"), Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }));
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in ["/", "/videos", "/video/a", "/testpage/", "/upload"] {
            assert_eq!(route(&Method::Get, path), Err(ApiError::RouteNotFound), "{path}");
        }
    }

    #[test]
    fn escaping_ids_are_rejected() {
        let cases = [
            "..", "%2e%2e", ".hidden", "a/b", "a%2Fb", "a%2fb", "a%5Cb", "a\\b", "%00", "a%00b",
            "", "%", "%zz", "%E4%B8%AD", "a%20b", "..%2F..%2Fetc%2Fpasswd", ".upload-x.part", "%252e",
        ];
        for segment in cases {
            let result = parse_id(segment);
            assert!(matches!(result, Err(ApiError::InvalidId(_))), "{segment:?} gave {result:?}");
        }
    }

    #[test]
    fn percent_decoding_happens_once() {
        assert_eq!(parse_id("a%2Emp4"), Ok("a.mp4".to_string()));
        assert!(parse_id("a%252Emp4").is_err());
    }

    #[test]
    fn id_length_limit() {
        assert!(parse_id(&"a".repeat(255)).is_ok());
        assert!(parse_id(&"a".repeat(256)).is_err());
    }
}
