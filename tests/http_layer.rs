//! The HTTP/1.1 layer, tested against the real binary over raw loopback sockets.
//!
//! Behaviours covered:
//! - a `Content-Length: 100000000000` request on every route gets its complete response, the
//!   connection closes when the handler did not read the body, and the process serves on;
//! - 2,000 idle connections cost no thread, do not delay a 1 MB download, and are closed by
//!   the server after `idle_timeout_secs`;
//! - a head trickled one byte at a time is cut off with 408 after `header_timeout_secs`, and
//!   one that completes in time is served;
//! - a 1 MiB header line and 10,000 small headers get 431, without the server's memory growing;
//! - running out of file descriptors pauses `accept()` and the server recovers once sockets close;
//! - a body the handler did not read (Content-Length, chunked, rejected uploads) is never
//!   parsed as a request, and a declared body the client never sends pins no worker;
//! - keep-alive: sequential and pipelined requests (a pipelined head may end in a later write),
//!   HTTP/1.0 with and without keep-alive, `Connection: close`, and HEAD with GET's headers
//!   and no body;
//! - `Expect: 100-continue`: the interim response arrives at once, an upload over the limit gets
//!   413 without it, and curl's upload does not stall on it;
//! - chunked upload bodies with extensions and trailers store byte-exact, malformed ones get 400;
//! - malformed heads get 400, 505 or 501 as JSON.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{multipart_body, pattern, read_response, Response, TestServer};
use serde_json::{json, Value};

/// The request a client hides in a body, hoping the server parses it as the next request.
const SMUGGLED: &str = "GET /videos/secret.mp4 HTTP/1.1\r\nHost: t\r\n\r\n";

const BOUNDARY: &str = "BOUNDARYxyz";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Connects and writes `bytes` in one call.
fn send(server: &TestServer, bytes: &[u8]) -> TcpStream {
    let mut stream = server.connect();
    stream.write_all(bytes).unwrap();
    stream
}

/// Reads until the server closes the connection, and panics on a read timeout.
fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => bytes,
        Err(e) => {
            panic!("connection did not close ({e}); received so far: {:?}", String::from_utf8_lossy(&bytes))
        }
    }
}

/// Asserts that the server closed the connection after what was read so far.
fn assert_eof(stream: &mut TcpStream, context: &str) {
    let rest = read_to_eof(stream);
    assert!(
        rest.is_empty(),
        "{context}: expected end of stream, got extra bytes {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Asserts that nothing arrives within `wait` and the connection stays open.
fn assert_silent(stream: &mut TcpStream, wait: Duration, context: &str) {
    let saved = stream.read_timeout().unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 256];
    match stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Ok(0) => panic!("{context}: the server closed a connection that should stay open"),
        Ok(n) => panic!("{context}: unexpected bytes {:?}", String::from_utf8_lossy(&byte[..n])),
        Err(e) => panic!("{context}: read failed: {e}"),
    }
    stream.set_read_timeout(saved).unwrap();
}

/// Splits the bytes of a whole connection into responses to non-HEAD requests. Returns them
/// and any bytes left over that do not form a complete response.
fn split_responses(mut bytes: &[u8]) -> (Vec<Response>, Vec<u8>) {
    let mut responses = Vec::new();
    while let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let text = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let mut lines = text.split("\r\n");
        let status: u16 =
            lines.next().unwrap_or("").split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        if bytes.len() < body_start + length {
            break;
        }
        responses.push(Response { status, headers, body: bytes[body_start..body_start + length].to_vec() });
        bytes = &bytes[body_start + length..];
    }
    (responses, bytes.to_vec())
}

/// Builds the exact body of a JSON error response.
fn error_body(code: &str, message: &str) -> Vec<u8> {
    let mut body = serde_json::to_vec(&json!({"error": {"code": code, "message": message}})).unwrap();
    body.push(b'\n');
    body
}

/// Asserts a JSON error response's status, `Content-Type` and exact body.
fn assert_error(response: &Response, status: u16, code: &str, message: &str) {
    assert_eq!(response.status, status, "status; body {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    assert_eq!(response.text(), String::from_utf8(error_body(code, message)).unwrap());
}

/// Asserts a JSON error response's status and code, for messages that quote a parser's words.
fn assert_error_code(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "status; body {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    assert_eq!(response.error_code(), code, "body {}", response.text());
}

fn health_body() -> Vec<u8> {
    b"{\"status\":\"ok\",\"tokens_in_use\":0,\"tokens_total\":20}\n".to_vec()
}

/// Asserts that a fresh connection gets a correct `/healthz` response. The previous request's
/// worker returns its token just after its last byte is written, which a fast client can
/// overtake, so a body showing that token still held is retried for up to two seconds.
fn assert_serving(server: &TestServer, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let response = server.get("/healthz", &[]);
        assert_eq!(response.status, 200, "{context}: /healthz on a new connection: {response:?}");
        if response.body == health_body() || Instant::now() >= deadline {
            assert_eq!(response.body, health_body(), "{context}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upload_head(id: &str, framing: &str, extra: &str) -> String {
    format!(
        "POST /upload/{id} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n{extra}\r\n"
    )
}

fn created_body(id: &str, size: usize) -> Value {
    json!({"id": id, "size": size, "url": format!("/videos/{id}")})
}

/// Reads a numeric field such as `Threads:` or `VmRSS:` (in kB) from `/proc/PID/status`.
fn proc_status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

/// Raises this process's soft `RLIMIT_NOFILE` to `want`. Servers started later inherit it.
fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read or write the local struct only.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur >= want {
            return;
        }
        assert!(
            limit.rlim_max >= want,
            "RLIMIT_NOFILE hard limit {} is below the {want} this test needs; raise it with ulimit -Hn",
            limit.rlim_max
        );
        limit.rlim_cur = want;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit failed");
    }
}

/// Encodes `body` as chunks of the given sizes in turn, with extensions on some size lines,
/// uppercase hex, and a trailer section.
fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut turn = 0;
    while !rest.is_empty() {
        let size = sizes[turn % sizes.len()].min(rest.len());
        let extension = match turn % 3 {
            0 => "",
            1 => ";ext=1",
            _ => ";name=\"quoted value\"",
        };
        out.extend_from_slice(format!("{size:X}{extension}\r\n").as_bytes());
        out.extend_from_slice(&rest[..size]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[size..];
        turn += 1;
    }
    out.extend_from_slice(b"0;last=yes\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Huge Content-Length on every route
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_content_length_on_every_route() {
    let server = TestServer::start(json!({}));
    let video = pattern(64 * 1024);
    server.put_video("a.mp4", &video);
    let test_page = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("upload.html")).unwrap();
    let multipart = format!("Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n");

    // (request line, extra header lines, expected status, expected exact body or None for HEAD)
    let cases: Vec<(&str, &str, u16, Option<Vec<u8>>)> = vec![
        ("GET /videos/a.mp4", "", 200, Some(video.clone())),
        (
            "GET /videos/missing.mp4",
            "",
            404,
            Some(error_body("video_not_found", "video \"missing.mp4\" not found")),
        ),
        ("HEAD /videos/a.mp4", "", 200, None),
        ("HEAD /videos/missing.mp4", "", 404, None),
        (
            "POST /upload/x.mp4",
            &multipart,
            413,
            Some(error_body("upload_too_large", "the upload is larger than the limit of 1073741824 bytes")),
        ),
        ("GET /healthz", "", 200, Some(health_body())),
        ("GET /testpage", "", 200, Some(test_page)),
        (
            "GET /no-such-path",
            "",
            404,
            Some(error_body("route_not_found", "no such endpoint; see the API table in the README")),
        ),
        ("PUT /videos/a.mp4", "", 405, None),
        ("POST /healthz", "", 405, None),
    ];

    for (line, extra, status, body) in cases {
        let mut request =
            format!("{line} HTTP/1.1\r\nHost: t\r\n{extra}Content-Length: 100000000000\r\n\r\n").into_bytes();
        request.extend_from_slice(&[b'x'; 4096]);
        let mut stream = send(&server, &request);

        let response = read_response(&mut stream, line.starts_with("HEAD"))
            .unwrap_or_else(|e| panic!("{line}: no complete response: {e}"));
        assert_eq!(response.status, status, "{line}: {}", response.text());
        assert_eq!(response.header("connection"), Some("close"), "{line}: {:?}", response.headers);
        match body {
            Some(body) => assert!(response.body == body, "{line}: body {:?}", response.text()),
            None if status == 405 => assert_method_not_allowed(&response, line),
            None => assert!(response.body.is_empty(), "{line}"),
        }
        if line == "HEAD /videos/a.mp4" {
            assert_eq!(response.header("content-length"), Some("65536"), "{line}");
        }
        assert_eof(&mut stream, line);

        assert_serving(&server, line);
    }
}

/// Asserts a 405 whose message lists exactly the methods in its `Allow` header.
fn assert_method_not_allowed(response: &Response, line: &str) {
    let allow = response.header("allow").unwrap_or_else(|| panic!("{line}: 405 without Allow"));
    assert!(allow.starts_with("GET, HEAD"), "{line}: Allow: {allow}");
    assert_error(response, 405, "method_not_allowed", &format!("this endpoint accepts only {allow}"));
}

// ---------------------------------------------------------------------------------------------
// 2. Many idle connections
// ---------------------------------------------------------------------------------------------

const IDLE_CONNECTIONS: usize = 2000;
const IDLE_WORKERS: u64 = 8;

/// Waits up to `limit` for the server to hold at least `count` descriptors, as its poller may
/// still be accepting when the tests around it load the CPU. Returns the last count.
fn wait_for_fds(pid: u32, count: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let fds = open_fd_count(pid);
        if fds >= count || Instant::now() >= deadline {
            return fds;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens `count` connections in batches, waiting after each batch until the server has accepted it.
/// An unpaced burst overflows the listen backlog of 128 when the poller thread waits for a
/// CPU, and each dropped SYN then costs the client a 1 s retransmission.
fn open_paced(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let base_fds = open_fd_count(server.pid());
    let mut streams = Vec::with_capacity(count);
    while streams.len() < count {
        let batch = (count - streams.len()).min(100);
        for _ in 0..batch {
            let i = streams.len();
            streams
                .push(TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")));
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while open_fd_count(server.pid()) < base_fds + streams.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    streams
}

#[test]
fn idle_connections_cost_no_thread_and_expire() {
    raise_fd_limit(IDLE_CONNECTIONS as u64 * 2 + 512);
    let server = TestServer::start(json!({"idle_timeout_secs": 4, "workers": IDLE_WORKERS}));
    let video = pattern(1_000_000);
    server.put_video("big.mp4", &video);
    let pid = server.pid();
    let threads_before = proc_status_field(pid, "Threads:");

    let opened_at = Instant::now();
    let mut idle = open_paced(&server, IDLE_CONNECTIONS);
    let server_fds = wait_for_fds(pid, IDLE_CONNECTIONS, Duration::from_secs(5));
    assert!(server_fds >= IDLE_CONNECTIONS, "the server holds only {server_fds} descriptors");

    let started = Instant::now();
    let response = server.get("/videos/big.mp4", &[]);
    let download_time = started.elapsed();
    eprintln!("1 MB download with {IDLE_CONNECTIONS} idle connections open: {download_time:?}");
    assert_eq!(response.status, 200);
    assert!(response.body == video, "1 MB body differs");
    assert!(download_time < Duration::from_secs(1), "1 MB download took {download_time:?}");

    let threads_during = proc_status_field(pid, "Threads:");
    eprintln!("server threads: {threads_before} before, {threads_during} with idle connections open");
    assert!(
        threads_during <= IDLE_WORKERS + 4,
        "{threads_during} threads with {IDLE_CONNECTIONS} idle connections and {IDLE_WORKERS} workers"
    );
    assert!(threads_during <= threads_before + 1, "threads grew from {threads_before} to {threads_during}");

    let close_deadline = opened_at + Duration::from_secs(10);
    let mut first_eof_after = None;
    let mut still_open = Vec::new();
    for (i, stream) in idle.iter_mut().enumerate() {
        let left = close_deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {
                first_eof_after.get_or_insert(opened_at.elapsed());
            }
            other => still_open.push((i, format!("{other:?}"))),
        }
    }
    assert!(
        still_open.is_empty(),
        "{} of {IDLE_CONNECTIONS} idle connections not closed 10 s after opening, first: {:?}",
        still_open.len(),
        still_open.first()
    );
    let first_eof_after = first_eof_after.unwrap();
    eprintln!("first idle connection closed {first_eof_after:?} after opening");
    assert!(
        first_eof_after >= Duration::from_millis(3950),
        "idle connections closed {first_eof_after:?} after opening, before idle_timeout_secs = 4"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Slow request head
// ---------------------------------------------------------------------------------------------

#[test]
fn trickled_head_cut_off_after_header_timeout() {
    let server = TestServer::start(json!({"header_timeout_secs": 2}));
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 0123456789\r\n\r\n".to_vec();
    let trickle_time = Duration::from_millis(300) * head.len() as u32;
    let mut stream = server.connect();
    stream.set_read_timeout(Some(Duration::from_secs(6))).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = stream.try_clone().unwrap();
    let writer_stop = stop.clone();
    let trickler = std::thread::spawn(move || {
        for byte in head {
            if writer_stop.load(Ordering::Relaxed) || writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    let started = Instant::now();
    let outcome = read_response(&mut stream, false);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    eprintln!("trickled head cut off after {elapsed:?}: {:?}", outcome.as_ref().map(|r| r.status));

    match outcome {
        Ok(response) => {
            assert_error(
                &response,
                408,
                "request_timeout",
                "the request head did not arrive in time; send it again",
            );
            assert_eq!(response.header("connection"), Some("close"));
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "neither 408 nor end of stream: {e}"),
    }
    assert!(
        elapsed <= Duration::from_secs(3),
        "cut off after {elapsed:?}; the trickle lasts {trickle_time:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "cut off after {elapsed:?}, before header_timeout_secs = 2"
    );
    trickler.join().unwrap();
}

#[test]
fn head_trickled_within_timeout_served() {
    let server = TestServer::start(json!({"header_timeout_secs": 4}));
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut stream = server.connect();

    let started = Instant::now();
    for byte in head {
        stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let response = read_response(&mut stream, false).unwrap();
    let trickle_time = started.elapsed();

    assert!(trickle_time < Duration::from_secs(4), "the trickle itself took {trickle_time:?}");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, health_body());
    assert_silent(&mut stream, Duration::from_millis(200), "after a trickled head");
}

// ---------------------------------------------------------------------------------------------
// 4. Oversized heads
// ---------------------------------------------------------------------------------------------

/// Sends an oversized head from another thread (the server stops reading it early) and
/// returns the response.
fn send_oversized(server: &TestServer, head: Arc<Vec<u8>>) -> Response {
    let mut stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&head);
    });

    let response = read_response(&mut stream, false).expect("a response to an oversized head");
    let _ = stream.shutdown(Shutdown::Both);
    sender.join().unwrap();
    response
}

fn assert_headers_too_large(response: &Response, what: &str) {
    assert_eq!(response.status, 431, "{what}: {}", response.text());
    assert_error(
        response,
        431,
        "headers_too_large",
        "the request headers are too large or too many; send fewer or shorter headers",
    );
    assert_eq!(response.header("connection"), Some("close"), "{what}");
}

#[test]
fn oversized_heads_get_431_without_growing_memory() {
    let server = TestServer::start(json!({}));
    let mut long_line = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 1 << 20));
    long_line.extend_from_slice(b"\r\n\r\n");
    let long_line = Arc::new(long_line);

    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let many = Arc::new(many.into_bytes());

    for _ in 0..2 {
        send_oversized(&server, long_line.clone());
        send_oversized(&server, many.clone());
    }
    let rss_before = proc_status_field(server.pid(), "VmRSS:");

    for round in 0..20 {
        let response = send_oversized(&server, long_line.clone());
        assert_headers_too_large(&response, &format!("1 MiB header line, round {round}"));
        let response = send_oversized(&server, many.clone());
        assert_headers_too_large(&response, &format!("10,000 headers, round {round}"));
    }

    let rss_after = proc_status_field(server.pid(), "VmRSS:");
    let growth_kib = rss_after.saturating_sub(rss_before);
    eprintln!("VmRSS {rss_before} KiB before, {rss_after} KiB after 40 oversized heads");
    assert!(growth_kib < 8 * 1024, "VmRSS grew by {growth_kib} KiB ({rss_before} -> {rss_after} KiB)");
    assert_serving(&server, "after oversized heads");
}

// ---------------------------------------------------------------------------------------------
// 5. File descriptor exhaustion
// ---------------------------------------------------------------------------------------------

#[test]
fn accept_recovers_after_fd_exhaustion() {
    let server = TestServer::start_with_fd_limit(json!({}), 64);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or("");
    assert!(open_files.split_whitespace().nth(3) == Some("64"), "limit not applied: {open_files}");

    let mut clients = Vec::new();
    for _ in 0..80 {
        match TcpStream::connect_timeout(&server.addr, Duration::from_millis(500)) {
            Ok(stream) => clients.push(stream),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("accept failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.log().contains("accept failed"),
        "{} connections open but the log shows no `accept failed`",
        clients.len()
    );

    drop(clients);
    let started = Instant::now();
    let mut stream = server.connect();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream, false)
        .unwrap_or_else(|e| panic!("no response after the connections closed: {e}; log:\n{}", server.log()));
    let elapsed = started.elapsed();
    eprintln!("request after fd exhaustion answered in {elapsed:?}");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, health_body());
    assert!(elapsed < Duration::from_secs(2), "recovery took {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Unread bodies are never parsed as requests
// ---------------------------------------------------------------------------------------------

struct SmuggleServer {
    server: TestServer,
    a: Vec<u8>,
    b: Vec<u8>,
}

fn smuggle_server() -> SmuggleServer {
    let server = TestServer::start(json!({"max_upload_bytes": 100}));
    let a = pattern(1000);
    let b = pattern(2000);
    server.put_video("a.mp4", &a);
    server.put_video("b.mp4", &b);
    server.put_video("taken.mp4", b"existing");
    server.put_video("secret.mp4", b"SECRET BYTES");
    SmuggleServer { server, a, b }
}

const REAL_CLOSE: &str = "GET /videos/b.mp4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Sends `bytes` on a new connection and returns every response until the server closes it.
fn responses_to(server: &TestServer, bytes: &[u8], context: &str) -> Vec<Response> {
    let mut stream = send(server, bytes);
    let received = read_to_eof(&mut stream);
    let (responses, leftover) = split_responses(&received);
    assert!(
        leftover.is_empty(),
        "{context}: incomplete trailing bytes {:?}",
        String::from_utf8_lossy(&leftover)
    );
    for response in &responses {
        assert!(response.body != b"SECRET BYTES", "{context}: the smuggled request was served: {received:?}");
    }
    responses
}

fn assert_not_smuggled(server: &TestServer) {
    let log = server.log();
    assert!(!log.contains("secret.mp4"), "the server parsed a body as a request; log:\n{log}");
}

#[test]
fn small_unread_body_not_parsed_as_request() {
    let s = smuggle_server();
    let mut request = format!(
        "GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    request.push_str(REAL_CLOSE);

    let responses = responses_to(&s.server, request.as_bytes(), "small Content-Length body");
    assert_eq!(responses.len(), 2, "expected responses for a.mp4 and b.mp4: {responses:?}");
    assert_eq!(responses[0].status, 200);
    assert!(responses[0].body == s.a, "first response is not a.mp4");
    assert_eq!(responses[0].header("connection"), None, "a drained body keeps the connection open");
    assert_eq!(responses[1].status, 200);
    assert!(responses[1].body == s.b, "second response is not b.mp4");
    assert_eq!(responses[1].header("connection"), Some("close"));
    assert_not_smuggled(&s.server);
}

#[test]
fn large_unread_body_closes_connection() {
    let s = smuggle_server();
    let mut request =
        String::from("GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    request.push_str(SMUGGLED);
    request.push_str(REAL_CLOSE);

    let responses = responses_to(&s.server, request.as_bytes(), "large Content-Length body");
    assert_eq!(responses.len(), 1, "only a.mp4 may be answered: {responses:?}");
    assert_eq!(responses[0].status, 200);
    assert!(responses[0].body == s.a);
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert_not_smuggled(&s.server);
}

#[test]
fn unread_chunked_body_not_parsed_as_request() {
    let s = smuggle_server();
    let mut request =
        String::from("GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    request.push_str(&format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()));
    request.push_str(REAL_CLOSE);

    let responses = responses_to(&s.server, request.as_bytes(), "chunked body");
    assert_eq!(responses.len(), 2, "expected responses for a.mp4 and b.mp4: {responses:?}");
    assert!(responses[0].body == s.a, "first response is not a.mp4");
    assert!(responses[1].body == s.b, "second response is not b.mp4");
    assert_not_smuggled(&s.server);
}

#[test]
fn rejected_upload_body_not_parsed_as_request() {
    let s = smuggle_server();

    let mut exists = upload_head("taken.mp4", &format!("Content-Length: {}", SMUGGLED.len()), "");
    exists.push_str(SMUGGLED);
    exists.push_str(REAL_CLOSE);
    let responses = responses_to(&s.server, exists.as_bytes(), "409 upload");
    assert_eq!(responses.len(), 2, "expected 409 and b.mp4: {responses:?}");
    assert_error(
        &responses[0],
        409,
        "video_exists",
        "video \"taken.mp4\" already exists; add ?overwrite=true to replace it",
    );
    assert!(responses[1].body == s.b, "second response is not b.mp4");

    let padded = format!("{SMUGGLED}{}", "p".repeat(200 - SMUGGLED.len()));
    let mut too_large = upload_head("new.mp4", "Content-Length: 200", "");
    too_large.push_str(&padded);
    too_large.push_str(REAL_CLOSE);
    let responses = responses_to(&s.server, too_large.as_bytes(), "413 upload");
    assert_eq!(responses.len(), 2, "expected 413 and b.mp4: {responses:?}");
    assert_error(&responses[0], 413, "upload_too_large", "the upload is larger than the limit of 100 bytes");
    assert!(responses[1].body == s.b, "second response is not b.mp4");

    let file = SMUGGLED.repeat(6);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", file.as_bytes());
    let mut chunked_too_large = upload_head("new2.mp4", "Transfer-Encoding: chunked", "").into_bytes();
    chunked_too_large.extend_from_slice(&chunked(&body, &[SMUGGLED.len()]));
    chunked_too_large.extend_from_slice(REAL_CLOSE.as_bytes());
    let responses = responses_to(&s.server, &chunked_too_large, "chunked 413 upload");
    assert_eq!(responses.len(), 1, "only the 413 may be answered: {responses:?}");
    assert_error(&responses[0], 413, "upload_too_large", "the upload is larger than the limit of 100 bytes");
    assert_eq!(responses[0].header("connection"), Some("close"));

    assert_not_smuggled(&s.server);
    assert!(!s.server.video_dir.join("new.mp4").exists());
    assert!(!s.server.video_dir.join("new2.mp4").exists());
}

#[test]
fn unsent_body_does_not_pin_workers() {
    let server = TestServer::start(json!({"workers": 2, "idle_timeout_secs": 3}));

    // Each client declares a small body it never sends, so the server must not wait for it
    // after the response while other clients queue for a worker.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let mut stream = send(&server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
        let response = read_response(&mut stream, false).unwrap();
        assert_eq!(response.status, 200, "stalled client {i}");
        stalled.push(stream);
    }

    let mut stream = server.connect();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream, false).unwrap();
    let waited = started.elapsed();
    eprintln!("request behind two unsent bodies answered in {waited:?}");

    assert_eq!(response.status, 200);
    assert!(
        waited < Duration::from_secs(1),
        "a new request waited {waited:?} while both workers waited for bodies that never came"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Keep-alive
// ---------------------------------------------------------------------------------------------

fn keep_alive_server() -> (TestServer, Vec<u8>) {
    let server = TestServer::start(json!({}));
    let video = pattern(10_000);
    server.put_video("a.mp4", &video);
    (server, video)
}

#[test]
fn sequential_requests_share_connection() {
    let (server, video) = keep_alive_server();
    let mut stream = server.connect();

    for round in 0..3 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let response = read_response(&mut stream, false).unwrap();
        assert_eq!(response.status, 200, "round {round}");
        assert_eq!(response.body, health_body(), "round {round}");
        assert_eq!(response.header("connection"), None, "round {round}");

        stream.write_all(b"GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nRange: bytes=100-199\r\n\r\n").unwrap();
        let response = read_response(&mut stream, false).unwrap();
        assert_eq!(response.status, 206, "round {round}");
        assert!(response.body == video[100..200], "round {round}");
    }
    assert_silent(&mut stream, Duration::from_millis(200), "after sequential requests");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let (server, video) = keep_alive_server();
    let pipelined = "GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n\
                     GET /no-such-path HTTP/1.1\r\nHost: t\r\n\r\n\
                     GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut stream = send(&server, pipelined.as_bytes());

    let first = read_response(&mut stream, false).unwrap();
    assert_eq!(first.status, 206);
    assert!(first.body == video[..10]);
    let second = read_response(&mut stream, false).unwrap();
    assert_error(&second, 404, "route_not_found", "no such endpoint; see the API table in the README");
    let third = read_response(&mut stream, false).unwrap();
    assert_eq!(third.status, 200);
    assert_eq!(third.body, health_body());
    assert_silent(&mut stream, Duration::from_millis(200), "after three pipelined responses");
}

#[test]
fn http10_closes_unless_keep_alive() {
    let (server, _) = keep_alive_server();

    let mut stream = send(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eof(&mut stream, "HTTP/1.0 without keep-alive");

    let mut stream = send(&server, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert_eq!(response.body, health_body());
    stream.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let second = read_response(&mut stream, false).unwrap();
    assert_eq!(second.status, 200, "second HTTP/1.0 keep-alive request");
    assert_eq!(second.header("connection"), Some("keep-alive"));
}

#[test]
fn connection_close_ends_connection() {
    let (server, _) = keep_alive_server();
    let mut stream = send(&server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eof(&mut stream, "Connection: close");
}

#[test]
fn head_matches_get_without_body() {
    let (server, video) = keep_alive_server();
    let without_date = |r: &Response| -> Vec<(String, String)> {
        r.headers.iter().filter(|(n, _)| n != "date").cloned().collect()
    };

    let mut stream = server.connect();
    stream.write_all(b"GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let get = read_response(&mut stream, false).unwrap();
    assert!(get.body == video);

    stream
        .write_all(b"HEAD /videos/a.mp4 HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let head = read_response(&mut stream, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10000"));
    assert_eq!(without_date(&head), without_date(&get));

    let next = read_response(&mut stream, false).unwrap();
    assert_eq!(next.status, 200, "the request after HEAD did not parse: {next:?}");
    assert_eq!(next.body, health_body());
    assert_eof(&mut stream, "after HEAD and a closing GET");
}

#[test]
fn pipelined_head_split_across_writes() {
    let (server, _) = keep_alive_server();
    let mut stream = send(&server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /hea");

    let first = read_response(&mut stream, false).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, health_body());
    assert_silent(&mut stream, Duration::from_millis(200), "with half a pipelined head buffered");

    stream.write_all(b"lthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let second = read_response(&mut stream, false).unwrap();
    assert_eq!(second.status, 200, "the completed head was not served: {second:?}");
    assert_eq!(second.body, health_body());
    assert_eq!(second.header("connection"), Some("close"));
    assert_eof(&mut stream, "after the completed pipelined request");
}

// ---------------------------------------------------------------------------------------------
// 8. Expect: 100-continue
// ---------------------------------------------------------------------------------------------

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[test]
fn expect_continue_sent_at_once() {
    let server = TestServer::start(json!({"max_upload_bytes": 4 << 20}));
    let data = pattern(200_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);
    let head =
        upload_head("cont.mp4", &format!("Content-Length: {}", body.len()), "Expect: 100-continue\r\n");

    let mut stream = send(&server, head.as_bytes());
    let started = Instant::now();
    let mut interim = vec![0u8; CONTINUE.len()];
    stream.read_exact(&mut interim).unwrap();
    let waited = started.elapsed();
    eprintln!("100 Continue arrived after {waited:?}");
    assert_eq!(String::from_utf8_lossy(&interim), String::from_utf8_lossy(CONTINUE));
    assert!(waited < Duration::from_millis(200), "100 Continue took {waited:?}");

    stream.write_all(&body).unwrap();
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json(), created_body("cont.mp4", data.len()));
    assert_eq!(response.header("location"), Some("/videos/cont.mp4"));
    assert!(std::fs::read(server.video_dir.join("cont.mp4")).unwrap() == data, "stored bytes differ");
}

#[test]
fn expect_continue_over_limit_gets_413_only() {
    let server = TestServer::start(json!({"max_upload_bytes": 4 << 20}));
    let head = upload_head("big.mp4", "Content-Length: 8388608", "Expect: 100-continue\r\n");

    let mut stream = send(&server, head.as_bytes());
    let received = read_to_eof(&mut stream);
    assert!(
        received.starts_with(b"HTTP/1.1 413 "),
        "the first response is not 413: {:?}",
        String::from_utf8_lossy(&received)
    );
    let (responses, leftover) = split_responses(&received);
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert!(leftover.is_empty());
    assert_error(
        &responses[0],
        413,
        "upload_too_large",
        "the upload is larger than the limit of 4194304 bytes",
    );
    assert_eq!(responses[0].header("connection"), Some("close"));
}

#[test]
fn curl_upload_does_not_stall_on_expect() {
    let server = TestServer::start(json!({"max_upload_bytes": 4 << 20}));
    let data = pattern(2 << 20);
    let source = server.dir.path().join("curl-source.mp4");
    std::fs::write(&source, &data).unwrap();
    let url = format!("http://{}/upload/curl.mp4", server.addr);

    let started = Instant::now();
    let output = Command::new("/usr/bin/curl")
        .args(["-sS", "-v", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-F")
        .arg(format!("file=@{}", source.display()))
        .arg(&url)
        .output()
        .expect("running /usr/bin/curl");
    let elapsed = started.elapsed();
    eprintln!("curl upload of 2 MiB took {elapsed:?}");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl failed: {stderr}");
    assert!(
        stderr.contains("Expect: 100-continue"),
        "curl sent no Expect header, so the stall is not tested:\n{stderr}"
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "201", "curl output: {stdout}");
    assert_eq!(serde_json::from_str::<Value>(body).unwrap(), created_body("curl.mp4", data.len()));
    assert!(elapsed < Duration::from_secs(1), "curl upload of 2 MiB took {elapsed:?}");
    assert!(std::fs::read(server.video_dir.join("curl.mp4")).unwrap() == data, "stored bytes differ");
}

// ---------------------------------------------------------------------------------------------
// 9. Chunked request bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn chunked_upload_stores_exact_bytes() {
    let server = TestServer::start(json!({}));
    let data = pattern(150_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);
    let mut request =
        upload_head("chunked.mp4", "Transfer-Encoding: chunked", "Connection: close\r\n").into_bytes();
    request.extend_from_slice(&chunked(&body, &[1, 7, 100, 4096, 13, 65_537, 2]));

    let response = server.exchange(&request);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json(), created_body("chunked.mp4", data.len()));
    assert!(std::fs::read(server.video_dir.join("chunked.mp4")).unwrap() == data, "stored bytes differ");
}

#[test]
fn malformed_chunks_get_400() {
    let server = TestServer::start(json!({}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", b"0123456789");
    let size = format!("{:x}", body.len());
    let long_extension = format!(";x={}", "a".repeat(5000));
    let many_trailers = "X-Trailer: 0123456789abcdef\r\n".repeat(700);
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("bad.mp4", [b"zz\r\n".as_slice(), &body, b"\r\n0\r\n\r\n"].concat(), "chunk size is not hex"),
        (
            "long.mp4",
            [format!("{:x}\r\n", body.len() - 5).as_bytes(), &body, b"\r\n0\r\n\r\n"].concat(),
            "chunk data longer than its size",
        ),
        // A bare LF or a CR inside a line is where a proxy and a server can split a body
        // differently (CVE-2025-22871 in Go).
        (
            "lf-size.mp4",
            [size.as_bytes(), b"\n", &body, b"\r\n0\r\n\r\n"].concat(),
            "chunked line ends in a bare LF instead of CRLF",
        ),
        (
            "lf-data.mp4",
            [size.as_bytes(), b"\r\n", &body, b"\n0\r\n\r\n"].concat(),
            "chunked line ends in a bare LF instead of CRLF",
        ),
        (
            "lf-last.mp4",
            [size.as_bytes(), b"\r\n", &body, b"\r\n0\r\n\n"].concat(),
            "chunked line ends in a bare LF instead of CRLF",
        ),
        (
            "long-line.mp4",
            [size.as_bytes(), long_extension.as_bytes(), b"\r\n", &body, b"\r\n0\r\n\r\n"].concat(),
            "chunk-size or trailer line too long",
        ),
        (
            "trailers.mp4",
            [size.as_bytes(), b"\r\n", &body, b"\r\n0\r\n", many_trailers.as_bytes(), b"\r\n"].concat(),
            "trailer section longer than 16 KiB",
        ),
        (
            "cr-ext.mp4",
            [size.as_bytes(), b";a=\rb\r\n", &body, b"\r\n0\r\n\r\n"].concat(),
            "control character in a chunk-size or trailer line",
        ),
    ];

    for (id, chunks, why) in cases {
        let mut request = upload_head(id, "Transfer-Encoding: chunked", "").into_bytes();
        request.extend_from_slice(&chunks);
        let responses = responses_to(&server, &request, why);
        assert_eq!(responses.len(), 1, "{why}: {responses:?}");
        assert_error(
            &responses[0],
            400,
            "bad_request",
            &format!("malformed HTTP request: malformed chunked body: {why}"),
        );
        assert_eq!(responses[0].header("connection"), Some("close"), "{why}");
        assert!(!server.video_dir.join(id).exists(), "{why}: a malformed upload was stored");
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Malformed requests
// ---------------------------------------------------------------------------------------------

/// Sends `request` and returns its only response, which must close the connection.
fn only_response(server: &TestServer, request: &str) -> Response {
    let responses = responses_to(server, request.as_bytes(), request);
    assert_eq!(responses.len(), 1, "{request:?}: {responses:?}");
    let response = responses.into_iter().next().unwrap();
    assert_eq!(response.header("connection"), Some("close"), "{request:?}");
    response
}

#[test]
fn malformed_heads_get_json_errors() {
    let server = TestServer::start(json!({}));

    let garbage = only_response(&server, "garbage\r\n\r\n");
    assert_error_code(&garbage, 400, "bad_request");
    assert!(garbage.json()["error"]["message"].as_str().unwrap().starts_with("malformed HTTP request: "));

    let http2 = only_response(&server, "GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n");
    assert_error(&http2, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported");

    let both = only_response(
        &server,
        "POST /upload/x.mp4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    );
    assert_error(
        &both,
        400,
        "bad_request",
        "malformed HTTP request: both Transfer-Encoding and Content-Length are present",
    );

    let gzip =
        only_response(&server, "POST /upload/x.mp4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_error(
        &gzip,
        501,
        "not_implemented",
        "not supported: Transfer-Encoding \"gzip\"; send the body with Content-Length or chunked",
    );
    // The access line of a head that did not parse has no path, but counts the JSON body sent.
    let access = format!("\"-\" 501 {} 0ms (not_implemented)", gzip.body.len());
    assert!(server.log().contains(&access), "no line with {access:?} in the log:\n{}", server.log());

    assert_serving(&server, "after malformed heads");
}
