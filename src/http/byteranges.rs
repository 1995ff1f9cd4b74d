//! multipart/byteranges bodies (RFC 9110 §14.6), planned before any byte is
//! sent so that `Content-Length` is known and each part streams from the file.
//!
//! This module owns the boundary, the part headers and the body length. The
//! caller owns choosing the ranges (see `range`), reading the file and writing
//! the segments to the connection.
//!
//! Body layout, for parts P1..Pn with boundary B:
//!
//! ```text
//! \r\n--B\r\nContent-Type: T\r\nContent-Range: bytes a-b/size\r\n\r\n<bytes a..=b>
//! ... one such block per part ...
//! \r\n--B--\r\n
//! ```
//!
//! In the RFC 2046 §5.1.1 grammar the CRLF before each later delimiter belongs
//! to that delimiter, and the body's first CRLF ends an empty preamble, so no
//! part gains or loses a byte.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::range::ByteRange;

/// One piece of a planned body, in sending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Framing bytes (delimiters and part headers) to send as they are.
    Bytes(Vec<u8>),
    /// `len` bytes of the representation starting at byte offset `start`.
    File { start: u64, len: u64 },
}

/// A complete multipart/byteranges body plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteRangesBody {
    pub boundary: String,
    pub segments: Vec<Segment>,
    /// Sum of all segment lengths: the response's `Content-Length`.
    pub content_length: u64,
}

impl ByteRangesBody {
    /// Formats the response's `Content-Type` value.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }
}

/// Plans a body with one part per range, in the given order, for a
/// representation of `size` bytes whose own type is `part_content_type`.
///
/// Callers pass the two or more ranges of `RangeOutcome::Multi`. A single range
/// belongs in a plain 206 response, because a client that requested one range
/// may not parse multipart. An empty slice yields a body with no parts. `boundary`
/// must be 1 to 70 characters that need no quoting, as `random_boundary` returns.
pub fn plan_byteranges(
    ranges: &[ByteRange],
    size: u64,
    part_content_type: &str,
    boundary: String,
) -> ByteRangesBody {
    debug_assert!(
        is_plain_boundary(&boundary),
        "invalid multipart boundary: {boundary:?}"
    );

    let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
    for range in ranges {
        let header = part_header(&boundary, part_content_type, range, size);
        segments.push(Segment::Bytes(header.into_bytes()));
        segments.push(Segment::File {
            start: range.start,
            len: range.len(),
        });
    }
    segments.push(Segment::Bytes(
        format!("\r\n--{boundary}--\r\n").into_bytes(),
    ));

    // Saturating, because the part headers push the total past u64::MAX only for sizes near
    // 16 EiB, which no file or object reaches; a plain sum would panic in debug builds there.
    let content_length = segments.iter().map(segment_len).fold(0u64, u64::saturating_add);
    ByteRangesBody {
        boundary,
        segments,
        content_length,
    }
}

/// Creates a 32-character lowercase hex boundary.
///
/// The value hashes the clock and a process-wide counter with two hashers from
/// std's `RandomState`, whose keys std draws from the operating system's random
/// source. It is unpredictable enough that it will not occur inside the parts,
/// but it is not a cryptographic secret.
pub fn random_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);

    let seed = (count, nanos);
    let high = RandomState::new().hash_one((seed, 0u8));
    let low = RandomState::new().hash_one((seed, 1u8));
    format!("{high:016x}{low:016x}")
}

fn part_header(boundary: &str, content_type: &str, range: &ByteRange, size: u64) -> String {
    format!(
        "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
        range.content_range(size)
    )
}

fn segment_len(segment: &Segment) -> u64 {
    match segment {
        Segment::Bytes(bytes) => bytes.len() as u64,
        Segment::File { len, .. } => *len,
    }
}

/// Checks that the boundary is 1 to 70 characters that are valid in an RFC 2046
/// boundary and in an HTTP token, so `Content-Type` needs no quoting.
fn is_plain_boundary(boundary: &str) -> bool {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"'+_-.".contains(&byte);
    (1..=70).contains(&boundary.len()) && boundary.bytes().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[u8] = b"0123456789abcdefghij";

    /// Renders a plan against an in-memory file, as the server would stream it.
    fn render(body: &ByteRangesBody, file: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for segment in &body.segments {
            match segment {
                Segment::Bytes(bytes) => out.extend_from_slice(bytes),
                Segment::File { start, len } => {
                    let start = *start as usize;
                    out.extend_from_slice(&file[start..start + *len as usize]);
                }
            }
        }
        out
    }

    fn two_ranges() -> Vec<ByteRange> {
        vec![
            ByteRange { start: 0, end: 1 },
            ByteRange { start: 5, end: 9 },
        ]
    }

    #[test]
    fn content_length_equals_rendered_length() {
        let ranges = [
            ByteRange { start: 0, end: 0 },
            ByteRange { start: 3, end: 7 },
            ByteRange { start: 19, end: 19 },
        ];

        let body = plan_byteranges(&ranges, FILE.len() as u64, "video/mp4", random_boundary());
        let rendered = render(&body, FILE);

        assert_eq!(body.content_length, rendered.len() as u64);
    }

    #[test]
    fn rendered_body_is_exact() {
        let body = plan_byteranges(&two_ranges(), 20, "video/mp4", "B0UND".to_string());

        let rendered = String::from_utf8(render(&body, FILE)).unwrap();

        let expected = "\r\n--B0UND\r\n\
                        Content-Type: video/mp4\r\n\
                        Content-Range: bytes 0-1/20\r\n\
                        \r\n\
                        01\
                        \r\n--B0UND\r\n\
                        Content-Type: video/mp4\r\n\
                        Content-Range: bytes 5-9/20\r\n\
                        \r\n\
                        56789\
                        \r\n--B0UND--\r\n";
        assert_eq!(rendered, expected);
        assert_eq!(body.content_length, expected.len() as u64);
    }

    #[test]
    fn segments_alternate_headers_and_file() {
        let body = plan_byteranges(&two_ranges(), 20, "video/mp4", "B".to_string());

        assert_eq!(body.segments.len(), 5);
        assert_eq!(body.segments[1], Segment::File { start: 0, len: 2 });
        assert_eq!(body.segments[3], Segment::File { start: 5, len: 5 });
        assert_eq!(body.segments[4], Segment::Bytes(b"\r\n--B--\r\n".to_vec()));
    }

    #[test]
    fn content_type_names_boundary() {
        let body = plan_byteranges(&two_ranges(), 20, "video/mp4", "abc123".to_string());

        assert_eq!(body.content_type(), "multipart/byteranges; boundary=abc123");
    }

    #[test]
    fn empty_ranges_yield_closing_delimiter_only() {
        let body = plan_byteranges(&[], 20, "video/mp4", "B".to_string());

        assert_eq!(
            body.segments,
            vec![Segment::Bytes(b"\r\n--B--\r\n".to_vec())]
        );
        assert_eq!(body.content_length, 9);
    }

    #[test]
    fn random_boundary_is_32_hex_chars() {
        let boundary = random_boundary();

        assert_eq!(boundary.len(), 32);
        assert!(
            boundary.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{boundary}"
        );
        assert!(is_plain_boundary(&boundary));
    }

    #[test]
    fn random_boundary_differs_between_calls() {
        let first = random_boundary();
        let second = random_boundary();

        assert_ne!(first, second);
    }

    #[test]
    fn plain_boundary_check_rejects_bad_values() {
        assert!(!is_plain_boundary(""));
        assert!(!is_plain_boundary(&"a".repeat(71)));
        assert!(!is_plain_boundary("has space"));
        assert!(!is_plain_boundary("semi;colon"));
        assert!(!is_plain_boundary("(paren)"));
        assert!(is_plain_boundary(&"a".repeat(70)));
    }
}
