//! The limiter, `/healthz` and the responses for unknown routes and methods, against the real binary.
//!
//! Covers:
//! - with `max_conns: 2`, two slow downloads hold both tokens until their last byte is read,
//!   a third request gets 429 at once with `Retry-After` and `too_many_requests`, `/healthz`
//!   then answers 429 or reports both tokens in use, and after the downloads finish a request
//!   succeeds and `/healthz` reports `tokens_in_use: 0`;
//! - `/healthz` counts the tokens held by other requests, not its own;
//! - a client that hangs up mid-download gives its token back;
//! - the slow downloads come from their own loopback addresses (127.0.0.2 and up), so a
//!   per-address token share cannot be what refuses the third request from 127.0.0.1;
//! - 405 with `Allow` for a wrong method, 404 `route_not_found` for an unknown path;
//! - every answer that is not media is `application/json`, except `/testpage` (HTML).
//!
//! `STREAMSERVER_TEST_BACKEND=s3` runs every test against an S3 bucket in proxy mode as well
//! (`scripts/test.sh` does both), and none is skipped there. The videos are stored with
//! `put_video`, so on S3 they are uploaded through the API, and a slow download keeps its token
//! while the server relays the object from the bucket, until the last byte is sent.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_from, multipart_body, pattern, Response, TestServer};
use serde_json::{json, Value};

/// Large enough that the kernel socket buffers cannot hold the whole response, so a server
/// writing it to a client that stops reading stays blocked in the write.
const BIG: usize = 64 << 20;

fn big_file() -> Vec<u8> {
    pattern(1 << 20).repeat(BIG >> 20)
}

fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), code, "body: {}", response.text());
}

/// A download that has received its head and the first body bytes, then stopped reading.
struct SlowDownload {
    stream: TcpStream,
    received: Vec<u8>,
}

impl SlowDownload {
    /// Starts a download of `path` from the client address `127.0.0.{client}`. The server drops
    /// a token only after writing the response, so the previous request, such as an upload by
    /// `put_video`, may still have it, and a 429 is retried for up to 5 s.
    fn start(server: &TestServer, path: &str, client: u8) -> SlowDownload {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let download = SlowDownload::request(server, path, client);
            if download.received.starts_with(b"HTTP/1.1 200 ") {
                return download;
            }
            let head = String::from_utf8_lossy(&download.received);
            let status_line = head.lines().next().unwrap_or("");
            assert!(
                status_line.starts_with("HTTP/1.1 429 ") && Instant::now() < deadline,
                "download of {path} from 127.0.0.{client}: expected 200, got {status_line:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the request and reads until the end of the response head.
    fn request(server: &TestServer, path: &str, client: u8) -> SlowDownload {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, client), server.addr, None);
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();

        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "connection closed before the response head");
            received.extend_from_slice(&buffer[..n]);
        }
        SlowDownload { stream, received }
    }

    /// Reads to the end of the stream and returns the body.
    fn finish(mut self) -> Vec<u8> {
        self.stream.read_to_end(&mut self.received).unwrap();
        let head_end = self.received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        self.received.split_off(head_end)
    }
}

fn health(server: &TestServer) -> Response {
    server.get("/healthz", &[])
}

/// Polls `/healthz` until it reports `tokens_in_use == expected`, for at most 5 s.
fn wait_for_tokens_in_use(server: &TestServer, expected: u64) -> Value {
    wait_for_health(server, expected).json()
}

/// Polls `/healthz` until it returns 200 with `tokens_in_use == expected`, for at most 5 s.
/// Returns that response, or the last 200 response once the time is up.
fn wait_for_health(server: &TestServer, expected: u64) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = health(server);
        if response.status == 200 {
            if response.json()["tokens_in_use"] == expected || Instant::now() > deadline {
                return response;
            }
        } else if Instant::now() > deadline {
            panic!("/healthz answered {}: {}", response.status, response.text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_downloads_hold_tokens_until_last_byte() {
    let server = TestServer::start_on_env_backend(json!({"max_conns": 2}));
    let data = big_file();
    server.put_video("big.bin", &data);
    server.put_video("small.bin", b"small");

    let first = SlowDownload::start(&server, "/videos/big.bin", 2);
    let second = SlowDownload::start(&server, "/videos/big.bin", 3);

    let started = Instant::now();
    let refused = server.get("/videos/small.bin", &[]);
    let waited = started.elapsed();
    assert_error(&refused, 429, "too_many_requests");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(waited < Duration::from_millis(500), "the 429 took {waited:?}");

    let report = health(&server);
    match report.status {
        429 => assert_error(&report, 429, "too_many_requests"),
        200 => assert_eq!(report.json()["tokens_in_use"], 2),
        other => panic!("/healthz answered {other}: {}", report.text()),
    }

    assert!(first.finish() == data, "first download differs from the file");
    assert!(second.finish() == data, "second download differs from the file");

    let report = wait_for_tokens_in_use(&server, 0);
    assert_eq!(report, json!({"status": "ok", "tokens_in_use": 0, "tokens_total": 2}));
    let response = get_once_free(&server, "/videos/small.bin");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"small");
}

/// Sends `GET path`, again after a 429 for up to 5 s. The server drops a token only after
/// writing the response, and `max_conns: 2` allows one token per client address, so the
/// `/healthz` request just before may still have it.
fn get_once_free(server: &TestServer, path: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = server.get(path, &[]);
        if response.status != 429 || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn healthz_counts_tokens_of_others() {
    let server = TestServer::start_on_env_backend(json!({"max_conns": 3}));
    server.put_video("big.bin", &big_file());

    // Polled, because the upload may still have its token just after its response.
    let idle = wait_for_health(&server, 0);
    assert_eq!(idle.header("content-type"), Some("application/json"));
    assert_eq!(idle.json(), json!({"status": "ok", "tokens_in_use": 0, "tokens_total": 3}));

    let first = SlowDownload::start(&server, "/videos/big.bin", 2);
    let second = SlowDownload::start(&server, "/videos/big.bin", 3);
    let busy = wait_for_tokens_in_use(&server, 2);
    assert_eq!(busy, json!({"status": "ok", "tokens_in_use": 2, "tokens_total": 3}));

    assert_eq!(first.finish().len(), BIG);
    assert_eq!(second.finish().len(), BIG);
    assert_eq!(wait_for_tokens_in_use(&server, 0)["tokens_in_use"], 0);
}

#[test]
fn download_hangup_returns_token() {
    let server = TestServer::start_on_env_backend(json!({"max_conns": 2}));
    server.put_video("big.bin", &big_file());

    let download = SlowDownload::start(&server, "/videos/big.bin", 2);
    assert_eq!(wait_for_tokens_in_use(&server, 1)["tokens_in_use"], 1);

    // Closing with unread bytes makes the kernel reset the connection, so the server's next
    // write fails.
    drop(download);

    assert_eq!(wait_for_tokens_in_use(&server, 0)["tokens_in_use"], 0);
    let first = SlowDownload::start(&server, "/videos/big.bin", 3);
    let second = SlowDownload::start(&server, "/videos/big.bin", 4);
    drop((first, second));
    assert_eq!(wait_for_tokens_in_use(&server, 0)["tokens_in_use"], 0);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let server = TestServer::start_on_env_backend(json!({}));
    let rows = [
        ("POST", "/videos/a.mp4", "GET, HEAD, DELETE, OPTIONS"),
        ("PUT", "/videos/a.mp4", "GET, HEAD, DELETE, OPTIONS"),
        ("GET", "/upload/a.mp4", "POST, OPTIONS"),
        ("PUT", "/upload/a.mp4", "POST, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/testpage", "GET, HEAD"),
        ("PATCH", "/testpage", "GET, HEAD"),
    ];

    for (method, path, allow) in rows {
        let response = server.request(method, path, &["Content-Length: 0"]);
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn unknown_path_is_404_json() {
    let server = TestServer::start_on_env_backend(json!({}));

    for path in ["/", "/videos", "/video/a.mp4", "/upload", "/healthz/", "/testpage/x", "/nope"] {
        let response = server.get(path, &[]);
        assert_eq!(response.status, 404, "{path}: {}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(response.error_code(), "route_not_found", "{path}");
    }
}

#[test]
fn non_media_answers_are_json() {
    let server = TestServer::start_on_env_backend(json!({"max_upload_bytes": 100_000}));
    server.put_video("a.mp4", &pattern(1000));
    let body = multipart_body("B", "file", "a.mp4", b"data");
    let upload_head = |id: &str, content_type: &str| {
        let mut request = format!(
            "POST /upload/{id} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        request
    };

    let responses = [
        ("healthz", health(&server)),
        ("HEAD healthz", server.request("HEAD", "/healthz", &[])),
        ("upload 201", server.exchange(&upload_head("new.mp4", "multipart/form-data; boundary=B"))),
        ("upload 409", server.exchange(&upload_head("a.mp4", "multipart/form-data; boundary=B"))),
        ("upload 415", server.exchange(&upload_head("x.mp4", "text/plain"))),
        ("upload 413", server.request("POST", "/upload/x.mp4", &["Content-Type: multipart/form-data; boundary=B", "Content-Length: 100001"])),
        ("416", server.get("/videos/a.mp4", &["Range: bytes=5000-"])),
        ("404 video", server.get("/videos/none.mp4", &[])),
        ("400 id", server.get("/videos/%2e%2e", &[])),
        ("404 route", server.get("/nope", &[])),
        ("405", server.request("PUT", "/videos/a.mp4", &[])),
    ];
    for (what, response) in responses {
        assert_eq!(response.header("content-type"), Some("application/json"), "{what} ({})", response.status);
    }

    let page = server.get("/testpage", &[]);
    assert_eq!(page.status, 200);
    let content_type = page.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("text/html"), "/testpage is {content_type:?}");
}
