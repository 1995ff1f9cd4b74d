//! Faults found by probing the running server from outside, each kept as a test of the correct
//! behaviour.
//!
//! Behaviours covered:
//! - a request followed at once by a half-close of the client's write side still gets a response,
//!   over HTTP/1.1 and HTTP/1.0;
//! - a `Connection: close` response arrives whole even when the client sends more bytes after
//!   its request (RFC 9112 §9.6: close in stages, never reset the client's unread response);
//! - an upload to an id of 255 bytes, the longest valid one, is stored;
//! - an overwriting upload to an id held by a folder gets 409 `video_exists`, not 500, and
//!   leaves no temporary file;
//! - `DELETE` of an id held by a folder gets 404 `video_not_found`, as `GET` does, not 500;
//! - a FIFO in `video_dir` gets 404 at once and holds no worker or token;
//! - a chunk size with a sign or leading whitespace is rejected with 400 and nothing is stored;
//! - a client that pipelines requests and never reads their 429 responses occupies no worker, so
//!   other clients still get 429 at once;
//! - a unix socket, a symbolic link loop or a link to a device at a video's path is 404, not
//!   500;
//! - an overwriting upload leaves no descriptor of the replaced file open;
//! - a file rewritten in place with its old size and modification time gets a new ETag;
//! - a file written through another hard link in `video_dir` is served as it is now.

mod common;

use std::ffi::CString;
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{connect_from, multipart_body, pattern, read_response, Response, TestServer};
use serde_json::json;

const BOUNDARY: &str = "BOUNDARYxyz";

/// Upload temporary files left in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".upload-"))
        .collect()
}

fn assert_error_code(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), code, "{}", response.text());
}

/// Returns `/healthz`'s `tokens_in_use`, polling up to two seconds for it to reach zero:
/// a worker returns its token just after the last byte is written, which a fast client can
/// overtake.
fn tokens_in_use(server: &TestServer) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let health = server.get("/healthz", &[]);
        assert_eq!(health.status, 200, "{}", health.text());
        let in_use = health.json()["tokens_in_use"].as_u64().unwrap();
        if in_use == 0 || Instant::now() >= deadline {
            return in_use;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn half_closed_request_gets_response() {
    let server = TestServer::start(json!({}));
    server.put_video("clip.mp4", b"0123456789");

    let requests = [
        "GET /videos/clip.mp4 HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /videos/clip.mp4 HTTP/1.0\r\n\r\n",
    ];
    for request in requests {
        for attempt in 0..10 {
            let mut stream = server.connect();
            stream.write_all(request.as_bytes()).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();

            let response = read_response(&mut stream, false)
                .unwrap_or_else(|e| panic!("{request:?}, attempt {attempt}: no response: {e}"));
            assert_eq!(response.status, 200, "{request:?}, attempt {attempt}");
            assert_eq!(response.body, b"0123456789", "{request:?}, attempt {attempt}");
        }
    }
}

#[test]
fn close_response_survives_late_client_bytes() {
    let server = TestServer::start(json!({}));
    let data = pattern(16 << 20);
    server.put_video("big.bin", &data);

    let mut stream = server.connect();
    stream.write_all(b"GET /videos/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    // The pauses only order the events: the server is mid-response when the extra bytes arrive.
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let response = read_response(&mut stream, false).expect("the whole response before the close");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.body == data, "the body differs from the stored video");
}

#[test]
fn upload_to_longest_id_is_stored() {
    let server = TestServer::start(json!({}));
    let id = "a".repeat(255);

    let response = server.upload(&id, b"0123456789", "");

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["id"], json!(id));
    assert_eq!(std::fs::read(server.video_dir.join(&id)).unwrap(), b"0123456789");
    assert!(temp_files(&server.video_dir).is_empty());
}

#[test]
fn overwrite_upload_onto_folder_is_409() {
    let server = TestServer::start(json!({}));
    std::fs::create_dir(server.video_dir.join("folder.mp4")).unwrap();

    let response = server.upload("folder.mp4", b"0123456789", "?overwrite=true");

    assert_error_code(&response, 409, "video_exists");
    assert!(server.video_dir.join("folder.mp4").is_dir(), "the folder was replaced");
    assert!(temp_files(&server.video_dir).is_empty());
}

#[test]
fn delete_of_folder_id_is_404() {
    let server = TestServer::start(json!({}));
    std::fs::create_dir(server.video_dir.join("folder.mp4")).unwrap();

    let get = server.get("/videos/folder.mp4", &[]);
    assert_error_code(&get, 404, "video_not_found");

    let delete = server.request("DELETE", "/videos/folder.mp4", &[]);
    assert_error_code(&delete, 404, "video_not_found");
    assert!(server.video_dir.join("folder.mp4").is_dir());
}

#[test]
fn fifo_video_is_404_at_once() {
    let server = TestServer::start(json!({}));
    let path = CString::new(server.video_dir.join("pipe.mp4").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0, "mkfifo failed");

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /videos/pipe.mp4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let response = read_response(&mut stream, false).expect("a response within 5 s, not a hung worker");

    assert_error_code(&response, 404, "video_not_found");
    assert_eq!(tokens_in_use(&server), 0);
}

#[test]
fn chunk_size_with_sign_or_space_is_400() {
    let server = TestServer::start(json!({}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", b"0123456789");

    for (id, size_line) in [("plus.mp4", format!("+{:x}", body.len())), ("space.mp4", format!(" {:x}", body.len()))] {
        let mut request = format!(
            "POST /upload/{id} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{size_line}\r\n"
        )
        .into_bytes();
        request.extend_from_slice(&body);
        request.extend_from_slice(b"\r\n0\r\n\r\n");

        let response = server.exchange(&request);

        assert_error_code(&response, 400, "bad_request");
        assert!(!server.video_dir.join(id).exists(), "{size_line:?}: the upload was stored");
    }
}

#[test]
fn unread_429_answers_hold_no_worker() {
    let server = TestServer::start(json!({
        "max_conns": 1,
        "max_conns_per_ip": 1,
        "workers": 2,
        "idle_timeout_secs": 30,
    }));
    server.put_video("big.mp4", &pattern(16 << 20));

    // A download that stops reading keeps the only token and one of the two workers.
    let mut holder = connect_from(Ipv4Addr::LOCALHOST, server.addr, Some(4096));
    holder.write_all(b"GET /videos/big.mp4 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    holder.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Read::read_exact(&mut holder, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Pipelined requests whose 429 responses are never read, until the server stops reading.
    let mut pipeliner = connect_from(Ipv4Addr::LOCALHOST, server.addr, Some(4096));
    pipeliner.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let burst = b"HEAD /videos/big.mp4 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && pipeliner.write_all(&burst).is_ok() {}

    let started = Instant::now();
    let rejected = server.get("/videos/big.mp4", &["Range: bytes=0-0"]);
    let waited = started.elapsed();
    assert_eq!(rejected.status, 429, "{}", rejected.text());
    assert!(waited < Duration::from_secs(3), "the 429 took {waited:?}");
    drop(pipeliner);
    drop(holder);
}

#[test]
fn socket_or_symlink_loop_is_404() {
    let server = TestServer::start(json!({}));
    let _listener = std::os::unix::net::UnixListener::bind(server.video_dir.join("socket.mp4")).unwrap();
    std::os::unix::fs::symlink("loop-b.mp4", server.video_dir.join("loop-a.mp4")).unwrap();
    std::os::unix::fs::symlink("loop-a.mp4", server.video_dir.join("loop-b.mp4")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", server.video_dir.join("zero.mp4")).unwrap();

    for id in ["socket.mp4", "loop-a.mp4", "zero.mp4"] {
        let response = server.get(&format!("/videos/{id}"), &[]);
        assert_error_code(&response, 404, "video_not_found");
    }
}

/// Returns the deleted files that the server process still has open.
fn deleted_open_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.ends_with(" (deleted)"))
        .collect()
}

#[test]
fn overwriting_upload_closes_the_old_file() {
    let server = TestServer::start(json!({}));
    assert_eq!(server.upload("a.mp4", &pattern(1 << 20), "").status, 201);
    assert_eq!(server.get("/videos/a.mp4", &[]).status, 200);

    let replaced = server.upload("a.mp4", b"new", "?overwrite=true");
    assert_eq!(replaced.status, 201, "{}", replaced.text());

    let deleted = deleted_open_files(server.pid());
    assert!(deleted.is_empty(), "the server still holds {deleted:?}");
    assert_eq!(server.get("/videos/a.mp4", &[]).body, b"new");
}

#[test]
fn in_place_rewrite_with_restored_mtime_changes_etag() {
    let server = TestServer::start(json!({}));
    let path = server.video_dir.join("a.mp4");
    std::fs::write(&path, b"first").unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let before = server.get("/videos/a.mp4", &[]);
    let old_etag = before.header("etag").unwrap().to_string();

    // Rewritten in place with the same size, then the old modification time put back, as
    // `rsync --inplace -t` does; only the change time shows the edit.
    std::thread::sleep(Duration::from_millis(20));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, b"other", 0).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);

    let after = server.get("/videos/a.mp4", &[]);
    assert_eq!(after.body, b"other");
    assert_ne!(after.header("etag").unwrap(), old_etag);
    let revalidated = server.get("/videos/a.mp4", &[&format!("If-None-Match: {old_etag}")]);
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, b"other");
}

#[test]
fn hard_link_write_is_served_fresh() {
    let server = TestServer::start(json!({}));
    let first = server.video_dir.join("a.mp4");
    let second = server.video_dir.join("b.mp4");
    std::fs::write(&first, b"first").unwrap();
    std::fs::hard_link(&first, &second).unwrap();
    assert_eq!(server.get("/videos/b.mp4", &[]).body, b"first");

    for round in 0..20u8 {
        let mut file = std::fs::OpenOptions::new().append(true).open(&first).unwrap();
        file.write_all(&[b'0' + round % 10]).unwrap();
        drop(file);

        let expected = std::fs::read(&first).unwrap();
        let response = server.get("/videos/b.mp4", &[]);
        assert_eq!(response.body, expected, "round {round}: b.mp4 was served from before the write");
    }
}

