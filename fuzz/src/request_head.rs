//! Properties of `parse_head`, the request head parser, for any bytes a client can send.
//!
//! The connection layer calls `parse_head` on everything buffered so far, which may end inside
//! the head or run on into a body or a pipelined request. So besides "no panic", a complete
//! head must parse the same without the bytes after it, and must be `Partial` one byte short.

use std::net::SocketAddr;

use streamserver::server::request::{parse_head, BodyFraming, ParseOutcome, Request, MAX_HEADERS};

/// Parses `data` as a buffered request head and checks the outcome.
pub fn check_request_head(data: &[u8]) {
    match parse_head(data, peer()) {
        ParseOutcome::Complete(request, head_len) => check_complete(data, &request, head_len),
        ParseOutcome::Partial => {}
        ParseOutcome::Invalid(error) => {
            let status = error.status();
            assert!(
                matches!(status, 400 | 431 | 501 | 505),
                "invalid head answered with status {status}: {error:?}"
            );
        }
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

fn check_complete(data: &[u8], request: &Request, head_len: usize) {
    assert!(
        head_len > 0 && head_len <= data.len(),
        "head length {head_len} outside the {}-byte buffer",
        data.len()
    );
    assert_eq!(data[head_len - 1], b'\n', "head of {head_len} bytes does not end with a line feed");

    check_head_alone_parses_same(data, request, head_len);
    check_head_minus_one_byte_is_partial(data, head_len);
    check_request_fields(request);
    check_body_framing(request);
}

/// The bytes after the head (a body or a pipelined request) must not change how it parses.
fn check_head_alone_parses_same(data: &[u8], request: &Request, head_len: usize) {
    match parse_head(&data[..head_len], peer()) {
        ParseOutcome::Complete(alone, alone_len) => {
            assert_eq!(alone_len, head_len, "head length changes without the bytes after it");
            assert_eq!(
                format!("{alone:?}"),
                format!("{request:?}"),
                "request changes without the bytes after the head"
            );
        }
        other => panic!("head parses as {other:?} without the bytes after it"),
    }
}

/// A head that arrives one byte at a time must wait for its last byte, never fail early.
fn check_head_minus_one_byte_is_partial(data: &[u8], head_len: usize) {
    let outcome = parse_head(&data[..head_len - 1], peer());
    assert!(
        matches!(outcome, ParseOutcome::Partial),
        "head without its last byte parses as {outcome:?}, expected Partial"
    );
}

fn check_request_fields(request: &Request) {
    assert!(request.minor_version <= 1, "HTTP/1.{} accepted", request.minor_version);
    assert!(!request.method.as_str().is_empty(), "empty method accepted");
    assert!(request.headers.len() <= MAX_HEADERS, "{} headers accepted", request.headers.len());
    assert!(
        request.target.starts_with(request.path()),
        "path {:?} is not a prefix of target {:?}",
        request.path(),
        request.target
    );
    for (name, value) in request.headers.iter() {
        assert!(!name.is_empty(), "empty header name accepted");
        let first = request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        assert_eq!(request.header(&name.to_ascii_uppercase()), first, "lookup of {name:?} ignores case");
        assert!(request.headers.values(name).any(|v| v == value), "value of {name:?} not found by name");
    }

    if request.minor_version == 1 {
        assert_eq!(count_headers(request, "host"), 1, "HTTP/1.1 request without exactly one Host");
    }
    if request.minor_version == 0 && request.keep_alive {
        assert!(
            header_tokens(request, "connection").any(|token| token == "keep-alive"),
            "HTTP/1.0 request kept alive without Connection: keep-alive"
        );
    }
    if request.expect_continue {
        assert_eq!(request.minor_version, 1, "Expect: 100-continue honoured in HTTP/1.0");
        assert!(count_headers(request, "expect") > 0, "expect_continue set without an Expect header");
    }
}

/// The framing must follow RFC 9112 §6.3: chunked only alone and only in HTTP/1.1, and a
/// length only when every Content-Length value agrees.
fn check_body_framing(request: &Request) {
    let transfer_encodings = header_tokens(request, "transfer-encoding").count();
    let content_lengths = count_headers(request, "content-length");

    match request.body {
        BodyFraming::Chunked => {
            assert_eq!(request.minor_version, 1, "chunked body accepted in HTTP/1.0");
            assert_eq!(content_lengths, 0, "chunked body accepted beside Content-Length");
        }
        BodyFraming::Length(length) => {
            assert!(length > 0, "Length(0) framing instead of Empty");
            assert_eq!(transfer_encodings, 0, "Content-Length framing beside Transfer-Encoding");
            for (_, value) in request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("content-length")) {
                for item in value.split(',') {
                    assert_eq!(
                        item.trim().parse::<u64>().ok(),
                        Some(length),
                        "Content-Length item {item:?} differs from framing length {length}"
                    );
                }
            }
        }
        BodyFraming::Empty => {
            assert_eq!(transfer_encodings, 0, "Transfer-Encoding ignored");
        }
    }
}

fn count_headers(request: &Request, name: &str) -> usize {
    request.headers.iter().filter(|(header, _)| header.eq_ignore_ascii_case(name)).count()
}

/// Returns the non-empty, trimmed, lowercased comma-separated items of every `name` header.
fn header_tokens<'a>(request: &'a Request, name: &'a str) -> impl Iterator<Item = String> + 'a {
    request
        .headers
        .iter()
        .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        .flat_map(|(_, value)| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
}
