//! A handler that panics, against the real binary built with the `fault-injection` feature
//! (src/fault.rs), which makes a request with an `X-Fault` header panic on purpose.
//!
//! Covers:
//! - a panic before routing returns 500 `internal_error` as JSON with `Connection: close`,
//!   the log names the request and the panic, and the server keeps serving;
//! - 60 panics with `max_conns: 20` leave every token returned and every worker serving: 20
//!   downloads at once still succeed;
//! - an upload that panics after writing part of its file returns 500, leaves no temporary
//!   file and no video, and an existing video it would replace stays byte-exact;
//! - a keep-alive connection whose request panicked is closed, so no unread body bytes can be
//!   parsed as a request.
//!
//! `scripts/test.sh` runs it with `cargo test --features fault-injection --test handler_panic`
//! in a target folder of its own, so the binary the other tests use has no fault injection.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{multipart_body, pattern, read_response, Response, TestServer};
use serde_json::json;

const BOUNDARY: &str = "PanicBoundary7";

fn assert_internal_error(response: &Response) {
    assert_eq!(response.status, 500, "body: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        response.json(),
        json!({"error": {"code": "internal_error", "message": "internal server error; the server log has the details"}})
    );
}

/// Polls `/healthz` until no token is in use, for at most 5 s. The worker returns its token
/// only after the response is written, so the first poll may still count it.
fn wait_for_no_tokens(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health = server.get("/healthz", &[]);
        if health.status == 200 && health.json()["tokens_in_use"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "tokens still in use: {}", health.text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lists the names in `dir`, sorted, upload temporary files included.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Sends `request` on a new connection and reads the response. The server may close while the
/// body is still being written, so a failed write is expected and only the response counts.
fn send_and_read(server: &TestServer, request: &[u8]) -> (Response, Vec<u8>) {
    let mut stream = server.connect();
    let _ = stream.write_all(request);
    let response = read_response(&mut stream, false).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    (response, rest)
}

fn upload_request(id: &str, bytes: &[u8], extra: &str) -> Vec<u8> {
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", bytes);
    let head = format!(
        "POST /upload/{id} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    [head.into_bytes(), body].concat()
}

#[test]
fn panic_returns_500_then_serves() {
    let server = TestServer::start(json!({}));
    server.put_video("a.mp4", b"0123456789");

    let response = server.get("/videos/a.mp4", &["X-Fault: panic"]);

    assert_internal_error(&response);
    let log = server.log();
    assert!(
        log.contains("handler panicked on GET /videos/a.mp4: fault injected at HandlerStart by the X-Fault header; responded 500"),
        "log: {log}"
    );
    let next = server.get("/videos/a.mp4", &[]);
    assert_eq!(next.status, 200);
    assert_eq!(next.body, b"0123456789");
    wait_for_no_tokens(&server);
}

#[test]
fn many_panics_return_every_token() {
    let server = TestServer::start(json!({"max_conns": 20}));
    server.put_video("a.mp4", &pattern(100_000));

    for _ in 0..60 {
        assert_internal_error(&server.get("/videos/a.mp4", &["X-Fault: panic"]));
    }
    wait_for_no_tokens(&server);

    // All 20 tokens are free: 20 downloads at once each get their whole file.
    let downloads: Vec<_> = (0..20)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(b"GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            stream
        })
        .collect();
    for mut stream in downloads {
        let response = read_response(&mut stream, false).unwrap();
        assert_eq!(response.status, 200, "body: {}", response.text());
        assert!(response.body == pattern(100_000), "body differs");
    }
}

#[test]
fn upload_that_panics_leaves_no_file() {
    let server = TestServer::start(json!({}));
    let data = pattern(3 << 20);

    let request = upload_request("new.mp4", &data, "X-Fault: panic-mid-upload\r\nConnection: close\r\n");
    let (response, _) = send_and_read(&server, &request);

    assert_internal_error(&response);
    assert_eq!(names_in(&server.video_dir), Vec::<String>::new(), "a file was left behind");
    assert_eq!(server.get("/videos/new.mp4", &[]).status, 404);
    let log = server.log();
    assert!(log.contains("handler panicked on POST /upload/new.mp4: fault injected at MidUpload"), "log: {log}");
}

#[test]
fn overwrite_that_panics_keeps_the_old_video() {
    let server = TestServer::start(json!({}));
    server.put_video("old.mp4", b"the old video");

    let request = upload_request("old.mp4?overwrite=true", &pattern(1 << 20), "X-Fault: panic-mid-upload\r\n");
    let (response, _) = send_and_read(&server, &request);

    assert_internal_error(&response);
    assert_eq!(names_in(&server.video_dir), vec!["old.mp4".to_string()]);
    let old = server.get("/videos/old.mp4", &[]);
    assert_eq!(old.status, 200);
    assert_eq!(old.body, b"the old video");
}

#[test]
fn keep_alive_connection_closes_after_a_panic() {
    let server = TestServer::start(json!({}));
    server.put_video("a.mp4", b"abc");
    // The upload panics after its first block, with most of its body unread. The GET behind it
    // must get no response, and no body bytes may be parsed as a request.
    let mut requests = upload_request("x.mp4", &pattern(2 << 20), "X-Fault: panic-mid-upload\r\n");
    requests.extend_from_slice(b"GET /videos/a.mp4 HTTP/1.1\r\nHost: t\r\n\r\n");

    let (response, rest) = send_and_read(&server, &requests);

    assert_internal_error(&response);
    assert!(rest.is_empty(), "bytes after the 500: {:?}", String::from_utf8_lossy(&rest));
}
