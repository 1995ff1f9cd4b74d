//! HEAD and ranged GET requests to the bucket: rust-s3 signs them, attohttpc sends them.
//!
//! rust-s3 0.38's blocking calls do not fit reads, for these reasons:
//! - `get_object_range_to_writer` copies a body into a `Write`, while a response body must be
//!   a `Read` that the connection pulls from. Here the attohttpc response body is that `Read`,
//!   so no bridging thread or pipe is needed, and memory per stream stays at attohttpc's
//!   8 KiB buffer plus the server's copy buffer.
//! - Its requests carry the bucket's whole-request deadline (`Bucket::request_timeout`, 60 s
//!   by default), which would cut off any stream longer than that. Requests here have a
//!   connect timeout and a per-read stall timeout, and no overall deadline.
//! - `get_object_range` asserts `start <= end` and panics otherwise; [`RangeReader`] only
//!   builds a request for a non-empty range that it checked against the object size.
//! - With `fail-on-err`, rust-s3 reads the body of every failed response for its error text,
//!   even for HEAD, whose response has no body. Whether that read returns at once depends on
//!   the store's framing. Here the body of a HEAD response is never read.
//!
//! Like rust-s3, attohttpc keeps no connection pool: every request opens a new TCP (and TLS)
//! connection. What is shared between requests is the one [`Bucket`], with its parsed
//! endpoint, region and credentials.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attohttpc::header::{HeaderMap, HeaderValue, IF_MATCH};
use s3::command::Command;
use s3::request::blocking::AttoRequest;
use s3::request::Request as _;
use s3::Bucket;

use super::errors;
use crate::storage::StorageError;

/// Maximum wait for a TCP connection to the bucket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum wait for any one read from the bucket. A stream as a whole has no time limit.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of an error response's body read for its S3 error code.
const MAX_ERROR_BODY: u64 = 4096;

/// Object metadata from a HEAD response.
#[derive(Debug, Clone)]
pub struct ObjectHead {
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// The ETag as the bucket sends it, quotes included.
    pub etag: Option<String>,
    pub content_type: Option<String>,
}

/// Sends `HEAD` for `key`. A missing object is [`StorageError::NotFound`].
pub fn head(bucket: &Bucket, key: &str) -> Result<ObjectHead, StorageError> {
    let context = format!("HEAD {key}");
    let response = send(bucket, key, Command::HeadObject, &context)?;

    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(errors::from_status(status, "", context));
    }

    let headers = response.headers();
    let size = header(headers, "content-length")
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| StorageError::Backend {
            context: context.clone(),
            detail: "the answer has no valid Content-Length".to_string(),
        })?;
    Ok(ObjectHead {
        size,
        modified: header(headers, "last-modified").and_then(|value| httpdate::parse_http_date(value).ok()),
        etag: header(headers, "etag").map(str::to_string),
        content_type: header(headers, "content-type").map(str::to_string),
    })
}

/// A body of `len` bytes of one object from `start`. It sends its ranged GET on the first
/// read, so a body that is never sent, such as the body of a HEAD response, costs no request.
pub struct RangeReader {
    bucket: Arc<Bucket>,
    key: String,
    /// Sent as `If-Match`, so a replaced object fails the request instead of mixing versions.
    etag: Option<String>,
    start: u64,
    len: u64,
    remaining: u64,
    body: Option<attohttpc::ResponseReader>,
}

impl RangeReader {
    pub fn new(bucket: Arc<Bucket>, key: String, etag: Option<String>, start: u64, len: u64) -> RangeReader {
        RangeReader { bucket, key, etag, start, len, remaining: len, body: None }
    }

    /// Sends the ranged GET and checks that the response contains exactly the requested bytes.
    fn open(&self) -> Result<attohttpc::ResponseReader, StorageError> {
        let context = format!("GET {} bytes {}+{}", self.key, self.start, self.len);
        // `len` is at least 1 here (`read` returns early otherwise), so `end >= start` and
        // rust-s3's range assertion cannot fire.
        let end = self.start.checked_add(self.len - 1).ok_or_else(|| StorageError::Backend {
            context: context.clone(),
            detail: "the range ends past 2^64".to_string(),
        })?;

        let bucket = self.bucket_with_read_headers().map_err(|e| errors::from_s3(e, context.clone()))?;
        let command = Command::GetObjectRange { start: self.start, end: Some(end) };
        let response = send(&bucket, &self.key, command, &context)?;

        let (status, headers, body) = response.split();
        let answer = check_range_answer(status.as_u16(), &headers, self.start, end)
            .and_then(|()| check_same_object(&headers, self.etag.as_deref()));
        match answer {
            Ok(()) => Ok(body),
            Err(RangeAnswerError::Status(status)) => Err(failed_read(status, body, context)),
            Err(RangeAnswerError::Mismatch(detail)) => Err(StorageError::Backend { context, detail }),
        }
    }

    /// Returns a copy of the bucket that adds two signed headers to the ranged GET.
    /// `x-oss-range-behavior: standard` makes Aliyun OSS treat ranges as S3 does (416 when
    /// unsatisfiable, instead of the whole object). Other stores ignore it.
    fn bucket_with_read_headers(&self) -> Result<Bucket, s3::error::S3Error> {
        let mut extra = HeaderMap::new();
        extra.insert("x-oss-range-behavior", HeaderValue::from_static("standard"));
        if let Some(etag) = &self.etag {
            extra.insert(IF_MATCH, HeaderValue::from_str(etag)?);
        }
        self.bucket.with_extra_headers(extra)
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.body.is_none() {
            let body = self.open().map_err(|e| {
                log::warn!("streaming {:?} from the bucket failed: {e}", self.key);
                io::Error::other(e)
            })?;
            self.body = Some(body);
        }

        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let body = self.body.as_mut().expect("the body was opened above");
        let n = body.read(&mut buf[..want]).inspect_err(|e| {
            log::warn!("reading {:?} from the bucket failed after {} bytes: {e}", self.key, self.len - self.remaining);
        })?;
        if n == 0 {
            let sent = self.len - self.remaining;
            log::warn!("the bucket ended {:?} after {sent} of {} bytes", self.key, self.len);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the bucket ended the object early"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeReader")
            .field("key", &self.key)
            .field("start", &self.start)
            .field("len", &self.len)
            .field("remaining", &self.remaining)
            .finish()
    }
}

/// A reason not to stream the response to a ranged GET.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswerError {
    /// A status other than 200 or 206.
    Status(u16),
    /// A success status whose bytes are not the requested ones, with the difference.
    Mismatch(String),
}

/// Accepts 206 with a `Content-Range` of exactly `start-end`, or 200 with the whole object
/// when the range starts at 0 and the object is `end + 1` bytes long.
fn check_range_answer(status: u16, headers: &HeaderMap, start: u64, end: u64) -> Result<(), RangeAnswerError> {
    match status {
        206 => {
            let content_range = header(headers, "content-range").unwrap_or("");
            match parse_content_range(content_range) {
                Some((first, last)) if first == start && last == end => Ok(()),
                _ => Err(RangeAnswerError::Mismatch(format!(
                    "asked for bytes {start}-{end}, got Content-Range {content_range:?}"
                ))),
            }
        }
        200 => {
            let length: Option<u64> = header(headers, "content-length").and_then(|v| v.parse().ok());
            if start == 0 && length == Some(end + 1) {
                Ok(())
            } else {
                Err(RangeAnswerError::Mismatch(format!(
                    "asked for bytes {start}-{end}, got the whole object of {length:?} bytes; the store ignored Range"
                )))
            }
        }
        other => Err(RangeAnswerError::Status(other)),
    }
}

/// Rejects an answer whose ETag differs from the one the object had when opened. Stores that
/// ignore `If-Match` on GET (s3s-fs 0.14 does) are caught here instead.
fn check_same_object(headers: &HeaderMap, expected: Option<&str>) -> Result<(), RangeAnswerError> {
    match (expected, header(headers, "etag")) {
        (Some(expected), Some(actual)) if expected != actual => Err(RangeAnswerError::Mismatch(format!(
            "the object was replaced after it was opened (ETag {expected} became {actual}); the client can retry"
        ))),
        _ => Ok(()),
    }
}

/// The first and last byte of `bytes first-last/total`.
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, _total) = range.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

/// Classifies a failed GET, reading the start of its body for the S3 error code. A 412 means
/// the object was replaced since it was opened.
fn failed_read(status: u16, body: attohttpc::ResponseReader, context: String) -> StorageError {
    if status == 412 {
        return StorageError::Backend {
            context,
            detail: "HTTP 412: the object was replaced after it was opened; the client can retry".to_string(),
        };
    }
    let mut text = String::new();
    let _ = body.take(MAX_ERROR_BODY).read_to_string(&mut text);
    errors::from_status(status, &text, context)
}

/// Signs `command` for `key` and sends it, with `HEAD` for [`Command::HeadObject`] and `GET`
/// for everything else. Redirects are not followed: an S3 redirect names another region.
fn send(bucket: &Bucket, key: &str, command: Command<'_>, context: &str) -> Result<attohttpc::Response, StorageError> {
    let is_head = matches!(command, Command::HeadObject);
    let request = AttoRequest::new(bucket, key, command).map_err(|e| errors::from_s3(e, context.to_string()))?;
    let url = request.url().map_err(|e| errors::from_s3(e, context.to_string()))?;
    let headers = request.headers().map_err(|e| errors::from_s3(e, context.to_string()))?;

    let mut session = attohttpc::Session::new();
    session.connect_timeout(CONNECT_TIMEOUT);
    session.read_timeout(STALL_TIMEOUT);
    session.follow_redirects(false);
    for (name, value) in headers.iter() {
        session.header(name.clone(), value.clone());
    }

    let builder = if is_head { session.head(url.as_str()) } else { session.get(url.as_str()) };
    builder.send().map_err(|e| errors::from_http_client(e, context.to_string()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn partial_answer_with_exact_range_accepted() {
        let h = headers(&[("content-range", "bytes 10-19/100")]);
        assert_eq!(check_range_answer(206, &h, 10, 19), Ok(()));
    }

    #[test]
    fn partial_answer_with_other_range_rejected() {
        let h = headers(&[("content-range", "bytes 0-19/100")]);
        assert!(matches!(check_range_answer(206, &h, 10, 19), Err(RangeAnswerError::Mismatch(_))));
    }

    #[test]
    fn whole_object_accepted_only_when_asked_for() {
        let h = headers(&[("content-length", "20")]);
        assert_eq!(check_range_answer(200, &h, 0, 19), Ok(()));
        assert!(matches!(check_range_answer(200, &h, 5, 19), Err(RangeAnswerError::Mismatch(_))));
        assert!(matches!(check_range_answer(200, &h, 0, 9), Err(RangeAnswerError::Mismatch(_))));
    }

    #[test]
    fn error_status_is_reported_not_streamed() {
        let h = headers(&[("content-type", "application/xml"), ("content-length", "200")]);
        assert_eq!(check_range_answer(404, &h, 0, 9), Err(RangeAnswerError::Status(404)));
        assert_eq!(check_range_answer(416, &h, 0, 9), Err(RangeAnswerError::Status(416)));
    }

    #[test]
    fn replaced_object_detected_by_etag() {
        let h = headers(&[("etag", "\"new\"")]);
        assert!(matches!(check_same_object(&h, Some("\"old\"")), Err(RangeAnswerError::Mismatch(_))));
        assert_eq!(check_same_object(&h, Some("\"new\"")), Ok(()));
        assert_eq!(check_same_object(&h, None), Ok(()));
        assert_eq!(check_same_object(&HeaderMap::new(), Some("\"old\"")), Ok(()));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 0)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
