//! Reliability of the real binary: access control, deletes, shutdown, crashes, a full disk and
//! connection limits.
//!
//! Covers:
//! - with `upload_token` set, `POST /upload/{id}` and `DELETE /videos/{id}` without a token, with
//!   a wrong one or with another scheme get 401 `unauthorized` with the matching
//!   `WWW-Authenticate`, before any body byte is read (no `100 Continue`), and store or delete
//!   nothing; the right token (scheme in any case) works; `GET`, `/healthz` and the upload
//!   preflight need no token; the token never appears in the log;
//! - `STREAMSERVER_UPLOAD_TOKEN` sets the token and overrides the config's, and an empty one
//!   leaves the config's in force;
//! - a token shorter than 16 characters or holding a space, from the config or the environment,
//!   stops startup with exit status 2 and one stderr line that names the field and not the token;
//!   16 characters are enough;
//! - without a token, listening on 0.0.0.0 logs a warning that anyone can upload; listening on
//!   127.0.0.1, or on 0.0.0.0 with a token, logs none;
//! - `DELETE /videos/{id}` answers 204 without `Content-Length` and removes the file, then 404
//!   `video_not_found`; a download already in flight still completes byte-exact; a folder in
//!   `video_dir` is no video, so `GET` and `DELETE` of its name get 404, an upload under its
//!   name (with or without overwrite) gets 409 `video_exists`, and the folder stays;
//! - SIGTERM: new connections are refused, idle keep-alive connections are closed, a download and
//!   an upload in flight complete (the upload is stored, answered with `Connection: close`), and
//!   the process exits with status 0 without cutting anything off;
//! - SIGTERM with an upload stalled past `shutdown_grace_secs`: the log names the cut-off request,
//!   the temporary file is removed, the video it would replace is untouched, exit status 0; a
//!   download stalled past the grace period is cut off the same way;
//! - SIGINT shuts down the same way;
//! - two server processes on one `video_dir`, as during a restart while the old one drains: the
//!   new one's startup cleanup and the old one's shutdown cleanup leave the other's upload in
//!   flight alone, so it completes with 201;
//! - `kill -9` during uploads: after a restart, every upload answered 201 is byte-exact, no final
//!   name holds a partial file, an overwrite in progress left the old video, every stale
//!   `.upload-*.part` file is removed (and counted in the log), and other files survive: a
//!   dotfile, a normal video, names with only the prefix or only the suffix, and a folder;
//! - a full disk (a 4 MiB tmpfs as `video_dir`; skipped when `mount` fails, unless `CI=true`):
//!   an upload larger than the free space gets 507 `insufficient_storage`, new or as an overwrite,
//!   leaves no temporary file, the existing video stays byte-exact and served, and a small upload
//!   then succeeds;
//! - `max_connections: 20`: sockets beyond 20 get 503 `too_many_connections` with `Retry-After`
//!   and are closed, the 20 keep working, and after 5 close, 5 new ones are served;
//! - `max_conns: 4, max_conns_per_ip: 2`: a third concurrent request from 127.0.0.1 gets 429
//!   `too_many_requests` while a download from 127.0.0.2 succeeds byte-exact, and `/healthz`
//!   counts the held tokens.

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect_from, multipart_body, pattern, read_response, Response, TestServer};
use serde_json::{json, Value};

const BOUNDARY: &str = "BOUNDARYxyz";

/// A valid upload token (at least 16 printable characters).
const TOKEN: &str = "reliability-token-0123456789";

/// Large enough that a client with a small receive buffer keeps the server writing for a while.
const BIG: usize = 16 << 20;

/// Receive buffer of clients that read slowly, so the kernel cannot take a whole response.
const SMALL_RCVBUF: libc::c_int = 32 * 1024;

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), code, "body: {}", response.text());
}

fn big_file() -> Vec<u8> {
    pattern(1 << 20).repeat(BIG >> 20)
}

/// Pseudo-random bytes that differ for each `seed`, so two uploads never hold equal content.
fn variant(len: usize, seed: u8) -> Vec<u8> {
    pattern(len).into_iter().map(|b| b ^ seed.wrapping_mul(37).wrapping_add(1)).collect()
}

/// Polls `condition` every 20 ms until it is true or `timeout` passes, and returns its last value.
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lists the names in `dir`, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Lists the upload temporary files (`.upload-*.part` regular files) in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|name| name.starts_with(".upload-") && name.ends_with(".part"))
        .filter(|name| dir.join(name).is_file())
        .collect()
}

fn upload_request(id_and_query: &str, body: &[u8], headers: &[&str]) -> Vec<u8> {
    let mut head = format!(
        "POST /upload/{id_and_query} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Uploads `data` as field `file` with extra header lines such as an `Authorization`.
fn upload(server: &TestServer, id_and_query: &str, data: &[u8], headers: &[&str]) -> Response {
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", data);
    server.exchange(&upload_request(id_and_query, &body, headers))
}

/// Uploads like [`upload`] but returns I/O errors instead of panicking, for clients racing a crash.
fn try_upload(addr: SocketAddr, id: &str, data: &[u8]) -> io::Result<Response> {
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", data);
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&upload_request(id, &body, &[]))?;
    read_response(&mut stream, false)
}

/// Sends a request whose body the server may reject before reading it all: a second thread
/// writes while this one reads the response, and write errors after the response are ignored.
fn exchange_while_writing(server: &TestServer, request: Vec<u8>) -> Response {
    let mut stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let response = read_response(&mut stream, false)
        .unwrap_or_else(|e| panic!("no response ({e}); server log:\n{}", server.log()));
    drop(stream);
    sending.join().unwrap();
    response
}

/// Reads one response head byte by byte, without skipping a `100 Continue`.
fn read_raw_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("reading a response head");
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `GET /healthz` on a keep-alive connection, which then stays open.
fn health_keep_alive(stream: &mut TcpStream) -> io::Result<Response> {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")?;
    read_response(stream, false)
}

/// Returns true when `stream` reads end of stream (or a reset) within its read timeout.
fn is_closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

/// A download that has received its head and the first 64 KiB of body, then stopped reading.
struct SlowDownload {
    stream: TcpStream,
    received: Vec<u8>,
}

impl SlowDownload {
    /// Starts a download of `path` from the client address `source`.
    fn start(server: &TestServer, path: &str, source: Ipv4Addr) -> SlowDownload {
        let mut stream = connect_from(source, server.addr, Some(SMALL_RCVBUF));
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();

        let mut download = SlowDownload { stream, received: Vec::new() };
        download.read_until(|received| SlowDownload::body_start(received).is_some());
        let head_end = SlowDownload::body_start(&download.received).unwrap();
        let head = String::from_utf8_lossy(&download.received[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

        download.read_until(|received| received.len() >= head_end + (64 << 10));
        download
    }

    fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) {
        let mut buffer = [0u8; 4096];
        while !done(&self.received) {
            let n = self.stream.read(&mut buffer).unwrap();
            assert!(n > 0, "connection closed after {} bytes", self.received.len());
            self.received.extend_from_slice(&buffer[..n]);
        }
    }

    fn body_start(received: &[u8]) -> Option<usize> {
        received.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    /// Reads to the end of the stream and returns the body.
    fn finish(mut self) -> Vec<u8> {
        self.stream.read_to_end(&mut self.received).unwrap();
        let start = SlowDownload::body_start(&self.received).unwrap();
        self.received.split_off(start)
    }
}

/// An upload whose head and first body bytes are sent, and whose rest is held back.
struct StalledUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl StalledUpload {
    /// Sends the head and the first half of the multipart body carrying `data`.
    fn start(server: &TestServer, id_and_query: &str, data: &[u8]) -> StalledUpload {
        let body = multipart_body(BOUNDARY, "file", "clip.mp4", data);
        let request = upload_request(id_and_query, &body, &[]);
        let split = request.len() - body.len() / 2;

        let mut stream = server.connect();
        stream.write_all(&request[..split]).unwrap();
        StalledUpload { stream, rest: request[split..].to_vec() }
    }

    /// Sends the rest of the body and reads the response.
    fn finish(mut self) -> Response {
        self.stream.write_all(&self.rest).unwrap();
        read_response(&mut self.stream, false).expect("a response to the completed upload")
    }
}

/// Polls `/healthz` until it reports `tokens_in_use == expected`, for at most 5 s.
fn wait_for_tokens_in_use(server: &TestServer, expected: u64) -> Value {
    let mut report = Value::Null;
    wait_until(Duration::from_secs(5), || {
        let response = server.get("/healthz", &[]);
        report = if response.status == 200 { response.json() } else { Value::Null };
        report["tokens_in_use"] == expected
    });
    report
}

/// Starts the binary with `config` and `env`, expects it to exit within 10 s, and returns the
/// exit status and what it wrote to stderr.
fn run_until_exit(config: Value, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("conf.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let stderr_path = dir.path().join("stderr.txt");

    let mut child = Command::new(env!("CARGO_BIN_EXE_streamserver"))
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env_remove("STREAMSERVER_UPLOAD_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server kept running; stderr:\n{}", std::fs::read_to_string(&stderr_path).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&stderr_path).unwrap())
}

/// Asserts that startup failed with status 2 and one stderr line naming `field`.
fn assert_startup_rejected(status: ExitStatus, stderr: &str, field: &str, secret: &str) {
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].starts_with("streamserver: "), "{}", lines[0]);
    assert!(lines[0].contains(field), "{}", lines[0]);
    assert!(!lines[0].contains(secret), "the rejected token is printed: {}", lines[0]);
}

/// Ends the server with SIGTERM so its log is complete, and returns the log.
fn final_log(server: &mut TestServer) -> String {
    let status = server.terminate(Duration::from_secs(15)).expect("the server exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    server.log()
}

/// The warning a server without a token logs when it listens beyond loopback.
const OPEN_UPLOAD_WARNING: &str = "anyone who can reach it can upload and delete videos";

// ---------------------------------------------------------------------------------------------
// Access control
// ---------------------------------------------------------------------------------------------

#[test]
fn upload_without_token_is_401() {
    let server = TestServer::start(json!({"upload_token": TOKEN}));

    let missing = upload(&server, "a.mp4", b"video", &[]);
    assert_error(&missing, 401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"streamserver\""));

    let basic = upload(&server, "a.mp4", b"video", &["Authorization: Basic dXNlcjpwYXNzd29yZA=="]);
    assert_error(&basic, 401, "unauthorized");
    assert_eq!(basic.header("www-authenticate"), Some("Bearer realm=\"streamserver\""));

    let empty = upload(&server, "a.mp4", b"video", &["Authorization: Bearer"]);
    assert_error(&empty, 401, "unauthorized");

    assert_eq!(file_names(&server.video_dir), Vec::<String>::new());
}

#[test]
fn upload_with_wrong_token_is_401() {
    let server = TestServer::start(json!({"upload_token": TOKEN}));
    let shorter = format!("Authorization: Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let longer = format!("Authorization: Bearer {TOKEN}x");
    let changed = format!("Authorization: Bearer {}X", &TOKEN[..TOKEN.len() - 1]);

    for header in [&shorter, &longer, &changed] {
        let response = upload(&server, "a.mp4", b"video", &[header]);
        assert_error(&response, 401, "unauthorized");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"streamserver\", error=\"invalid_token\""),
            "{header}"
        );
    }
    assert_eq!(file_names(&server.video_dir), Vec::<String>::new());
}

#[test]
fn upload_401_sends_no_continue() {
    let server = TestServer::start(json!({"upload_token": TOKEN}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", b"video");
    let head = format!(
        "POST /upload/a.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );

    let mut stream = server.connect();
    stream.write_all(head.as_bytes()).unwrap();
    let first = read_raw_head(&mut stream);

    assert!(first.starts_with("HTTP/1.1 401 "), "first response: {first}");
    assert!(first.contains("\r\nWWW-Authenticate: Bearer realm=\"streamserver\"\r\n"), "{first}");
    assert_eq!(file_names(&server.video_dir), Vec::<String>::new());
}

#[test]
fn upload_with_token_is_stored() {
    let mut server = TestServer::start(json!({"upload_token": TOKEN}));
    let data = variant(300_000, 1);
    let authorization = format!("Authorization: Bearer {TOKEN}");
    let lowercase_scheme = format!("Authorization: bearer {TOKEN}");

    let stored = upload(&server, "a.mp4", &data, &[&authorization]);
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(stored.json(), json!({"id": "a.mp4", "size": data.len(), "url": "/videos/a.mp4"}));
    let second = upload(&server, "b.mp4", b"second", &[&lowercase_scheme]);
    assert_eq!(second.status, 201, "{}", second.text());

    assert!(std::fs::read(server.video_dir.join("a.mp4")).unwrap() == data);
    assert!(final_log(&mut server).lines().all(|line| !line.contains(TOKEN)), "the log shows the token");
}

#[test]
fn reads_need_no_token() {
    let server = TestServer::start(json!({"upload_token": TOKEN}));
    let data = variant(100_000, 2);
    server.put_video("a.mp4", &data);

    let full = server.get("/videos/a.mp4", &[]);
    assert_eq!(full.status, 200);
    assert!(full.body == data);

    let range = server.get("/videos/a.mp4", &["Range: bytes=10-19"]);
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &data[10..20]);

    let head = server.request("HEAD", "/videos/a.mp4", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100000"));

    assert_eq!(server.get("/healthz", &[]).status, 200);

    let preflight = server.request("OPTIONS", "/upload/a.mp4", &[]);
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("allow"), Some("POST, OPTIONS"));
}

#[test]
fn delete_needs_token() {
    let server = TestServer::start(json!({"upload_token": TOKEN}));
    let data = variant(50_000, 3);
    server.put_video("a.mp4", &data);

    let missing = server.request("DELETE", "/videos/a.mp4", &[]);
    assert_error(&missing, 401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"streamserver\""));

    let wrong = server.request("DELETE", "/videos/a.mp4", &["Authorization: Bearer wrong-token-0123456789"]);
    assert_error(&wrong, 401, "unauthorized");
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer realm=\"streamserver\", error=\"invalid_token\""));
    assert!(std::fs::read(server.video_dir.join("a.mp4")).unwrap() == data);

    let authorization = format!("Authorization: Bearer {TOKEN}");
    let deleted = server.request("DELETE", "/videos/a.mp4", &[&authorization]);
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(!server.video_dir.join("a.mp4").exists());

    let again = server.request("DELETE", "/videos/a.mp4", &[&authorization]);
    assert_error(&again, 404, "video_not_found");
}

#[test]
fn env_token_overrides_config() {
    let env_token = "environment-token-abcdefghij";
    let server = TestServer::start_custom(
        json!({"upload_token": TOKEN}),
        "127.0.0.1",
        &[("STREAMSERVER_UPLOAD_TOKEN", env_token)],
    );

    let config_token = upload(&server, "a.mp4", b"video", &[&format!("Authorization: Bearer {TOKEN}")]);
    assert_error(&config_token, 401, "unauthorized");

    let env_token = upload(&server, "a.mp4", b"video", &[&format!("Authorization: Bearer {env_token}")]);
    assert_eq!(env_token.status, 201, "{}", env_token.text());
}

#[test]
fn env_token_alone_is_required() {
    let env_token = "environment-token-abcdefghij";
    let server = TestServer::start_custom(json!({}), "127.0.0.1", &[("STREAMSERVER_UPLOAD_TOKEN", env_token)]);

    let missing = upload(&server, "a.mp4", b"video", &[]);
    assert_error(&missing, 401, "unauthorized");

    let right = upload(&server, "a.mp4", b"video", &[&format!("Authorization: Bearer {env_token}")]);
    assert_eq!(right.status, 201, "{}", right.text());
}

#[test]
fn empty_env_token_keeps_config_token() {
    let server = TestServer::start_custom(
        json!({"upload_token": TOKEN}),
        "127.0.0.1",
        &[("STREAMSERVER_UPLOAD_TOKEN", "")],
    );

    assert_error(&upload(&server, "a.mp4", b"video", &[]), 401, "unauthorized");
    let right = upload(&server, "a.mp4", b"video", &[&format!("Authorization: Bearer {TOKEN}")]);
    assert_eq!(right.status, 201, "{}", right.text());
}

#[test]
fn short_config_token_stops_startup() {
    for token in ["short-token", "abcdefghijklmno", "has a space 0123456789"] {
        let (status, stderr) = run_until_exit(json!({"upload_token": token}), &[]);
        assert_startup_rejected(status, &stderr, "field `upload_token`", token);
    }
}

#[test]
fn short_env_token_stops_startup() {
    let (status, stderr) =
        run_until_exit(json!({"upload_token": TOKEN}), &[("STREAMSERVER_UPLOAD_TOKEN", "tooshort")]);
    assert_startup_rejected(status, &stderr, "STREAMSERVER_UPLOAD_TOKEN", "tooshort");
}

#[test]
fn sixteen_character_token_is_enough() {
    let token = "abcdefghijklmnop";
    let server = TestServer::start(json!({"upload_token": token}));
    let response = upload(&server, "a.mp4", b"video", &[&format!("Authorization: Bearer {token}")]);
    assert_eq!(response.status, 201, "{}", response.text());
}

#[test]
fn open_listen_without_token_warns() {
    let mut server = TestServer::start_custom(json!({}), "0.0.0.0", &[]);
    assert_eq!(server.get("/healthz", &[]).status, 200);
    let port = server.addr.port();

    let log = final_log(&mut server);
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains(OPEN_UPLOAD_WARNING)).collect();
    assert_eq!(warnings.len(), 1, "log:\n{log}");
    assert!(warnings[0].contains(" WARN "), "{}", warnings[0]);
    assert!(
        warnings[0].contains(&format!("no upload_token is set and the server listens on 0.0.0.0:{port}")),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("STREAMSERVER_UPLOAD_TOKEN"), "{}", warnings[0]);
}

#[test]
fn loopback_listen_does_not_warn() {
    let mut server = TestServer::start_custom(json!({}), "127.0.0.1", &[]);
    assert_eq!(server.get("/healthz", &[]).status, 200);

    let log = final_log(&mut server);
    assert!(log.contains("upload token not set"), "log:\n{log}");
    assert!(!log.contains(OPEN_UPLOAD_WARNING), "log:\n{log}");
}

#[test]
fn open_listen_with_token_does_not_warn() {
    let mut server = TestServer::start_custom(json!({"upload_token": TOKEN}), "0.0.0.0", &[]);
    assert_eq!(server.get("/healthz", &[]).status, 200);

    let log = final_log(&mut server);
    assert!(log.contains("upload token required"), "log:\n{log}");
    assert!(!log.contains(OPEN_UPLOAD_WARNING), "log:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// DELETE
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_removes_video_then_404() {
    let server = TestServer::start(json!({}));
    server.put_video("a.mp4", b"old video");
    server.put_video("b.mp4", b"other video");

    let deleted = server.request("DELETE", "/videos/a.mp4", &[]);
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(deleted.header("content-length"), None);
    assert_eq!(deleted.body, b"");
    assert_eq!(file_names(&server.video_dir), ["b.mp4"]);

    assert_error(&server.get("/videos/a.mp4", &[]), 404, "video_not_found");
    assert_error(&server.request("DELETE", "/videos/a.mp4", &[]), 404, "video_not_found");
    assert_error(&server.request("DELETE", "/videos/never.mp4", &[]), 404, "video_not_found");
    assert_error(&server.request("DELETE", "/videos/.hidden", &[]), 400, "invalid_id");

    let other = server.get("/videos/b.mp4", &[]);
    assert_eq!(other.status, 200);
    assert_eq!(other.body, b"other video");
}

#[test]
fn delete_of_folder_is_404() {
    let server = TestServer::start(json!({}));
    std::fs::create_dir(server.video_dir.join("archive")).unwrap();

    assert_error(&server.get("/videos/archive", &[]), 404, "video_not_found");
    let deleted = server.request("DELETE", "/videos/archive", &[]);
    let stored = upload(&server, "archive", b"video", &[]);
    let overwritten = upload(&server, "archive?overwrite=true", b"video", &[]);

    assert_error(&deleted, 404, "video_not_found");
    assert_error(&stored, 409, "video_exists");
    assert_error(&overwritten, 409, "video_exists");
    assert_eq!(file_names(&server.video_dir), ["archive"]);
    assert!(server.video_dir.join("archive").is_dir());
}

#[test]
fn delete_during_download_finishes_it() {
    let server = TestServer::start(json!({}));
    let data = big_file();
    server.put_video("big.bin", &data);

    let download = SlowDownload::start(&server, "/videos/big.bin", LOCALHOST);
    let deleted = server.request("DELETE", "/videos/big.bin", &[]);
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(!server.video_dir.join("big.bin").exists());

    assert!(download.finish() == data, "the download differs from the deleted file");
    assert_error(&server.get("/videos/big.bin", &[]), 404, "video_not_found");
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

/// Waits until connecting fails, and asserts that it fails as refused.
fn assert_listener_closes(server: &TestServer) {
    let closed = wait_until(Duration::from_secs(5), || TcpStream::connect(server.addr).is_err());
    assert!(closed, "the server still accepts connections after the signal; log:\n{}", server.log());
    let error = TcpStream::connect(server.addr).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
}

#[test]
fn sigterm_lets_download_in_flight_finish() {
    let mut server = TestServer::start(json!({"shutdown_grace_secs": 10}));
    let data = big_file();
    server.put_video("big.bin", &data);
    let mut idle = server.connect();
    assert_eq!(health_keep_alive(&mut idle).unwrap().status, 200);

    let download = SlowDownload::start(&server, "/videos/big.bin", LOCALHOST);
    assert_eq!(wait_for_tokens_in_use(&server, 1)["tokens_in_use"], 1, "the download is not in flight");
    server.send_signal(libc::SIGTERM);

    assert_listener_closes(&server);
    assert!(is_closed_by_server(&mut idle), "the idle keep-alive connection stays open");
    assert!(download.finish() == data, "the download differs from the file");

    let status = server.wait_exit(Duration::from_secs(15)).expect("the server exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("SIGTERM received; no longer accepting connections"), "log:\n{log}");
    assert!(log.contains("streamserver stopped"), "log:\n{log}");
    assert!(!log.contains("cutting off"), "log:\n{log}");
}

#[test]
fn sigterm_lets_upload_in_flight_finish() {
    let mut server = TestServer::start(json!({"shutdown_grace_secs": 10}));
    let data = variant(2 << 20, 4);
    let upload = StalledUpload::start(&server, "late.mp4", &data);
    assert!(
        wait_until(Duration::from_secs(5), || temp_files(&server.video_dir).len() == 1),
        "no temporary file appeared: {:?}",
        file_names(&server.video_dir)
    );

    server.send_signal(libc::SIGTERM);
    assert_listener_closes(&server);
    let response = upload.finish();

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    let status = server.wait_exit(Duration::from_secs(15)).expect("the server exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert_eq!(file_names(&server.video_dir), ["late.mp4"]);
    assert!(std::fs::read(server.video_dir.join("late.mp4")).unwrap() == data);
    assert!(!server.log().contains("cutting off"), "log:\n{}", server.log());
}

#[test]
fn sigterm_cuts_off_upload_stalled_past_grace() {
    let mut server = TestServer::start(json!({"shutdown_grace_secs": 1, "idle_timeout_secs": 30}));
    let old = variant(100_000, 5);
    server.put_video("kept.mp4", &old);
    let mut upload = StalledUpload::start(&server, "kept.mp4?overwrite=true", &variant(1 << 20, 6));
    assert!(
        wait_until(Duration::from_secs(5), || temp_files(&server.video_dir).len() == 1),
        "no temporary file appeared: {:?}",
        file_names(&server.video_dir)
    );

    server.send_signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("the server exits after the grace period");

    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert_eq!(file_names(&server.video_dir), ["kept.mp4"]);
    assert!(std::fs::read(server.video_dir.join("kept.mp4")).unwrap() == old);
    let log = server.log();
    assert!(log.contains("shutdown grace of 1s ran out; cutting off the requests in flight (1)"), "log:\n{log}");
    assert!(log.contains("removed 1 upload temporary files of cut-off uploads"), "log:\n{log}");

    let mut answer = Vec::new();
    let _ = upload.stream.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 201"), "the cut-off upload was answered 201");
}

#[test]
fn sigterm_cuts_off_download_past_grace() {
    let mut server = TestServer::start(json!({"shutdown_grace_secs": 1}));
    server.put_video("big.bin", &big_file());
    let mut download = SlowDownload::start(&server, "/videos/big.bin", LOCALHOST);

    server.send_signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10)).expect("the server exits after the grace period");

    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("shutdown grace of 1s ran out; cutting off the requests in flight (1)"), "log:\n{log}");
    let _ = download.stream.read_to_end(&mut download.received);
    assert!(download.received.len() < BIG, "the whole file arrived although the download was cut off");
}

#[test]
fn sigint_stops_like_sigterm() {
    let mut server = TestServer::start(json!({}));
    let mut idle = server.connect();
    assert_eq!(health_keep_alive(&mut idle).unwrap().status, 200);

    server.send_signal(libc::SIGINT);

    assert_listener_closes(&server);
    assert!(is_closed_by_server(&mut idle), "the idle keep-alive connection stays open");
    let status = server.wait_exit(Duration::from_secs(15)).expect("the server exits");
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("SIGINT received; no longer accepting connections"), "log:\n{log}");
    assert!(log.contains("streamserver stopped"), "log:\n{log}");
}

/// Asserts that a stalled upload to `server` can still complete and be stored, after another
/// server process on the same `video_dir` started or stopped.
fn assert_upload_survives(server: &TestServer, upload: StalledUpload, video_dir: &Path, id: &str, data: &[u8]) {
    let response = upload.finish();
    assert_eq!(response.status, 201, "{}; log:\n{}", response.text(), server.log());
    assert!(std::fs::read(video_dir.join(id)).unwrap() == data, "{id} differs");
}

#[test]
fn restart_during_grace_keeps_inflight_upload() {
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("videos");
    let mut old = TestServer::start(json!({"video_dir": video_dir, "shutdown_grace_secs": 10}));
    let data = variant(1 << 20, 8);
    let upload = StalledUpload::start(&old, "draining.mp4", &data);
    assert!(wait_until(Duration::from_secs(5), || temp_files(&video_dir).len() == 1));

    old.send_signal(libc::SIGTERM);
    assert_listener_closes(&old);
    let _new = TestServer::start(json!({"video_dir": video_dir}));

    assert_upload_survives(&old, upload, &video_dir, "draining.mp4", &data);
    let status = old.wait_exit(Duration::from_secs(15)).expect("the old server exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn shutdown_cleanup_spares_other_server_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("videos");
    let mut old = TestServer::start(json!({"video_dir": video_dir, "shutdown_grace_secs": 1}));
    let new = TestServer::start(json!({"video_dir": video_dir}));
    let data = variant(1 << 20, 9);
    let upload = StalledUpload::start(&new, "fresh.mp4", &data);
    assert!(wait_until(Duration::from_secs(5), || temp_files(&video_dir).len() == 1));

    old.send_signal(libc::SIGTERM);
    let status = old.wait_exit(Duration::from_secs(10)).expect("the old server exits");
    assert_eq!(status.code(), Some(0));

    assert_upload_survives(&new, upload, &video_dir, "fresh.mp4", &data);
}

// ---------------------------------------------------------------------------------------------
// Crash safety
// ---------------------------------------------------------------------------------------------

/// Files that are not upload temporary files, which startup cleanup must leave alone.
const BYSTANDERS: [(&str, &[u8]); 3] = [
    (".keep-me", b"an unrelated dotfile"),
    (".upload-notes.txt", b"the temporary prefix without the suffix"),
    ("notes.part", b"the temporary suffix without the prefix"),
];

/// Uploads `race-{n}` one after another until `stop` is set, recording each id answered 201.
fn race_uploads(addr: SocketAddr, stop: Arc<AtomicBool>, acknowledged: Arc<Mutex<Vec<String>>>) {
    for n in 0..200u32 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let id = format!("race-{n}");
        match try_upload(addr, &id, &variant(256 << 10, n as u8)) {
            Ok(response) if response.status == 201 => acknowledged.lock().unwrap().push(id),
            Ok(response) => panic!("upload of {id} answered {}: {}", response.status, response.text()),
            Err(_) => return,
        }
    }
}

#[test]
fn kill9_mid_uploads_leaves_no_partial_video() {
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("videos");
    std::fs::create_dir_all(video_dir.join(".upload-folder.part")).unwrap();
    for (name, bytes) in BYSTANDERS {
        std::fs::write(video_dir.join(name), bytes).unwrap();
    }
    let old = variant(300_000, 7);
    std::fs::write(video_dir.join("existing.mp4"), &old).unwrap();
    let mut server = TestServer::start(json!({"video_dir": video_dir}));

    let mut finished = Vec::new();
    for k in 0..3u8 {
        let id = format!("done-{k}.mp4");
        let data = variant(400_000 + 100_000 * k as usize, 10 + k);
        let response = upload(&server, &id, &data, &[]);
        assert_eq!(response.status, 201, "{}", response.text());
        finished.push((id, data));
    }
    let stalled_new = StalledUpload::start(&server, "stalled-new.mp4", &variant(1 << 20, 20));
    let stalled_overwrite = StalledUpload::start(&server, "existing.mp4?overwrite=true", &variant(1 << 20, 21));
    assert!(
        wait_until(Duration::from_secs(5), || temp_files(&video_dir).len() == 2),
        "the stalled uploads have no temporary files: {:?}",
        file_names(&video_dir)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let racer = {
        let (addr, stop, acknowledged) = (server.addr, stop.clone(), acknowledged.clone());
        std::thread::spawn(move || race_uploads(addr, stop, acknowledged))
    };
    assert!(
        wait_until(Duration::from_secs(10), || acknowledged.lock().unwrap().len() >= 2),
        "racing uploads were not acknowledged"
    );

    server.send_signal(libc::SIGKILL);
    let status = server.wait_exit(Duration::from_secs(5)).expect("the server dies on SIGKILL");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    drop((stalled_new, stalled_overwrite, server));
    let left = temp_files(&video_dir);
    assert!(left.len() >= 2, "the kill left no temporary files: {:?}", file_names(&video_dir));

    let restarted = TestServer::start(json!({"video_dir": video_dir}));

    assert_eq!(temp_files(&video_dir), Vec::<String>::new());
    let removed = format!("removed {} upload temporary files left by an earlier run", left.len());
    assert!(restarted.log().contains(&removed), "log:\n{}", restarted.log());
    assert!(video_dir.join(".upload-folder.part").is_dir(), "the folder was removed");
    for (name, bytes) in BYSTANDERS {
        assert_eq!(std::fs::read(video_dir.join(name)).unwrap(), *bytes, "{name}");
    }

    assert!(!video_dir.join("stalled-new.mp4").exists());
    assert_error(&restarted.get("/videos/stalled-new.mp4", &[]), 404, "video_not_found");
    assert!(std::fs::read(video_dir.join("existing.mp4")).unwrap() == old, "existing.mp4 changed");
    assert!(restarted.get("/videos/existing.mp4", &[]).body == old);

    for (id, data) in &finished {
        assert!(std::fs::read(video_dir.join(id)).unwrap() == *data, "{id} differs on disk");
        let served = restarted.get(&format!("/videos/{id}"), &[]);
        assert_eq!(served.status, 200, "{id}");
        assert!(served.body == *data, "{id} differs when served");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    for n in 0..200u32 {
        let id = format!("race-{n}");
        let path = video_dir.join(&id);
        let expected = variant(256 << 10, n as u8);
        if acknowledged.contains(&id) {
            assert!(std::fs::read(&path).unwrap() == expected, "acknowledged {id} differs");
        } else if path.exists() {
            assert!(std::fs::read(&path).unwrap() == expected, "unacknowledged {id} is partial");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Full disk
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted on a fresh temporary folder, unmounted on drop.
struct Tmpfs {
    mount_point: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (such as `4m`); `None` with a message when `mount` fails, which
    /// fails the test instead under `CI=true`.
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let mount_point = parent.path().join("disk");
        std::fs::create_dir(&mount_point).unwrap();

        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output();
        let failure = match output {
            Ok(output) if output.status.success() => return Some(Tmpfs { mount_point, _parent: parent }),
            Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };

        let message = format!("cannot mount a tmpfs (needs root): {failure}");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: {message}");
        eprintln!("skipping the full-disk test: {message}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.mount_point).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
        }
    }
}

#[test]
fn full_disk_upload_is_507_and_server_recovers() {
    let Some(disk) = Tmpfs::mount("4m") else { return };
    let old = variant(100_000, 30);
    std::fs::write(disk.mount_point.join("existing.mp4"), &old).unwrap();
    let server = TestServer::start(json!({"video_dir": disk.mount_point}));
    let too_big = multipart_body(BOUNDARY, "file", "clip.mp4", &variant(6 << 20, 31));

    for id in ["big.mp4", "existing.mp4?overwrite=true"] {
        let response = exchange_while_writing(&server, upload_request(id, &too_big, &[]));
        assert_error(&response, 507, "insufficient_storage");
        assert_eq!(file_names(&disk.mount_point), ["existing.mp4"], "after {id}");
    }

    assert!(std::fs::read(disk.mount_point.join("existing.mp4")).unwrap() == old);
    let served = server.get("/videos/existing.mp4", &[]);
    assert_eq!(served.status, 200);
    assert!(served.body == old);
    let health = wait_for_tokens_in_use(&server, 0);
    assert_eq!(health["tokens_in_use"], 0, "log:\n{}", server.log());

    let small = variant(200_000, 32);
    let stored = upload(&server, "small.mp4", &small, &[]);
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert!(server.get("/videos/small.mp4", &[]).body == small);
    assert_eq!(file_names(&disk.mount_point), ["existing.mp4", "small.mp4"]);
}

// ---------------------------------------------------------------------------------------------
// Connection and token limits
// ---------------------------------------------------------------------------------------------

/// Opens a keep-alive connection that the server admitted, shown by a 200 from `/healthz`.
/// A 503 (or a reset after it) is retried for up to 5 s, because a connection that just closed
/// may still be counted.
fn admitted_connection(server: &TestServer) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = server.connect();
        let outcome = health_keep_alive(&mut stream);
        if outcome.as_ref().is_ok_and(|response| response.status == 200) {
            return stream;
        }
        if Instant::now() > deadline {
            panic!("no connection admitted within 5 s: {outcome:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a connection beyond `max_connections` and checks it gets 503 and is closed.
fn assert_connection_refused_with_503(server: &TestServer) {
    let mut extra = server.connect();
    let response = read_response(&mut extra, false).expect("a 503 without sending a request");
    assert_error(&response, 503, "too_many_connections");
    assert_eq!(response.header("retry-after"), Some("5"));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(is_closed_by_server(&mut extra), "the rejected connection stays open");
}

#[test]
fn max_connections_extra_sockets_get_503() {
    let server = TestServer::start(json!({"max_connections": 20}));
    let mut held: Vec<TcpStream> = (0..20).map(|_| admitted_connection(&server)).collect();

    for _ in 0..5 {
        assert_connection_refused_with_503(&server);
    }
    for stream in held.iter_mut().take(3) {
        assert_eq!(health_keep_alive(stream).unwrap().status, 200);
    }

    held.truncate(15);
    held.extend((0..5).map(|_| admitted_connection(&server)));
    assert_connection_refused_with_503(&server);
    assert!(server.log().contains("open connections at max_connections (20)"), "log:\n{}", server.log());
}

#[test]
fn per_ip_cap_is_429_but_other_address_served() {
    let server = TestServer::start(json!({"max_conns": 4, "max_conns_per_ip": 2}));
    let data = big_file();
    server.put_video("big.bin", &data);
    server.put_video("small.bin", b"small");

    let first = SlowDownload::start(&server, "/videos/big.bin", LOCALHOST);
    let second = SlowDownload::start(&server, "/videos/big.bin", LOCALHOST);

    let mut third = connect_from(LOCALHOST, server.addr, None);
    third.write_all(b"GET /videos/small.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let refused = read_response(&mut third, false).unwrap();
    assert_error(&refused, 429, "too_many_requests");
    assert_eq!(refused.header("retry-after"), Some("1"));

    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), server.addr, None);
    other.write_all(b"GET /videos/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let served = read_response(&mut other, false).unwrap();
    assert_eq!(served.status, 200);
    assert!(served.body == data, "the download from 127.0.0.2 differs from the file");

    let mut third_address = connect_from(Ipv4Addr::new(127, 0, 0, 3), server.addr, None);
    let report = health_keep_alive(&mut third_address).unwrap();
    assert_eq!(report.json(), json!({"status": "ok", "tokens_in_use": 2, "tokens_total": 4}));

    assert!(first.finish() == data, "first slow download differs");
    assert!(second.finish() == data, "second slow download differs");
    assert_eq!(wait_for_tokens_in_use(&server, 0)["tokens_in_use"], 0);
    let again = server.get("/videos/small.bin", &[]);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, b"small");
}
