//! Parsing a request head with `httparse` and deciding how its body is framed.
//!
//! The rules for framing follow RFC 9112 §6: `Transfer-Encoding: chunked` or one valid
//! `Content-Length`, and anything ambiguous (both headers, differing lengths, another transfer
//! coding) is rejected, because a server that guesses there can be made to read a body as the
//! next request.

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use crate::api::ApiError;
use crate::http::trim_ows;

/// Maximum headers in one request; more get 431.
pub const MAX_HEADERS: usize = 100;

/// A request method; the ones the routes know get their own variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other(String),
}

impl Method {
    fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(name) => name,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The raw request-target, query included.
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
    pub body: BodyFraming,
    /// The client sent `Expect: 100-continue` and waits for it before the body.
    pub expect_continue: bool,
    /// The client allows the connection to stay open after this request.
    pub keep_alive: bool,
    pub peer: SocketAddr,
}

impl Request {
    /// Returns the first value of a header, matching its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(path, _)| path)
    }

    /// The query part of the target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }
}

/// The header fields of a request, held in one string so that parsing a head costs two
/// allocations whatever the number of fields. Names keep the case they were sent in and are
/// matched ignoring ASCII case; values are decoded lossily from bytes.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    text: String,
    /// For each field: where its name ends and where its value ends in `text`. The name
    /// starts where the previous value ended.
    fields: Vec<(u32, u32)>,
}

impl Headers {
    fn new(parsed: &[httparse::Header]) -> Headers {
        let bytes: usize = parsed.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut headers = Headers { text: String::with_capacity(bytes), fields: Vec::with_capacity(parsed.len()) };
        for field in parsed {
            headers.text.push_str(field.name);
            let name_end = headers.text.len() as u32;
            headers.text.push_str(&String::from_utf8_lossy(field.value));
            headers.fields.push((name_end, headers.text.len() as u32));
        }
        headers
    }

    /// Returns the number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the request has no header fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Iterates over every field as a name and a value, in the order they were sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let starts = std::iter::once(0).chain(self.fields.iter().map(|&(_, value_end)| value_end));
        starts.zip(&self.fields).map(|(start, &(name_end, value_end))| {
            let (start, name_end, value_end) = (start as usize, name_end as usize, value_end as usize);
            (&self.text[start..name_end], &self.text[name_end..value_end])
        })
    }

    /// Returns the values of every field called `name`, in any case.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
}

/// The result of parsing the buffered bytes of a connection.
#[derive(Debug)]
pub enum ParseOutcome {
    /// A full head of this many bytes.
    Complete(Request, usize),
    /// More bytes are needed.
    Partial,
    /// The head is invalid: respond with this error and close.
    Invalid(ApiError),
}

/// Parses a request head from the start of `buffer`.
pub fn parse_head(buffer: &[u8], peer: SocketAddr) -> ParseOutcome {
    // Left uninitialised: httparse writes each slot it uses, and filling all of them first
    // would cost more than the parse of a typical head.
    let mut header_slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);

    let head_len = match parsed.parse_with_uninit_headers(buffer, &mut header_slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParseOutcome::Partial,
        Err(httparse::Error::TooManyHeaders) => return ParseOutcome::Invalid(ApiError::HeadersTooLarge),
        Err(httparse::Error::Version) => return ParseOutcome::Invalid(ApiError::VersionNotSupported),
        Err(e) => return ParseOutcome::Invalid(ApiError::BadRequest(e.to_string())),
    };

    match build_request(&parsed, peer) {
        Ok(request) => ParseOutcome::Complete(request, head_len),
        Err(error) => ParseOutcome::Invalid(error),
    }
}

fn build_request(parsed: &httparse::Request, peer: SocketAddr) -> Result<Request, ApiError> {
    let minor_version = parsed.version.unwrap_or(1);
    let headers = Headers::new(parsed.headers);

    if minor_version >= 1 {
        check_host(&headers)?;
    }
    let body = body_framing(&headers, minor_version)?;
    let keep_alive = match minor_version {
        0 => has_token(&headers, "connection", "keep-alive"),
        _ => !has_token(&headers, "connection", "close"),
    };
    let expect_continue = minor_version >= 1
        && headers.values("expect").any(|v| trim_ows(v).eq_ignore_ascii_case("100-continue"));

    Ok(Request {
        method: Method::parse(parsed.method.unwrap_or("")),
        target: parsed.path.unwrap_or("/").to_string(),
        minor_version,
        headers,
        body,
        expect_continue,
        keep_alive,
        peer,
    })
}

/// Decides the body framing (RFC 9112 §6.3), rejecting every ambiguous combination.
fn body_framing(headers: &Headers, minor_version: u8) -> Result<BodyFraming, ApiError> {
    let transfer_codings = header_tokens(headers, "transfer-encoding");
    let lengths: Vec<&str> = headers
        .values("content-length")
        .flat_map(|v| v.split(','))
        .map(trim_ows)
        .collect();

    if !transfer_codings.is_empty() {
        if minor_version == 0 {
            return Err(ApiError::BadRequest("Transfer-Encoding is not allowed in HTTP/1.0".into()));
        }
        if !lengths.is_empty() {
            return Err(ApiError::BadRequest(
                "both Transfer-Encoding and Content-Length are present".into(),
            ));
        }
        if transfer_codings != ["chunked"] {
            return Err(ApiError::NotImplemented(format!(
                "Transfer-Encoding {:?}; send the body with Content-Length or chunked",
                transfer_codings.join(", ")
            )));
        }
        return Ok(BodyFraming::Chunked);
    }

    let Some(first) = lengths.first() else {
        return Ok(BodyFraming::Empty);
    };
    if lengths.iter().any(|l| l != first) {
        return Err(ApiError::BadRequest("conflicting Content-Length values".into()));
    }
    let length = parse_content_length(first)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid Content-Length {first:?}")))?;
    Ok(if length == 0 { BodyFraming::Empty } else { BodyFraming::Length(length) })
}

/// Checks that an HTTP/1.1 request has exactly one valid `Host` (RFC 9112 §3.2).
fn check_host(headers: &Headers) -> Result<(), ApiError> {
    let mut hosts = headers.values("host").map(trim_ows);
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(ApiError::BadRequest("an HTTP/1.1 request needs exactly one Host header".into()));
    };
    let valid = host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_~:[]%!$&'()*+,;=".contains(&b));
    if !valid {
        return Err(ApiError::BadRequest(format!("invalid Host header {host:?}")));
    }
    Ok(())
}

/// Parses a Content-Length: ASCII digits only, no sign, no overflow.
fn parse_content_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The comma-separated tokens of every instance of a header, trimmed and lowercased.
fn header_tokens(headers: &Headers, name: &str) -> Vec<String> {
    headers
        .values(name)
        .flat_map(|v| v.split(','))
        .map(|t| trim_ows(t).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Returns whether any instance of a header lists `token`, in any case.
fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers.values(name).flat_map(|v| v.split(',')).any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn parse(text: &str) -> Result<Request, ApiError> {
        match parse_head(text.as_bytes(), peer()) {
            ParseOutcome::Complete(request, n) => {
                assert_eq!(n, text.len());
                Ok(request)
            }
            ParseOutcome::Partial => panic!("partial: {text:?}"),
            ParseOutcome::Invalid(e) => Err(e),
        }
    }

    #[test]
    fn simple_get_keeps_alive() {
        let r = parse("GET /videos/a.mp4?x=1 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path(), "/videos/a.mp4");
        assert_eq!(r.query(), Some("x=1"));
        assert!(r.keep_alive);
        assert_eq!(r.body, BodyFraming::Empty);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn connection_close_token_closes() {
        assert!(!parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn huge_content_length_parses() {
        let r = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000000\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyFraming::Length(100_000_000_000));
    }

    #[test]
    fn content_length_overflow_rejected() {
        let e = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn signed_content_length_rejected() {
        assert!(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n").is_err());
    }

    #[test]
    fn conflicting_lengths_rejected() {
        assert!(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err());
    }

    #[test]
    fn repeated_equal_lengths_accepted() {
        let r = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n").unwrap();
        assert_eq!(r.body, BodyFraming::Length(5));
    }

    #[test]
    fn chunked_with_length_rejected() {
        let e = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
            .unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn gzip_transfer_coding_not_implemented() {
        let e = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn expect_continue_detected() {
        let r = parse("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(r.expect_continue);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            text.push_str(&format!("X-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        match parse_head(text.as_bytes(), peer()) {
            ParseOutcome::Invalid(e) => assert_eq!(e.status(), 431),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost:", peer()), ParseOutcome::Partial));
    }

    #[test]
    fn http11_needs_one_valid_host() {
        assert!(parse("GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nHost: a b\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n").is_ok());
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn headers_match_names_in_any_case() {
        let r = parse("GET / HTTP/1.1\r\nHost: h\r\nX-Tag: a\r\nx-tag: b\r\nRange: bytes=0-1\r\n\r\n").unwrap();

        let fields: Vec<(&str, &str)> = r.headers.iter().collect();
        assert_eq!(fields, [("Host", "h"), ("X-Tag", "a"), ("x-tag", "b"), ("Range", "bytes=0-1")]);
        assert_eq!(r.header("RANGE"), Some("bytes=0-1"));
        assert_eq!(r.header("x-TAG"), Some("a"));
        assert_eq!(r.headers.values("X-tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.headers.len(), 4);
    }

    #[test]
    fn header_values_decode_invalid_utf8_lossily() {
        let r = parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9!\r\nEmpty:\r\n\r\n", peer());
        let ParseOutcome::Complete(r, _) = r else { panic!("{r:?}") };

        assert_eq!(r.header("x-name"), Some("caf\u{fffd}!"));
        assert_eq!(r.header("empty"), Some(""));
    }

    #[test]
    fn framing_headers_trim_only_space_and_tab() {
        let nbsp = "\u{a0}";
        let length = parse(&format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5{nbsp}\r\n\r\n")).unwrap_err();
        assert_eq!(length.status(), 400);
        let coding = parse(&format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked{nbsp}\r\n\r\n")).unwrap_err();
        assert_eq!(coding.status(), 501);
        assert!(parse(&format!("GET / HTTP/1.1\r\nHost: h{nbsp}\r\n\r\n")).is_err());
        assert!(parse(&format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: close{nbsp}\r\n\r\n")).unwrap().keep_alive);

        let tabs = parse("POST / HTTP/1.1\r\nHost: \th\t\r\nContent-Length: \t5\t\r\nConnection: \tclose\r\n\r\n").unwrap();
        assert_eq!(tabs.body, BodyFraming::Length(5));
        assert!(!tabs.keep_alive);
    }

    #[test]
    fn http2_preface_is_invalid() {
        assert!(matches!(
            parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", peer()),
            ParseOutcome::Invalid(_)
        ));
    }
}
