//! Conformance table for `GET` and `HEAD /videos/{id}`, run against the real binary over raw
//! sockets. It covers:
//! - every row of Go's net/http `ParseRange` table (`src/net/http/range_test.go`) and of its
//!   invalid-suffix table (`TestServeFileRejectsInvalidSuffixLengths` in `fs_test.go`), sent as
//!   requests and judged by this server's rules. A malformed `Range` gets 200 and the whole
//!   file, and an unsatisfiable one gets 416 with `Content-Range: bytes */size`. Overlapping
//!   and adjacent ranges are merged. More than `max_ranges` ranges, or ranges adding up to more
//!   than the file, get 200 and the whole file;
//! - Go's `TestServeContent` precondition cases: If-None-Match, If-Match, If-Modified-Since,
//!   If-Unmodified-Since and If-Range by entity tag and by date, with weak tags, `*` and lists,
//!   plus the evaluation order of RFC 9110 §13.2.2;
//! - `multipart/byteranges` bodies byte for byte, with the boundary taken from `Content-Type`;
//! - a HEAD twin of every GET row: same status, same headers apart from `Date` and the
//!   multipart boundary, and no body bytes on the wire;
//! - a 0-byte file, which answers any `Range` with 200 and an empty body;
//! - query strings, percent-encoded and absolute-form targets, 400, 404 and 405 answers;
//! - CORS headers and preflights, a configured `cache_control` and a configured `max_ranges`;
//! - keep-alive after 200 (HEAD), 304, 400, 404, 405, 412, 416, 429 and 413 answers on one
//!   connection, HTTP/1.0 keep-alive, and pipelined requests answered in order;
//! - the `Host` rules of RFC 9112 §3.2: an HTTP/1.1 request without `Host`, with two `Host`
//!   lines or with an invalid `Host` value gets 400;
//! - RFC 9110 §8.8.2.1: a modification time in the future is sent as the `Date` value.
//!
//! Every response is read with `Connection: close` and checked for stray bytes after its
//! declared length. Failures are collected per row and reported together, each naming its row.
//!
//! `STREAMSERVER_TEST_BACKEND=s3` runs every test against an S3 bucket in proxy mode
//! (`scripts/test.sh` does both), and no row is skipped there. On S3, `store` uploads through
//! the API and then sets the mtime of the object file under `STREAMSERVER_TEST_S3_ROOT`, which
//! s3s-fs 0.14.1 sends as `Last-Modified`. The ETags differ between backends, so every row
//! uses the ETag fetched for its video.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{pattern, read_response, Response, TestServer};
use serde_json::{json, Value};

/// 2014-06-25T17:12:18Z, the modification time of Go's `range_with_modtime` case.
const MODIFIED_SECS: u64 = 1_403_716_338;
const MODIFIED_DATE: &str = "Wed, 25 Jun 2014 17:12:18 GMT";
const DEFAULT_CACHE_CONTROL: &str = "public, no-cache";
const ALLOWED_ORIGIN: &str = "https://player.example";

// ---------------------------------------------------------------------------------------------
// Stored videos and the server that serves them
// ---------------------------------------------------------------------------------------------

/// What every response of one server carries, whatever the row.
#[derive(Clone)]
struct Site {
    cache_control: String,
    /// `cors_allow_origins` is set, so every response carries `Vary: Origin`.
    cors: bool,
}

/// A stored video with the validators the server reported for it.
struct Video {
    id: &'static str,
    bytes: Vec<u8>,
    content_type: &'static str,
    etag: String,
    last_modified: String,
    site: Site,
}

impl Video {
    fn path(&self) -> String {
        format!("/videos/{}", self.id)
    }

    fn size(&self) -> usize {
        self.bytes.len()
    }
}

/// Stores a video with a fixed modification time, then fetches its validators with a plain
/// GET, because the ETag depends on the inode (local) or on the bucket's ETag (S3).
fn store(
    server: &TestServer,
    site: &Site,
    id: &'static str,
    bytes: Vec<u8>,
    modified: SystemTime,
) -> Video {
    server.put_video(id, &bytes);
    server.set_modified(id, modified);

    let (response, _) = exchange(server, "GET", &format!("/videos/{id}"), &[]).expect("plain GET");
    assert_eq!(response.status, 200, "setup: plain GET of {id}");
    let etag = response.header("etag").expect("setup: ETag").to_string();
    assert!(etag.starts_with('"'), "setup: {id} has a weak ETag {etag}");
    assert!(
        etag.ends_with('"') && etag.len() > 2,
        "setup: {id} has a malformed ETag {etag}"
    );
    let last_modified = response
        .header("last-modified")
        .expect("setup: Last-Modified")
        .to_string();

    Video {
        id,
        bytes,
        content_type: "video/mp4",
        etag,
        last_modified,
        site: site.clone(),
    }
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// The files of the main table.
struct Library {
    /// `0123456789`, modified at [`MODIFIED_DATE`].
    ten: Video,
    /// `abcdefghijk`, modified 123 ns after [`MODIFIED_DATE`].
    eleven: Video,
    /// 0 bytes.
    empty: Video,
    /// 1000 pattern bytes.
    kilo: Video,
    /// 10000 pattern bytes.
    big: Video,
    /// `<html>foo`, modified at the Unix epoch.
    epoch: Video,
}

fn stock(server: &TestServer, site: &Site) -> Library {
    let modified = at(MODIFIED_SECS, 0);
    Library {
        ten: store(server, site, "ten.mp4", b"0123456789".to_vec(), modified),
        eleven: store(
            server,
            site,
            "eleven.mp4",
            b"abcdefghijk".to_vec(),
            at(MODIFIED_SECS, 123),
        ),
        empty: store(server, site, "empty.mp4", Vec::new(), modified),
        kilo: store(server, site, "kilo.mp4", pattern(1000), modified),
        big: store(server, site, "big.mp4", pattern(10_000), modified),
        epoch: store(server, site, "epoch.mp4", b"<html>foo".to_vec(), UNIX_EPOCH),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// An expectation for one response header.
#[derive(Debug, Clone)]
enum Expect {
    Exact(String),
    Absent,
    /// Present, with any value.
    Present,
    /// A comma-separated list holding each of these tokens, compared case-insensitively.
    Tokens(Vec<&'static str>),
    /// `multipart/byteranges; boundary=B` with B a valid boundary.
    Multipart,
}

fn exact(value: impl Into<String>) -> Expect {
    Expect::Exact(value.into())
}

/// The expected body of a response.
#[derive(Debug, Clone)]
enum BodyExpect {
    Bytes(Vec<u8>),
    /// `multipart/byteranges` parts of `file` (inclusive ranges), in this order.
    Parts {
        file: Vec<u8>,
        content_type: &'static str,
        ranges: Vec<(usize, usize)>,
    },
    /// A JSON error body with this `error.code`.
    ErrorCode(&'static str),
    Empty,
}

/// One request and its expected response.
struct Case {
    label: String,
    method: &'static str,
    target: String,
    request_headers: Vec<String>,
    status: u16,
    headers: Vec<(&'static str, Expect)>,
    body: BodyExpect,
}

impl Case {
    /// Drops any expectation for `name`, so the row accepts whatever the server sends there.
    fn ignoring(mut self, name: &'static str) -> Case {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    /// Sets the expectation for `name`, replacing an earlier one.
    fn with(mut self, name: &'static str, expect: Expect) -> Case {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, expect));
        self
    }
}

/// A request still waiting for its expected outcome.
struct Ask<'a> {
    label: String,
    method: &'static str,
    target: String,
    headers: Vec<String>,
    video: Option<&'a Video>,
    site: Site,
}

fn get<'a>(label: &str, video: &'a Video, headers: &[&str]) -> Ask<'a> {
    Ask {
        label: label.to_string(),
        method: "GET",
        target: video.path(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
        video: Some(video),
        site: video.site.clone(),
    }
}

fn ask<'a>(
    label: &str,
    site: &Site,
    method: &'static str,
    target: &str,
    headers: &[&str],
) -> Ask<'a> {
    Ask {
        label: label.to_string(),
        method,
        target: target.to_string(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
        video: None,
        site: site.clone(),
    }
}

impl<'a> Ask<'a> {
    /// Adds a header line built at run time, such as one naming the fetched ETag.
    fn header(mut self, line: String) -> Ask<'a> {
        self.headers.push(line);
        self
    }

    fn target(mut self, target: &str) -> Ask<'a> {
        self.target = target.to_string();
        self
    }

    fn video(&self) -> &'a Video {
        self.video
            .unwrap_or_else(|| panic!("row {:?} needs a video", self.label))
    }

    fn finish(self, status: u16, headers: Vec<(&'static str, Expect)>, body: BodyExpect) -> Case {
        let mut all = site_headers(&self.site);
        all.extend(headers);
        Case {
            label: self.label,
            method: self.method,
            target: self.target,
            request_headers: self.headers,
            status,
            headers: all,
            body,
        }
    }

    /// 200 with the whole file.
    fn whole(self) -> Case {
        let video = self.video();
        let headers = media_headers(
            video,
            exact(video.content_type),
            exact(video.size().to_string()),
            Expect::Absent,
        );
        self.finish(200, headers, BodyExpect::Bytes(video.bytes.clone()))
    }

    /// 206 with bytes `start..=end` and `Content-Range`.
    fn partial(self, start: usize, end: usize) -> Case {
        let video = self.video();
        let range = exact(format!("bytes {start}-{end}/{}", video.size()));
        let length = exact((end - start + 1).to_string());
        let headers = media_headers(video, exact(video.content_type), length, range);
        self.finish(
            206,
            headers,
            BodyExpect::Bytes(video.bytes[start..=end].to_vec()),
        )
    }

    /// 206 `multipart/byteranges` with one part per inclusive range.
    fn parts(self, ranges: &[(usize, usize)]) -> Case {
        let video = self.video();
        let headers = media_headers(video, Expect::Multipart, Expect::Present, Expect::Absent);
        let body = BodyExpect::Parts {
            file: video.bytes.clone(),
            content_type: video.content_type,
            ranges: ranges.to_vec(),
        };
        self.finish(206, headers, body)
    }

    /// 416 with `Content-Range: bytes */size`, a JSON error and no `Cache-Control`, so a
    /// shared cache does not keep the error for the media's lifetime.
    fn unsatisfiable(self) -> Case {
        let video = self.video();
        let range = exact(format!("bytes */{}", video.size()));
        let mut headers = media_headers(video, exact("application/json"), Expect::Present, range);
        for (name, expect) in headers.iter_mut() {
            if *name == "cache-control" {
                *expect = Expect::Absent;
            }
        }
        self.finish(416, headers, BodyExpect::ErrorCode("range_not_satisfiable"))
    }

    /// 304 with the validators and caching headers and no body headers (RFC 9110 §15.4.5).
    fn not_modified(self) -> Case {
        let video = self.video();
        let headers = vec![
            ("etag", exact(&video.etag)),
            ("last-modified", exact(&video.last_modified)),
            ("cache-control", exact(&video.site.cache_control)),
            ("content-length", Expect::Absent),
            ("content-type", Expect::Absent),
            ("content-range", Expect::Absent),
            ("transfer-encoding", Expect::Absent),
        ];
        self.finish(304, headers, BodyExpect::Empty)
    }

    /// 412 with a JSON error.
    fn precondition_failed(self) -> Case {
        self.error(412, "precondition_failed")
    }

    /// A JSON error response.
    fn error(self, status: u16, code: &'static str) -> Case {
        let headers = vec![
            ("content-type", exact("application/json")),
            ("content-range", Expect::Absent),
            ("transfer-encoding", Expect::Absent),
        ];
        self.finish(status, headers, BodyExpect::ErrorCode(code))
    }

    /// 204 to an OPTIONS request.
    fn no_content(self, allow: Vec<&'static str>) -> Case {
        let headers = vec![
            ("allow", Expect::Tokens(allow)),
            ("content-length", Expect::Absent),
        ];
        self.finish(204, headers, BodyExpect::Empty)
    }
}

/// Headers every response of `site` carries or lacks.
fn site_headers(site: &Site) -> Vec<(&'static str, Expect)> {
    let vary = if site.cors {
        exact("Origin")
    } else {
        Expect::Absent
    };
    vec![
        ("date", Expect::Present),
        ("vary", vary),
        ("access-control-allow-origin", Expect::Absent),
        ("access-control-expose-headers", Expect::Absent),
    ]
}

/// Lists the headers of a media response (200, 206 and 416).
fn media_headers(
    video: &Video,
    content_type: Expect,
    content_length: Expect,
    content_range: Expect,
) -> Vec<(&'static str, Expect)> {
    vec![
        ("content-type", content_type),
        ("content-length", content_length),
        ("content-range", content_range),
        ("accept-ranges", exact("bytes")),
        ("etag", exact(&video.etag)),
        ("last-modified", exact(&video.last_modified)),
        ("cache-control", exact(&video.site.cache_control)),
        ("x-content-type-options", exact("nosniff")),
        ("transfer-encoding", Expect::Absent),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running rows
// ---------------------------------------------------------------------------------------------

/// Sends one request with `Connection: close`. Returns the response and any bytes that came
/// after its declared length.
fn exchange(
    server: &TestServer,
    method: &str,
    target: &str,
    headers: &[String],
) -> std::io::Result<(Response, Vec<u8>)> {
    let mut stream = server.connect();
    stream.write_all(request_text(method, target, headers, true).as_bytes())?;
    let response = read_response(&mut stream, method == "HEAD")?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok((response, rest))
}

fn request_text(method: &str, target: &str, headers: &[String], close: bool) -> String {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: t\r\n");
    if close {
        text.push_str("Connection: close\r\n");
    }
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text
}

/// Mismatches found so far, each naming its row.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, label: &str, message: String) {
        self.0.push(format!("[{label}] {message}"));
    }

    fn assert_none(&self, rows: usize) {
        assert!(
            self.0.is_empty(),
            "{} mismatches in {rows} rows:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Runs every case, and a HEAD twin of every GET case; panics listing all mismatches.
fn run_table(server: &TestServer, cases: &[Case]) {
    let mut failures = Failures::default();
    for case in cases {
        run_case(server, case, &mut failures);
    }
    failures.assert_none(cases.len());
}

fn run_case(server: &TestServer, case: &Case, failures: &mut Failures) {
    let label = format!(
        "{} {} {} {:?}",
        case.label, case.method, case.target, case.request_headers
    );
    let response = match exchange(server, case.method, &case.target, &case.request_headers) {
        Ok((response, rest)) => {
            if !rest.is_empty() {
                failures.note(
                    &label,
                    format!(
                        "{} bytes after the declared length: {:?}",
                        rest.len(),
                        lossy(&rest)
                    ),
                );
            }
            response
        }
        Err(e) => return failures.note(&label, format!("no complete response: {e}")),
    };
    check_response(&label, case, &response, false, failures);

    if case.method != "GET" {
        return;
    }
    let head_label = format!("{label} (HEAD twin)");
    match exchange(server, "HEAD", &case.target, &case.request_headers) {
        Ok((head, rest)) => {
            if !rest.is_empty() {
                failures.note(
                    &head_label,
                    format!(
                        "HEAD answer carries {} body bytes: {:?}",
                        rest.len(),
                        lossy(&rest)
                    ),
                );
            }
            check_response(&head_label, case, &head, true, failures);
            compare_head_with_get(&head_label, &response, &head, failures);
        }
        Err(e) => failures.note(&head_label, format!("no complete response: {e}")),
    }
}

fn check_response(
    label: &str,
    case: &Case,
    response: &Response,
    head_only: bool,
    failures: &mut Failures,
) {
    if response.status != case.status {
        failures.note(
            label,
            format!(
                "status: expected {}, got {} with body {:?}",
                case.status,
                response.status,
                lossy(&response.body)
            ),
        );
        return;
    }

    for (name, expect) in &case.headers {
        if let Err(message) = check_header(response.header(name), expect) {
            failures.note(label, format!("header {name}: {message}"));
        }
    }

    if head_only {
        return;
    }
    if let Err(message) = check_body(case, response) {
        failures.note(label, message);
    }
}

fn check_header(actual: Option<&str>, expect: &Expect) -> Result<(), String> {
    match (expect, actual) {
        (Expect::Exact(want), Some(got)) if got == want => Ok(()),
        (Expect::Exact(want), got) => Err(format!("expected {want:?}, got {got:?}")),
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(got)) => Err(format!("expected none, got {got:?}")),
        (Expect::Present, Some(_)) => Ok(()),
        (Expect::Present, None) => Err("expected one, got none".into()),
        (Expect::Tokens(tokens), Some(got)) => {
            let listed: Vec<String> = got
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            let missing: Vec<&&str> = tokens
                .iter()
                .filter(|t| !listed.contains(&t.to_ascii_lowercase()))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{got:?} lacks {missing:?}"))
            }
        }
        (Expect::Tokens(tokens), None) => Err(format!("expected a list with {tokens:?}, got none")),
        (Expect::Multipart, Some(got)) => boundary_of(got).map(|_| ()),
        (Expect::Multipart, None) => Err("expected multipart/byteranges, got none".into()),
    }
}

fn check_body(case: &Case, response: &Response) -> Result<(), String> {
    match &case.body {
        BodyExpect::Bytes(want) if &response.body == want => Ok(()),
        BodyExpect::Bytes(want) => Err(format!(
            "body: expected {} bytes {:?}, got {} bytes {:?}",
            want.len(),
            lossy(want),
            response.body.len(),
            lossy(&response.body)
        )),
        BodyExpect::Empty if response.body.is_empty() => Ok(()),
        BodyExpect::Empty => Err(format!(
            "body: expected none, got {:?}",
            lossy(&response.body)
        )),
        BodyExpect::ErrorCode(code) => check_error_body(&response.body, code),
        BodyExpect::Parts {
            file,
            content_type,
            ranges,
        } => {
            let boundary = boundary_of(response.header("content-type").unwrap_or(""))?;
            let want = multipart_bytes(&boundary, content_type, file, ranges);
            if response.body != want {
                return Err(format!(
                    "multipart body: expected {:?}, got {:?}",
                    lossy(&want),
                    lossy(&response.body)
                ));
            }
            let declared = response.header("content-length").unwrap_or("");
            if declared != want.len().to_string() {
                return Err(format!(
                    "Content-Length {declared:?} for a {} byte multipart body",
                    want.len()
                ));
            }
            Ok(())
        }
    }
}

fn check_error_body(body: &[u8], code: &str) -> Result<(), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", lossy(body)))?;
    let got = value["error"]["code"].as_str().unwrap_or("");
    let message = value["error"]["message"].as_str().unwrap_or("");
    if got != code {
        return Err(format!(
            "error code: expected {code:?}, got {got:?} in {value}"
        ));
    }
    if message.is_empty() {
        return Err(format!("error message is empty in {value}"));
    }
    Ok(())
}

/// Checks that a HEAD response repeats the status and headers of the GET response. Only `Date`
/// and the random multipart boundary may differ.
fn compare_head_with_get(label: &str, get: &Response, head: &Response, failures: &mut Failures) {
    if head.status != get.status {
        failures.note(
            label,
            format!(
                "HEAD status {} differs from GET status {}",
                head.status, get.status
            ),
        );
    }
    let get_headers = comparable_headers(get);
    let head_headers = comparable_headers(head);
    if get_headers != head_headers {
        failures.note(
            label,
            format!("HEAD headers {head_headers:?} differ from GET headers {get_headers:?}"),
        );
    }
}

fn comparable_headers(response: &Response) -> Vec<(String, String)> {
    response
        .headers
        .iter()
        .filter(|(name, _)| name != "date")
        .map(|(name, value)| match boundary_of(value) {
            Ok(_) if name == "content-type" => {
                (name.clone(), "multipart/byteranges; boundary=*".to_string())
            }
            _ => (name.clone(), value.clone()),
        })
        .collect()
}

/// Extracts the boundary of a `multipart/byteranges` content type, checked against the RFC 2046
/// length limit.
fn boundary_of(content_type: &str) -> Result<String, String> {
    let (media_type, parameter) = content_type
        .split_once(';')
        .ok_or_else(|| format!("{content_type:?} has no boundary parameter"))?;
    if !media_type
        .trim()
        .eq_ignore_ascii_case("multipart/byteranges")
    {
        return Err(format!(
            "expected multipart/byteranges, got {content_type:?}"
        ));
    }
    let boundary = parameter
        .trim()
        .strip_prefix("boundary=")
        .ok_or_else(|| format!("{content_type:?} has no boundary parameter"))?
        .trim_matches('"');
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(format!("boundary {boundary:?} is not 1 to 70 characters"));
    }
    Ok(boundary.to_string())
}

/// Builds the exact `multipart/byteranges` body. Each part opens with CRLF, the delimiter, its
/// `Content-Type` and `Content-Range`, and the body ends with the close delimiter and CRLF.
fn multipart_bytes(
    boundary: &str,
    content_type: &str,
    file: &[u8],
    ranges: &[(usize, usize)],
) -> Vec<u8> {
    let mut body = Vec::new();
    for &(start, end) in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {start}-{end}/{}\r\n\r\n",
            file.len()
        );
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&file[start..=end]);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// Shows bytes as text, cut to 600 characters so one failure stays readable.
fn lossy(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 600 {
        format!(
            "{}... ({} bytes)",
            text.chars().take(600).collect::<String>(),
            bytes.len()
        )
    } else {
        text.into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------------------------

/// Go's `ParseRange` table: (header value, file size, our outcome).
fn go_parse_range_rows(lib: &Library) -> Vec<Case> {
    let (t, e, z, k, b) = (&lib.ten, &lib.eleven, &lib.empty, &lib.kilo, &lib.big);
    let row = |value: &str, video| {
        get(
            &format!("go ParseRange {value:?} on {} bytes", video_size(video)),
            video,
            &[],
        )
        .header(format!("Range: {value}"))
    };
    vec![
        // Go returns no ranges for these: malformed or on an empty file, so we send 200.
        row("", z).whole(),
        row("", k).whole(),
        row("foo", z).whole(),
        row("bytes=", z).whole(),
        row("bytes=7", t).whole(),
        row("bytes= 7 ", t).whole(),
        row("bytes=1-", z).whole(),
        row("bytes=5-4", t).whole(),
        row("bytes=0-2,5-4", t).whole(),
        row("bytes=2-5,4-3", t).whole(),
        row("bytes=--5,4--3", t).whole(),
        row("bytes=A-", t).whole(),
        row("bytes=A- ", t).whole(),
        row("bytes=A-Z", t).whole(),
        row("bytes= -Z", t).whole(),
        row("bytes=5-Z", t).whole(),
        row("bytes=Ran-dom, garbage", t).whole(),
        row("bytes=0x01-0x02", t).whole(),
        row("bytes=         ", t).whole(),
        row("bytes= , , ,   ", t).whole(),
        // Satisfiable rows.
        row("bytes=0-9", t).partial(0, 9),
        row("bytes=0-", t).partial(0, 9),
        row("bytes=5-", t).partial(5, 9),
        row("bytes=0-20", t).partial(0, 9),
        // Go rejects the whole header; we drop the unsatisfiable spec and serve the other.
        row("bytes=15-,0-5", t).partial(0, 5),
        row("bytes=1-2,5-", t).parts(&[(1, 2), (5, 9)]),
        // Go keeps 9-10 and 7-10 apart; we merge the overlap into one range.
        row("bytes=-2 , 7-", e).partial(7, 10),
        row("bytes=0-0 ,2-2, 7-", e).parts(&[(0, 0), (2, 2), (7, 10)]),
        row("bytes=-5", t).partial(5, 9),
        row("bytes=-15", t).partial(0, 9),
        row("bytes=0-499", b).partial(0, 499),
        row("bytes=500-999", b).partial(500, 999),
        row("bytes=-500", b).partial(9500, 9999),
        row("bytes=9500-", b).partial(9500, 9999),
        row("bytes=0-0,-1", b).parts(&[(0, 0), (9999, 9999)]),
        // Go keeps adjacent and overlapping ranges apart; we merge them.
        row("bytes=500-600,601-999", b).partial(500, 999),
        row("bytes=500-700,601-999", b).partial(500, 999),
        row("bytes=   1 -2   ,  4- 5, 7 - 8 , ,,", e).parts(&[(1, 2), (4, 5), (7, 8)]),
    ]
}

fn video_size(video: &Video) -> usize {
    video.size()
}

/// Go's `TestServeFileRejectsInvalidSuffixLengths`, on the 10-byte file. Go sends 416 for the
/// malformed values and an empty 206 for `bytes=-0`, where this server sends 200 and 416.
fn go_suffix_rows(lib: &Library) -> Vec<Case> {
    let t = &lib.ten;
    let row = |value: &str| {
        get(&format!("go invalid suffix {value:?}"), t, &[]).header(format!("Range: {value}"))
    };
    vec![
        row("bytes=--6").whole(),
        row("bytes=--0").whole(),
        row("bytes=---0").whole(),
        row("bytes=-6").partial(4, 9),
        row("bytes=6-").partial(6, 9),
        row("bytes=-6-").whole(),
        row("bytes=-0").unsatisfiable(),
        row("bytes=").whole(),
    ]
}

/// This server's own range rules.
fn range_rule_rows(lib: &Library) -> Vec<Case> {
    let (t, z, b) = (&lib.ten, &lib.empty, &lib.big);
    let row = |label: &str, video, value: &str| {
        get(&format!("range {label}: {value:?}"), video, &[]).header(format!("Range: {value}"))
    };
    let sixteen: Vec<String> = (0..16).map(|i| format!("{0}-{0}", i * 10)).collect();
    let seventeen: Vec<String> = (0..17).map(|i| format!("{0}-{0}", i * 10)).collect();
    let sixteen_parts: Vec<(usize, usize)> = (0..16).map(|i| (i * 10, i * 10)).collect();
    vec![
        row("start at the size", t, "bytes=10-").unsatisfiable(),
        row("every start past the end", t, "bytes=10-,20-").unsatisfiable(),
        row("start past the end", t, "bytes=11-20").unsatisfiable(),
        row("largest start", t, "bytes=18446744073709551615-").unsatisfiable(),
        row("last byte", t, "bytes=9-9").partial(9, 9),
        row("zero suffix beside a range", t, "bytes=-0,0-1").partial(0, 1),
        row("empty file, first byte", z, "bytes=0-0").whole(),
        row("empty file, suffix", z, "bytes=-1").whole(),
        row("empty file, zero suffix", z, "bytes=-0").whole(),
        row("empty file, open start past the end", z, "bytes=10-").whole(),
        row("sum above the size", t, "bytes=0-5,5-9").whole(),
        row("same open range twice", t, "bytes=0-,0-").whole(),
        row("adjacent halves merge", t, "bytes=0-4,5-9").partial(0, 9),
        row("duplicate merges", t, "bytes=0-1,0-1").partial(0, 1),
        row("sorted parts", t, "bytes=6-9,0-1,3-4").parts(&[(0, 1), (3, 4), (6, 9)]),
        row("overlap merged among parts", t, "bytes=0-3,2-5,8-9").parts(&[(0, 5), (8, 9)]),
        row("touching singles merge", t, "bytes=4-4,3-3,5-5").partial(3, 5),
        row(
            "max_ranges parts",
            b,
            &format!("bytes={}", sixteen.join(",")),
        )
        .parts(&sixteen_parts),
        row(
            "over max_ranges",
            b,
            &format!("bytes={}", seventeen.join(",")),
        )
        .whole(),
        row("other unit", t, "items=0-1").whole(),
        row("unit in capitals", t, "BYTES=0-1").partial(0, 1),
        row("end overflows u64", t, "bytes=0-18446744073709551616").whole(),
        row("semicolon separator", t, "bytes=0-1;3-4").whole(),
        row("empty list element", t, "bytes=0-1,,3-4").parts(&[(0, 1), (3, 4)]),
        row("tab before a spec", t, "bytes=0-1,\t3-4").parts(&[(0, 1), (3, 4)]),
        row("sign", t, "bytes=+1-2").whole(),
        row("zero suffix after the whole file", t, "bytes=0-9,-0").partial(0, 9),
        row(
            "a thousand specs",
            t,
            &format!("bytes={}", vec!["0-0"; 1000].join(",")),
        )
        .whole(),
        get("range lowercase header name", t, &["range: bytes=0-1"]).partial(0, 1),
        get("range capitals header name", t, &["RANGE: bytes=8-"]).partial(8, 9),
    ]
}

/// Go's `TestServeContent` cases, named as there, with our validators.
fn go_serve_content_rows(lib: &Library) -> Vec<Case> {
    let (t, e) = (&lib.ten, &lib.eleven);
    let row = |name: &str, video| get(&format!("go ServeContent {name}"), video, &[]);
    let other_case_etag = swap_case(&t.etag);
    assert_ne!(
        other_case_etag, t.etag,
        "setup: the ETag {} has no letter to change the case of",
        t.etag
    );
    vec![
        row("with_last_modified", t).whole(),
        row("not_modified_modtime", t)
            .header(format!("If-Modified-Since: {MODIFIED_DATE}"))
            .not_modified(),
        row("not_modified_etag", t)
            .header(format!("If-None-Match: {}", t.etag))
            .not_modified(),
        row("not_modified_etag_no_seek (weak comparison)", t)
            .header(format!("If-None-Match: \"baz\", W/{}", t.etag))
            .not_modified(),
        row("if_none_match_mismatch (case differs)", t)
            .header(format!("If-None-Match: {other_case_etag}"))
            .whole(),
        row("if_none_match_malformed", t)
            .header("If-None-Match: ,".into())
            .whole(),
        row("range_good", t)
            .header("Range: bytes=0-4".into())
            .partial(0, 4),
        row("range_match", t)
            .header("Range: bytes=0-4".into())
            .header(format!("If-Range: {}", t.etag))
            .partial(0, 4),
        row("range_match_weak_etag", t)
            .header("Range: bytes=0-4".into())
            .header(format!("If-Range: W/{}", t.etag))
            .whole(),
        row("range_no_overlap", t)
            .header("Range: bytes=10-20".into())
            .unsatisfiable(),
        row("range_no_match", t)
            .header("Range: bytes=0-4".into())
            .header("If-Range: \"B\"".into())
            .whole(),
        row("range_with_modtime", t)
            .header("Range: bytes=0-4".into())
            .header(format!("If-Range: {MODIFIED_DATE}"))
            .partial(0, 4),
        row("range_with_modtime_mismatch", t)
            .header("Range: bytes=0-4".into())
            .header("If-Range: Wed, 25 Jun 2014 17:12:19 GMT".into())
            .whole(),
        row("range_with_modtime_nanos", e)
            .header("Range: bytes=0-4".into())
            .header(format!("If-Range: {MODIFIED_DATE}"))
            .partial(0, 4),
        // Go leaves Last-Modified out for a zero time; we send the epoch date.
        row("unix_zero_modtime", &lib.epoch).whole(),
        row("ifmatch_matches", t)
            .header(format!("If-Match: \"Z\", {}", t.etag))
            .whole(),
        row("ifmatch_star", t).header("If-Match: *".into()).whole(),
        row("ifmatch_failed", t)
            .header("If-Match: \"B\"".into())
            .precondition_failed(),
        row("ifmatch_fails_on_weak_etag", t)
            .header(format!("If-Match: W/{}", t.etag))
            .precondition_failed(),
        row("if_unmodified_since_true", t)
            .header(format!("If-Unmodified-Since: {MODIFIED_DATE}"))
            .whole(),
        row("if_unmodified_since_false", t)
            .header("If-Unmodified-Since: Wed, 25 Jun 2014 17:12:16 GMT".into())
            .precondition_failed(),
    ]
}

/// Further precondition rows: date formats, lists, and the order of RFC 9110 §13.2.2.
fn conditional_rows(lib: &Library) -> Vec<Case> {
    let t = &lib.ten;
    let row = |name: &str| get(&format!("conditional {name}"), t, &[]);
    let etag = &t.etag;
    vec![
        row("modified since a second earlier")
            .header("If-Modified-Since: Wed, 25 Jun 2014 17:12:17 GMT".into())
            .whole(),
        row("not modified since an hour later")
            .header("If-Modified-Since: Wed, 25 Jun 2014 18:12:18 GMT".into())
            .not_modified(),
        row("invalid If-Modified-Since ignored")
            .header("If-Modified-Since: yesterday".into())
            .whole(),
        // httpdate rejects a weekday that does not fit the date (25 Jun 2014 was a Wednesday),
        // so the header is ignored. Go's time.Parse ignores the weekday and would send 304.
        row("If-Modified-Since with a wrong weekday ignored")
            .header("If-Modified-Since: Thu, 25 Jun 2014 17:12:18 GMT".into())
            .whole(),
        row("If-Modified-Since in the future")
            .header("If-Modified-Since: Thu, 25 Jun 2099 17:12:18 GMT".into())
            .not_modified(),
        row("If-Modified-Since in RFC 850 form")
            .header("If-Modified-Since: Wednesday, 25-Jun-14 17:12:18 GMT".into())
            .not_modified(),
        row("If-Modified-Since in asctime form")
            .header("If-Modified-Since: Wed Jun 25 17:12:18 2014".into())
            .not_modified(),
        row("If-None-Match star")
            .header("If-None-Match: *".into())
            .not_modified(),
        row("If-None-Match without quotes")
            .header(format!("If-None-Match: {}", etag.trim_matches('"')))
            .whole(),
        row("modified since with Range")
            .header("If-Modified-Since: Wed, 25 Jun 2014 17:12:17 GMT".into())
            .header("Range: bytes=0-4".into())
            .partial(0, 4),
        row("not modified since beats Range")
            .header(format!("If-Modified-Since: {MODIFIED_DATE}"))
            .header("Range: bytes=0-4".into())
            .not_modified(),
        row("If-None-Match weak form of the tag")
            .header(format!("If-None-Match: W/{etag}"))
            .not_modified(),
        row("If-None-Match list without the tag")
            .header("If-None-Match: \"a\", \"b\"".into())
            .whole(),
        row("If-None-Match list with the tag last")
            .header(format!("If-None-Match: \"a\",{etag}"))
            .not_modified(),
        row("blank If-None-Match counts as absent")
            .header("If-None-Match: ".into())
            .whole(),
        row("If-None-Match mismatch outranks If-Modified-Since")
            .header("If-None-Match: \"a\"".into())
            .header(format!("If-Modified-Since: {MODIFIED_DATE}"))
            .whole(),
        row("If-None-Match match beats Range")
            .header(format!("If-None-Match: {etag}"))
            .header("Range: bytes=0-4".into())
            .not_modified(),
        row("failed If-Match beats matching If-None-Match")
            .header("If-Match: \"x\"".into())
            .header(format!("If-None-Match: {etag}"))
            .precondition_failed(),
        row("matching If-Match skips If-Unmodified-Since")
            .header(format!("If-Match: {etag}"))
            .header("If-Unmodified-Since: Wed, 25 Jun 2014 17:12:16 GMT".into())
            .whole(),
        row("matching If-Match with Range")
            .header(format!("If-Match: {etag}"))
            .header("Range: bytes=0-4".into())
            .partial(0, 4),
        row("failed If-Match with Range")
            .header("If-Match: \"x\"".into())
            .header("Range: bytes=0-4".into())
            .precondition_failed(),
        row("If-Match reads no tag after garbage")
            .header(format!("If-Match: garbage, {etag}"))
            .precondition_failed(),
        row("If-Match without quotes")
            .header(format!("If-Match: {}", etag.trim_matches('"')))
            .precondition_failed(),
        row("unmodified since an hour later")
            .header("If-Unmodified-Since: Wed, 25 Jun 2014 18:12:18 GMT".into())
            .whole(),
        row("invalid If-Unmodified-Since ignored")
            .header("If-Unmodified-Since: soon".into())
            .whole(),
        row("failed If-Unmodified-Since beats matching If-None-Match")
            .header("If-Unmodified-Since: Wed, 25 Jun 2014 17:12:16 GMT".into())
            .header(format!("If-None-Match: {etag}"))
            .precondition_failed(),
        row("If-Range without Range")
            .header(format!("If-Range: {etag}"))
            .whole(),
        row("If-Range date in RFC 850 form")
            .header("Range: bytes=0-4".into())
            .header("If-Range: Wednesday, 25-Jun-14 17:12:18 GMT".into())
            .partial(0, 4),
        row("If-Range date in asctime form")
            .header("Range: bytes=0-4".into())
            .header("If-Range: Wed Jun 25 17:12:18 2014".into())
            .partial(0, 4),
        row("If-Range list is not one tag")
            .header("Range: bytes=0-4".into())
            .header(format!("If-Range: \"x\", {etag}"))
            .whole(),
        row("If-Range invalid date")
            .header("Range: bytes=0-4".into())
            .header("If-Range: tomorrow".into())
            .whole(),
        row("If-Range match with several ranges")
            .header("Range: bytes=1-2,5-".into())
            .header(format!("If-Range: {etag}"))
            .parts(&[(1, 2), (5, 9)]),
        row("If-Range match with an unsatisfiable range")
            .header("Range: bytes=10-".into())
            .header(format!("If-Range: {etag}"))
            .unsatisfiable(),
        row("If-Range mismatch with an unsatisfiable range")
            .header("Range: bytes=10-".into())
            .header("If-Range: \"x\"".into())
            .whole(),
        get(
            "conditional epoch file not modified since the epoch",
            &lib.epoch,
            &["If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
        )
        .not_modified(),
    ]
}

/// Targets, routing errors and a preflight without CORS.
fn target_rows(lib: &Library, site: &Site) -> Vec<Case> {
    let t = &lib.ten;
    let media = vec!["GET", "HEAD", "OPTIONS"];
    vec![
        get("query string ignored", t, &[])
            .target("/videos/ten.mp4?x=1&y=2")
            .whole(),
        get("empty query ignored", t, &[])
            .target("/videos/ten.mp4?")
            .whole(),
        get("query naming another file ignored", t, &[])
            .target("/videos/ten.mp4?id=eleven.mp4")
            .whole(),
        get("query is not a Range", t, &[])
            .target("/videos/ten.mp4?range=bytes%3D0-1")
            .whole(),
        get("query with Range", t, &["Range: bytes=0-1"])
            .target("/videos/ten.mp4?v=2")
            .partial(0, 1),
        get("query keeps the ETag", t, &[])
            .target("/videos/ten.mp4?v=2")
            .header(format!("If-None-Match: {}", t.etag))
            .not_modified(),
        get("percent-encoded dot", t, &[])
            .target("/videos/ten%2Emp4")
            .whole(),
        get("absolute-form target", t, &[])
            .target("http://t/videos/ten.mp4")
            .whole(),
        ask("missing video", site, "GET", "/videos/missing.mp4", &[]).error(404, "video_not_found"),
        ask(
            "missing video with Range",
            site,
            "GET",
            "/videos/missing.mp4",
            &["Range: bytes=0-1"],
        )
        .error(404, "video_not_found"),
        // RFC 9110 §13.2.1: preconditions are ignored when the answer without them is not 2xx.
        ask(
            "If-Match star on a missing video",
            site,
            "GET",
            "/videos/missing.mp4",
            &["If-Match: *"],
        )
        .error(404, "video_not_found"),
        ask("unknown route", site, "GET", "/video/ten.mp4", &[]).error(404, "route_not_found"),
        ask(
            "id escaping the folder",
            site,
            "GET",
            "/videos/..%2Fconf.json",
            &[],
        )
        .error(400, "invalid_id"),
        ask("hidden id", site, "GET", "/videos/.ten.mp4", &[]).error(400, "invalid_id"),
        ask("POST to a video", site, "POST", "/videos/ten.mp4", &[])
            .error(405, "method_not_allowed")
            .with("allow", Expect::Tokens(media.clone())),
        ask(
            "OPTIONS without CORS",
            site,
            "OPTIONS",
            "/videos/ten.mp4",
            &[],
        )
        .no_content(media)
        .with("access-control-allow-methods", Expect::Absent),
    ]
}

fn swap_case(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

#[test]
fn range_and_precondition_table() {
    let server = TestServer::start_on_env_backend(json!({}));
    let site = Site {
        cache_control: DEFAULT_CACHE_CONTROL.to_string(),
        cors: false,
    };
    let lib = stock(&server, &site);
    assert_eq!(
        lib.ten.last_modified, MODIFIED_DATE,
        "setup: Last-Modified of ten.mp4"
    );
    assert_eq!(
        lib.eleven.last_modified, MODIFIED_DATE,
        "setup: Last-Modified of eleven.mp4"
    );
    assert_eq!(
        lib.epoch.last_modified, "Thu, 01 Jan 1970 00:00:00 GMT",
        "setup: Last-Modified of epoch.mp4"
    );

    let mut cases = go_parse_range_rows(&lib);
    cases.extend(go_suffix_rows(&lib));
    cases.extend(range_rule_rows(&lib));
    cases.extend(go_serve_content_rows(&lib));
    cases.extend(conditional_rows(&lib));
    cases.extend(target_rows(&lib, &site));
    assert!(cases.len() >= 70, "the table has only {} rows", cases.len());

    run_table(&server, &cases);
}

#[test]
fn cors_cache_control_and_max_ranges_table() {
    let server = TestServer::start_on_env_backend(json!({
        "cors_allow_origins": [ALLOWED_ORIGIN],
        "cache_control": "no-cache",
        "max_ranges": 2,
    }));
    let site = Site {
        cache_control: "no-cache".to_string(),
        cors: true,
    };
    let t = store(
        &server,
        &site,
        "ten.mp4",
        b"0123456789".to_vec(),
        at(MODIFIED_SECS, 0),
    );

    let origin = format!("Origin: {ALLOWED_ORIGIN}");
    let origin = origin.as_str();
    let exposed = Expect::Tokens(vec![
        "Content-Range",
        "Content-Length",
        "Accept-Ranges",
        "ETag",
    ]);
    let allowed = |case: Case| {
        case.with("access-control-allow-origin", exact(ALLOWED_ORIGIN))
            .with("access-control-expose-headers", exposed.clone())
    };
    let preflight = |label: &str, target: &str, origin: &str| {
        ask(label, &site, "OPTIONS", target, &[])
            .header(format!("Origin: {origin}"))
            .header("Access-Control-Request-Method: GET".into())
            .header("Access-Control-Request-Headers: range, if-none-match".into())
    };
    let media = vec!["GET", "HEAD", "OPTIONS"];

    let cases = vec![
        allowed(get("cors allowed origin", &t, &[origin]).whole()),
        get("cors other origin", &t, &["Origin: https://other.example"]).whole(),
        get("cors no origin", &t, &[]).whole(),
        allowed(
            get(
                "cors allowed origin with Range",
                &t,
                &[origin, "Range: bytes=0-4"],
            )
            .partial(0, 4),
        ),
        allowed(
            get("cors allowed origin 304", &t, &[origin])
                .header(format!("If-None-Match: {}", t.etag))
                .not_modified(),
        ),
        allowed(get("cors allowed origin 416", &t, &[origin, "Range: bytes=10-"]).unsatisfiable()),
        allowed(
            get("cors allowed origin 412", &t, &[origin, "If-Match: \"x\""]).precondition_failed(),
        ),
        allowed(
            ask(
                "cors allowed origin 404",
                &site,
                "GET",
                "/videos/missing.mp4",
                &[origin],
            )
            .error(404, "video_not_found"),
        ),
        get("max_ranges 2 allows two", &t, &["Range: bytes=0-0,2-2"]).parts(&[(0, 0), (2, 2)]),
        get(
            "max_ranges 2 refuses three",
            &t,
            &["Range: bytes=0-0,2-2,4-4"],
        )
        .whole(),
        get(
            "max_ranges 2 counts unsatisfiable specs",
            &t,
            &["Range: bytes=0-0,2-2,20-"],
        )
        .whole(),
        get(
            "max_ranges 2 after merging to one",
            &t,
            &["Range: bytes=0-1,1-2"],
        )
        .partial(0, 2),
        preflight(
            "preflight allowed origin",
            "/videos/ten.mp4",
            ALLOWED_ORIGIN,
        )
        .no_content(media.clone())
        .with("access-control-allow-origin", exact(ALLOWED_ORIGIN))
        .with(
            "access-control-allow-methods",
            Expect::Tokens(media.clone()),
        )
        .with(
            "access-control-allow-headers",
            Expect::Tokens(vec![
                "Range",
                "If-Range",
                "If-None-Match",
                "If-Modified-Since",
            ]),
        )
        .with("access-control-max-age", Expect::Present)
        .ignoring("access-control-expose-headers"),
        preflight(
            "preflight other origin",
            "/videos/ten.mp4",
            "https://other.example",
        )
        .no_content(media)
        .with("access-control-allow-methods", Expect::Absent)
        .with("access-control-allow-headers", Expect::Absent),
        preflight("preflight for an upload", "/upload/new.mp4", ALLOWED_ORIGIN)
            .no_content(vec!["POST", "OPTIONS"])
            .with("access-control-allow-origin", exact(ALLOWED_ORIGIN))
            .with(
                "access-control-allow-methods",
                Expect::Tokens(vec!["POST", "OPTIONS"]),
            )
            .ignoring("access-control-expose-headers"),
    ];

    run_table(&server, &cases);
}

// ---------------------------------------------------------------------------------------------
// Keep-alive and pipelining
// ---------------------------------------------------------------------------------------------

fn send(stream: &mut TcpStream, method: &str, target: &str, headers: &[&str]) {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    stream
        .write_all(request_text(method, target, &headers, false).as_bytes())
        .unwrap();
}

/// Reads one response and checks its status and that it keeps the connection open.
fn expect_answer(stream: &mut TcpStream, label: &str, head_only: bool, status: u16) -> Response {
    let response = read_response(stream, head_only)
        .unwrap_or_else(|e| panic!("[{label}] no complete response: {e}"));
    assert_eq!(
        response.status,
        status,
        "[{label}] status; body {:?}",
        lossy(&response.body)
    );
    assert_ne!(
        response.header("connection"),
        Some("close"),
        "[{label}] the server closes the connection"
    );
    response
}

/// Sends a ranged GET on a used connection and checks the response.
fn expect_next_request_works(stream: &mut TcpStream, label: &str) {
    send(stream, "GET", "/videos/ten.mp4", &["Range: bytes=0-1"]);
    let response = expect_answer(stream, &format!("request after {label}"), false, 206);
    assert_eq!(response.body, b"01", "[request after {label}] body");
}

#[test]
fn keep_alive_after_each_answer_kind() {
    let server = TestServer::start_on_env_backend(json!({}));
    let site = Site {
        cache_control: DEFAULT_CACHE_CONTROL.to_string(),
        cors: false,
    };
    let t = store(
        &server,
        &site,
        "ten.mp4",
        b"0123456789".to_vec(),
        at(MODIFIED_SECS, 0),
    );
    let if_none_match = format!("If-None-Match: {}", t.etag);

    let kinds: Vec<(&str, &str, &str, Vec<&str>, u16)> = vec![
        ("200 to HEAD", "HEAD", "/videos/ten.mp4", vec![], 200),
        (
            "304",
            "GET",
            "/videos/ten.mp4",
            vec![if_none_match.as_str()],
            304,
        ),
        (
            "304 to HEAD",
            "HEAD",
            "/videos/ten.mp4",
            vec![if_none_match.as_str()],
            304,
        ),
        ("404", "GET", "/videos/missing.mp4", vec![], 404),
        ("404 to HEAD", "HEAD", "/videos/missing.mp4", vec![], 404),
        ("400", "GET", "/videos/.hidden", vec![], 400),
        ("405", "POST", "/videos/ten.mp4", vec![], 405),
        (
            "412",
            "GET",
            "/videos/ten.mp4",
            vec!["If-Match: \"x\""],
            412,
        ),
        (
            "416",
            "GET",
            "/videos/ten.mp4",
            vec!["Range: bytes=10-"],
            416,
        ),
        (
            "416 to HEAD",
            "HEAD",
            "/videos/ten.mp4",
            vec!["Range: bytes=10-"],
            416,
        ),
        (
            "multipart 206",
            "GET",
            "/videos/ten.mp4",
            vec!["Range: bytes=0-0,5-5"],
            206,
        ),
        (
            "200 of an empty file",
            "GET",
            "/videos/empty.mp4",
            vec![],
            200,
        ),
    ];
    server.put_video("empty.mp4", b"");

    let mut stream = server.connect();
    for (label, method, target, headers, status) in &kinds {
        send(&mut stream, method, target, headers);
        expect_answer(&mut stream, label, *method == "HEAD", *status);
        expect_next_request_works(&mut stream, label);
    }

    let mut old = server.connect();
    old.write_all(b"GET /videos/ten.mp4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let response = read_response(&mut old, false).expect("HTTP/1.0 keep-alive answer");
    assert_eq!(response.status, 200, "[HTTP/1.0 keep-alive] status");
    assert_eq!(
        response.header("connection"),
        Some("keep-alive"),
        "[HTTP/1.0 keep-alive] Connection header"
    );
    assert_eq!(response.body, b"0123456789", "[HTTP/1.0 keep-alive] body");
    old.write_all(b"GET /videos/ten.mp4 HTTP/1.0\r\nRange: bytes=8-\r\n\r\n")
        .unwrap();
    let response = read_response(&mut old, false).expect("second HTTP/1.0 answer");
    assert_eq!(response.status, 206, "[HTTP/1.0 second request] status");
    assert_eq!(response.body, b"89", "[HTTP/1.0 second request] body");
}

/// Starts an upload whose body never completes, so it keeps the only limiter token busy. Its
/// `Expect: 100-continue` makes the server send `100 Continue` once the upload handler runs,
/// which proves the upload has the token. The server drops a token only after writing the
/// response, so the previous request may still have it, and a 429 is retried for up to 5 s.
fn hold_only_token(server: &TestServer) -> TcpStream {
    let request = "POST /upload/slow.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 90\r\nExpect: 100-continue\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut holder = server.connect();
        holder.write_all(request.as_bytes()).unwrap();
        let head = read_head_text(&mut holder);
        if head.starts_with("HTTP/1.1 100 ") {
            holder.write_all(b"--B\r\n").unwrap();
            return holder;
        }
        assert!(
            head.starts_with("HTTP/1.1 429 ") && Instant::now() < deadline,
            "[token holder] expected 100 Continue, got {head:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a response head up to its blank line, without skipping a `100 Continue`.
fn read_head_text(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .unwrap_or_else(|e| panic!("reading a response head: {e}"));
        assert_eq!(
            n,
            1,
            "the connection closed inside a response head: {}",
            lossy(&head)
        );
        head.push(byte[0]);
    }
    lossy(&head)
}

#[test]
fn keep_alive_after_429_and_413() {
    // The limit leaves room for the upload that stores ten.mp4 on S3 (about 150 bytes).
    let server =
        TestServer::start_on_env_backend(json!({ "max_conns": 1, "max_upload_bytes": 300 }));
    server.put_video("ten.mp4", b"0123456789");
    let holder = hold_only_token(&server);

    let mut stream = server.connect();
    send(&mut stream, "GET", "/videos/ten.mp4", &[]);
    let rejected = read_response(&mut stream, false).expect("a response while the token is in use");
    assert_eq!(
        rejected.status, 429,
        "[429] status while the upload holds the token"
    );
    assert!(rejected.header("retry-after").is_some(), "[429] Retry-After");
    assert_ne!(
        rejected.header("connection"),
        Some("close"),
        "[429] the server closes the connection"
    );

    send(&mut stream, "HEAD", "/videos/ten.mp4", &[]);
    let again = read_response(&mut stream, true).expect("[request after 429] an answer");
    assert_eq!(
        again.status, 429,
        "[request after 429] status while the token is still held"
    );

    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        send(&mut stream, "GET", "/videos/ten.mp4", &["Range: bytes=0-1"]);
        let response = read_response(&mut stream, false).expect("[request after 429] an answer");
        if response.status != 429 || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        served.status, 206,
        "[request after 429] status once the token is free"
    );
    assert_eq!(served.body, b"01", "[request after 429] body");

    // A declared length over max_upload_bytes: 413 before the body is read, then the small
    // body is drained and the connection carries the next request.
    let body = common::multipart_body("B", "file", "a.mp4", &[b'x'; 400]);
    let mut upload = format!(
        "POST /upload/large.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    upload.extend_from_slice(&body);
    stream.write_all(&upload).unwrap();
    let too_large = expect_answer(&mut stream, "413", false, 413);
    assert_eq!(
        too_large.error_code(),
        "upload_too_large",
        "[413] error code"
    );
    expect_next_request_works(&mut stream, "413");
    assert!(
        !server.object_path("large.mp4").exists(),
        "[413] the upload was stored"
    );
}

#[test]
fn pipelined_requests_answer_in_order() {
    let server = TestServer::start_on_env_backend(json!({}));
    let site = Site {
        cache_control: DEFAULT_CACHE_CONTROL.to_string(),
        cors: false,
    };
    let t = store(
        &server,
        &site,
        "ten.mp4",
        b"0123456789".to_vec(),
        at(MODIFIED_SECS, 0),
    );

    let requests = [
        request_text(
            "GET",
            "/videos/ten.mp4",
            &["Range: bytes=0-1".into()],
            false,
        ),
        request_text("HEAD", "/videos/ten.mp4", &[], false),
        request_text(
            "GET",
            "/videos/ten.mp4",
            &[format!("If-None-Match: {}", t.etag)],
            false,
        ),
        request_text("GET", "/videos/missing.mp4", &[], false),
        request_text(
            "GET",
            "/videos/ten.mp4",
            &["Range: bytes=1-2,5-".into()],
            false,
        ),
        request_text(
            "GET",
            "/videos/ten.mp4",
            &["Range: bytes=10-".into()],
            false,
        ),
        request_text("GET", "/videos/ten.mp4?last=1", &[], true),
    ];
    let mut stream = server.connect();
    stream.write_all(requests.concat().as_bytes()).unwrap();

    let mut next = |label: &str, head_only: bool| {
        read_response(&mut stream, head_only)
            .unwrap_or_else(|e| panic!("[pipelined {label}] no response: {e}"))
    };
    let first = next("range", false);
    assert_eq!(
        (first.status, first.body.as_slice()),
        (206, &b"01"[..]),
        "[pipelined range]"
    );
    let head = next("HEAD", true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("10")),
        "[pipelined HEAD]"
    );
    let not_modified = next("304", false);
    assert_eq!(not_modified.status, 304, "[pipelined 304]");
    let missing = next("404", false);
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "video_not_found".to_string()),
        "[pipelined 404]"
    );
    let multi = next("multipart", false);
    assert_eq!(multi.status, 206, "[pipelined multipart] status");
    let boundary = boundary_of(multi.header("content-type").unwrap_or(""))
        .expect("[pipelined multipart] boundary");
    let expected = multipart_bytes(&boundary, "video/mp4", b"0123456789", &[(1, 2), (5, 9)]);
    assert_eq!(
        lossy(&multi.body),
        lossy(&expected),
        "[pipelined multipart] body"
    );
    let unsatisfiable = next("416", false);
    assert_eq!(unsatisfiable.status, 416, "[pipelined 416]");
    let last = next("last", false);
    assert_eq!(
        (last.status, last.body.as_slice()),
        (200, &b"0123456789"[..]),
        "[pipelined last]"
    );
    assert_eq!(
        last.header("connection"),
        Some("close"),
        "[pipelined last] Connection"
    );

    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(lossy(&rest), "", "[pipelined] bytes after the last answer");
}

/// RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request that lacks `Host`, carries
/// more than one `Host` line, or carries an invalid `Host` value. HTTP/1.0 requests need none.
#[test]
fn host_header_rules() {
    let server = TestServer::start_on_env_backend(json!({}));
    server.put_video("ten.mp4", b"0123456789");

    let cases: [(&str, &str, u16); 4] = [
        (
            "HTTP/1.1 without Host",
            "GET /videos/ten.mp4 HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.1 with two Host lines",
            "GET /videos/ten.mp4 HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.1 with an invalid Host",
            "GET /videos/ten.mp4 HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.0 without Host",
            "GET /videos/ten.mp4 HTTP/1.0\r\n\r\n",
            200,
        ),
    ];
    let mut failures = Failures::default();
    for (label, request, status) in cases {
        let response = server.exchange(request.as_bytes());
        if response.status != status {
            failures.note(
                label,
                format!(
                    "status: expected {status}, got {} with body {:?}",
                    response.status,
                    lossy(&response.body)
                ),
            );
        }
    }
    failures.assert_none(cases.len());
}

/// RFC 9110 §8.8.2.1: `Last-Modified` must not be later than `Date`. A file modified in the
/// future, by the server's clock, is sent with the `Date` value instead.
#[test]
fn future_modification_time_is_capped() {
    let server = TestServer::start_on_env_backend(json!({}));
    let site = Site {
        cache_control: DEFAULT_CACHE_CONTROL.to_string(),
        cors: false,
    };
    // 2099-01-01T00:00:00Z.
    let video = store(
        &server,
        &site,
        "future.mp4",
        b"0123456789".to_vec(),
        at(4_070_908_800, 0),
    );

    let (response, _) = exchange(&server, "HEAD", &video.path(), &[]).expect("HEAD of future.mp4");
    let date = response
        .header("date")
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let last_modified = response
        .header("last-modified")
        .and_then(|v| httpdate::parse_http_date(v).ok());

    assert!(
        date.is_some(),
        "[future mtime] Date {:?} is not an HTTP-date",
        response.header("date")
    );
    assert!(
        last_modified.is_some(),
        "[future mtime] Last-Modified {:?} is not an HTTP-date",
        response.header("last-modified")
    );
    assert!(
        last_modified <= date,
        "[future mtime] Last-Modified {:?} is later than Date {:?}",
        response.header("last-modified"),
        response.header("date")
    );
}
