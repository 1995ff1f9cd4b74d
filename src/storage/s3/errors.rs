//! Maps failures of bucket requests to [`StorageError`], which the handlers map to API errors.
//!
//! The client sees only the class: not found, access denied, unavailable or other. The status,
//! the S3 error code and its message go into the error's detail for the log. An S3 error body
//! can be long, and for `SignatureDoesNotMatch` it repeats the whole string to sign, so only
//! its `<Code>` and `<Message>` are kept.

use s3::error::S3Error;

use crate::storage::StorageError;

/// Longest S3 error message kept in a log detail, in bytes.
const MAX_MESSAGE: usize = 200;

/// Classifies a failed rust-s3 call. `context` names the action and the key.
pub fn from_s3(error: S3Error, context: String) -> StorageError {
    match error {
        S3Error::HttpFailWithBody(status, body) => from_status(status, &body, context),
        S3Error::Atto(error) => from_http_client(error, context),
        S3Error::Io(error) => StorageError::Unavailable { context, detail: error.to_string() },
        other => StorageError::Backend { context, detail: other.to_string() },
    }
}

/// Classifies a non-2xx response from the bucket. A 404 is [`StorageError::NotFound`]. Callers
/// that write, where a 404 means a missing bucket or upload, pass it to [`not_found_on_write`].
pub fn from_status(status: u16, body: &str, context: String) -> StorageError {
    let code = xml_element(body, "Code").unwrap_or_default();
    let detail = summarize(status, body);
    match status {
        404 => StorageError::NotFound,
        401 | 403 => StorageError::AccessDenied { context, detail },
        408 | 429 => StorageError::Unavailable { context, detail },
        500..=599 => StorageError::Unavailable { context, detail },
        _ if code == "RequestTimeout" || code == "SlowDown" => StorageError::Unavailable { context, detail },
        _ => StorageError::Backend { context, detail },
    }
}

/// Classifies a failure of the HTTP client itself: no connection, a timeout, a broken TLS
/// handshake or a malformed response.
pub fn from_http_client(error: attohttpc::Error, context: String) -> StorageError {
    let detail = error.to_string();
    match error.kind() {
        attohttpc::ErrorKind::Io(_) => StorageError::Unavailable { context, detail },
        attohttpc::ErrorKind::Tls(_) => StorageError::Backend {
            context,
            detail: format!(
                "TLS failed: {detail}; for an endpoint with a private CA, add the CA to the system \
                 store (update-ca-certificates)"
            ),
        },
        _ => StorageError::Backend { context, detail },
    }
}

/// Turns `NotFound` from a write into a backend failure: a 404 on a write means a missing
/// bucket or multipart upload, never a missing video.
pub fn not_found_on_write(error: StorageError, context: &str) -> StorageError {
    match error {
        StorageError::NotFound => StorageError::Backend {
            context: context.to_string(),
            detail: "HTTP 404: the bucket or the multipart upload does not exist; check `storage.bucket`"
                .to_string(),
        },
        other => other,
    }
}

/// Formats the status and an S3 XML error body as `HTTP 403 AccessDenied: Access Denied`.
fn summarize(status: u16, body: &str) -> String {
    let code = xml_element(body, "Code");
    let message = xml_element(body, "Message").map(|m| truncate(m, MAX_MESSAGE));
    match (code, message) {
        (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
        (Some(code), None) => format!("HTTP {status} {code}"),
        _ => format!("HTTP {status}"),
    }
}

/// Returns the text of the first `<name>` element, without parsing the rest of the document.
fn xml_element<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(body[start..end].trim())
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENIED: &str = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>\
        <Message>Access Denied</Message><RequestId>1</RequestId></Error>";

    #[test]
    fn forbidden_is_access_denied_with_code() {
        match from_status(403, DENIED, "read a".into()) {
            StorageError::AccessDenied { detail, .. } => assert_eq!(detail, "HTTP 403 AccessDenied: Access Denied"),
            other => panic!("expected AccessDenied, got {other:?}"),
        }
    }

    #[test]
    fn not_found_status_is_not_found() {
        assert!(matches!(from_status(404, "", "read a".into()), StorageError::NotFound));
    }

    #[test]
    fn server_errors_and_throttling_are_unavailable() {
        for status in [500, 502, 503, 504, 429, 408] {
            let error = from_status(status, "", "read a".into());
            assert!(matches!(error, StorageError::Unavailable { .. }), "{status}: {error:?}");
        }
        let slow = "<Error><Code>RequestTimeout</Code></Error>";
        assert!(matches!(from_status(400, slow, "put a".into()), StorageError::Unavailable { .. }));
    }

    #[test]
    fn other_client_errors_are_backend_failures() {
        let error = from_status(400, "<Error><Code>InvalidArgument</Code></Error>", "put a".into());
        assert!(matches!(error, StorageError::Backend { .. }), "{error:?}");
    }

    #[test]
    fn write_404_names_the_bucket() {
        let error = not_found_on_write(StorageError::NotFound, "put a");
        assert!(error.to_string().contains("storage.bucket"), "{error}");
    }

    #[test]
    fn signature_details_are_not_kept() {
        let body = "<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message>\
            <StringToSign>AWS4-HMAC-SHA256 secret-looking</StringToSign></Error>";
        let detail = summarize(403, body);
        assert_eq!(detail, "HTTP 403 SignatureDoesNotMatch: no");
    }

    #[test]
    fn long_message_truncated_on_char_boundary() {
        let message = "é".repeat(150);
        assert!(truncate(&message, MAX_MESSAGE).len() <= MAX_MESSAGE);
    }
}
