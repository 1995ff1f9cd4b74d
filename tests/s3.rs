//! End-to-end tests of the S3 storage backend against a real S3-compatible server (s3s-fs,
//! which checks SigV4 signatures and presigned URLs).
//!
//! `scripts/s3-server.sh` starts the shared server and exports its address and the test
//! credentials. Without them every test here prints a message and passes, except under
//! `CI=true`, where the harness fails instead. The fault tests start and kill an s3s-fs of their own, named by
//! `STREAMSERVER_TEST_S3FS_BIN`, so they never disturb the shared one.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bigbuckbunny, pattern, read_response, Backend, TestServer};
use serde_json::{json, Value};
use streamserver::config::StorageConfig;
use streamserver::server::response::Body;
use streamserver::storage::s3::{EnvCredentials, S3Storage};
use streamserver::storage::Storage;

const ENDPOINT_VAR: &str = "STREAMSERVER_TEST_S3_ENDPOINT";
const BUCKET_VAR: &str = "STREAMSERVER_TEST_S3_BUCKET";
const S3FS_BIN_VAR: &str = "STREAMSERVER_TEST_S3FS_BIN";

/// Returns a key prefix that no other test uses, so tests can share one bucket.
fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("s3test-{}-{}-{}/", std::process::id(), started.as_nanos(), N.fetch_add(1, Ordering::Relaxed))
}

fn bucket_name() -> String {
    std::env::var(BUCKET_VAR).unwrap_or_else(|_| "streamserver-test".into())
}

/// Builds the `storage` section for `endpoint` and `prefix`, with `extra` fields merged in.
fn storage_section(endpoint: &str, prefix: &str, extra: Value) -> Value {
    let mut section = json!({
        "backend": "s3",
        "endpoint": endpoint,
        "region": "us-east-1",
        "bucket": bucket_name(),
        "prefix": prefix,
        "path_style": true,
        "serve": "proxy",
    });
    if let Value::Object(extra) = extra {
        for (key, value) in extra {
            section[key] = value;
        }
    }
    section
}

/// Starts a server on the shared S3 server with `extra` storage fields and key `prefix`, or
/// returns `None` (after the harness prints why) when no S3 server is configured.
fn start_on_prefix(prefix: &str, extra: Value) -> Option<TestServer> {
    let Ok(endpoint) = std::env::var(ENDPOINT_VAR) else {
        return TestServer::start_with(Backend::S3, json!({}));
    };
    TestServer::start_with(Backend::S3, json!({ "storage": storage_section(&endpoint, prefix, extra) }))
}

fn start_s3(extra: Value) -> Option<TestServer> {
    start_on_prefix(&unique_prefix(), extra)
}

/// Sends GET requests for `ranges` on one keep-alive connection.
fn get_ranges_on_one_connection(server: &TestServer, path: &str, ranges: &[&str]) -> Vec<common::Response> {
    let mut stream = server.connect();
    ranges
        .iter()
        .map(|range| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nRange: {range}\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            read_response(&mut stream, false).expect("a complete response")
        })
        .collect()
}

/// Counts the GET requests this server sent to the bucket so far, from its debug log.
fn bucket_gets(server: &TestServer) -> usize {
    server.log().lines().filter(|line| line.contains("attohttpc] GET /")).count()
}

fn temp_files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".upload-"))
        .collect()
}

#[test]
fn upload_then_ranges_are_byte_exact() {
    let Some(server) = start_s3(json!({})) else { return };
    let clip = bigbuckbunny();
    let size = clip.len();

    let response = server.upload("bunny.mp4", &clip, "");
    assert_eq!(response.status, 201, "{}", response.text());

    let whole = server.get("/videos/bunny.mp4", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-type"), Some("video/mp4"));
    assert_eq!(whole.header("content-length"), Some(size.to_string().as_str()));
    assert!(whole.body == clip, "whole body differs from the upload");

    let closed = server.get("/videos/bunny.mp4", &["Range: bytes=1000-1999"]);
    assert_eq!(closed.status, 206);
    assert_eq!(closed.header("content-range"), Some(format!("bytes 1000-1999/{size}").as_str()));
    assert!(closed.body == clip[1000..2000]);

    let open_ended = server.get("/videos/bunny.mp4", &["Range: bytes=500000-"]);
    assert_eq!(open_ended.status, 206);
    assert!(open_ended.body == clip[500_000..]);

    let suffix = server.get("/videos/bunny.mp4", &["Range: bytes=-700"]);
    assert_eq!(suffix.status, 206);
    assert!(suffix.body == clip[size - 700..]);

    let beyond = server.get("/videos/bunny.mp4", &[&format!("Range: bytes={size}-")]);
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some(format!("bytes */{size}").as_str()));
    assert_eq!(beyond.error_code(), "range_not_satisfiable");
}

#[test]
fn keep_alive_range_then_second_request() {
    let Some(server) = start_s3(json!({})) else { return };
    let bytes = pattern(100_000);
    server.put_video("clip.mp4", &bytes);

    let answers = get_ranges_on_one_connection(&server, "/videos/clip.mp4", &["bytes=0-1", "bytes=99990-"]);
    assert_eq!(answers[0].status, 206);
    assert!(answers[0].body == bytes[0..2]);
    assert_eq!(answers[1].status, 206);
    assert!(answers[1].body == bytes[99_990..]);
}

#[test]
fn head_sends_no_bucket_get() {
    let Some(server) = start_s3(json!({})) else { return };
    let bytes = pattern(50_000);
    server.put_video("head.mp4", &bytes);

    let gets_before = bucket_gets(&server);
    let head = server.request("HEAD", "/videos/head.mp4", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("50000"));
    assert!(head.header("etag").is_some());
    assert!(head.header("last-modified").is_some());
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert!(head.body.is_empty());
    assert_eq!(bucket_gets(&server), gets_before, "HEAD made the server GET the object");
}

#[test]
fn conditional_requests_use_the_etag() {
    let Some(server) = start_s3(json!({})) else { return };
    server.put_video("cond.mp4", &pattern(10_000));
    let etag = server.get("/videos/cond.mp4", &[]).header("etag").unwrap().to_string();

    let not_modified = server.get("/videos/cond.mp4", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());

    let failed = server.get("/videos/cond.mp4", &["If-Match: \"other\""]);
    assert_eq!(failed.status, 412);

    let stale_if_range = server.get("/videos/cond.mp4", &["Range: bytes=0-9", "If-Range: \"other\""]);
    assert_eq!(stale_if_range.status, 200);
    assert_eq!(stale_if_range.body.len(), 10_000);
}

#[test]
fn existing_id_conflicts_unless_overwrite() {
    let Some(server) = start_s3(json!({})) else { return };
    let first = pattern(3000);
    let second = pattern(5000);
    server.put_video("dup.mp4", &first);

    let conflict = server.upload("dup.mp4", &second, "");
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.error_code(), "video_exists");
    assert!(server.get("/videos/dup.mp4", &[]).body == first);

    let replaced = server.upload("dup.mp4", &second, "?overwrite=true");
    assert_eq!(replaced.status, 201, "{}", replaced.text());
    assert!(server.get("/videos/dup.mp4", &[]).body == second);
    assert!(temp_files_in(&server.video_dir).is_empty());
}

#[test]
fn large_upload_goes_multipart() {
    let Some(server) = start_s3(json!({})) else { return };
    let bytes = pattern(20 * 1024 * 1024 + 123);
    server.put_video("large.mp4", &bytes);

    assert!(server.log().contains("as 3 parts"), "expected a 3-part upload; log:\n{}", server.log());
    let middle = server.get("/videos/large.mp4", &["Range: bytes=8388600-8388700"]);
    assert_eq!(middle.status, 206);
    assert!(middle.body == bytes[8_388_600..=8_388_700], "bytes across a part boundary differ");
    let whole = server.get("/videos/large.mp4", &[]);
    assert!(whole.body == bytes, "whole multipart object differs");
}

#[test]
fn missing_video_is_json_404() {
    let Some(server) = start_s3(json!({})) else { return };
    let response = server.get("/videos/none.mp4", &[]);
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "video_not_found");
}

#[test]
fn two_instances_share_one_bucket() {
    let prefix = unique_prefix();
    let Some(first) = start_on_prefix(&prefix, json!({})) else { return };
    let Some(second) = start_on_prefix(&prefix, json!({})) else { return };
    let clip = bigbuckbunny();

    let uploaded = first.upload("shared.mp4", &clip, "");
    assert_eq!(uploaded.status, 201, "{}", uploaded.text());

    let range = second.get("/videos/shared.mp4", &["Range: bytes=100-100099"]);
    assert_eq!(range.status, 206);
    assert!(range.body == clip[100..100_100], "range through the second instance differs");
    let etag_first = first.request("HEAD", "/videos/shared.mp4", &[]).header("etag").map(str::to_string);
    let etag_second = second.request("HEAD", "/videos/shared.mp4", &[]).header("etag").map(str::to_string);
    assert!(etag_first.is_some());
    assert_eq!(etag_first, etag_second, "instances disagree on the ETag");

    let conflict = second.upload("shared.mp4", &clip, "");
    assert_eq!(conflict.status, 409, "the second instance did not see the first one's upload");
}

#[test]
fn redirect_location_serves_exact_bytes() {
    let Some(server) = start_s3(json!({ "serve": "redirect", "presign_ttl_secs": 300 })) else { return };
    let bytes = pattern(70_000);
    server.put_video("redir.mp4", &bytes);

    let response = server.get("/videos/redir.mp4", &[]);
    assert_eq!(response.status, 302);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let location = response.header("location").expect("a Location header").to_string();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=300"), "{location}");

    let (status, body) = curl(&location);
    assert_eq!(status, 200);
    assert!(body == bytes, "the presigned URL served other bytes");
    assert!(!server.log().contains("X-Amz-Signature"), "the server logged a presigned URL");
}

#[test]
fn redirect_for_missing_video_is_json_404() {
    let Some(server) = start_s3(json!({ "serve": "redirect" })) else { return };
    let response = server.get("/videos/absent.mp4", &[]);
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "video_not_found");
}

#[test]
fn tampered_presigned_url_refused() {
    let Some(server) = start_s3(json!({ "serve": "redirect" })) else { return };
    server.put_video("tamper.mp4", &pattern(1000));
    let location = server.get("/videos/tamper.mp4", &[]).header("location").unwrap().to_string();

    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = location.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let (status, body) = curl(&String::from_utf8(tampered).unwrap());
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    let (status, _) = curl(&location);
    assert_eq!(status, 200, "the untouched URL should still work");
}

#[test]
fn expired_presigned_url_refused() {
    let Some(server) = start_s3(json!({ "serve": "redirect", "presign_ttl_secs": 1 })) else { return };
    server.put_video("expire.mp4", &pattern(1000));
    let location = server.get("/videos/expire.mp4", &[]).header("location").unwrap().to_string();

    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = curl(&location);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn wrong_secret_gives_storage_access_denied() {
    let Some(mut bucket) = PrivateS3::start() else { return };
    bucket.secret_key = "a-different-secret".to_string();
    bucket.restart();
    let Some(server) = start_on_private(&bucket) else { return };

    let read = server.get("/videos/any.mp4", &[]);
    assert_eq!(read.status, 502, "{}", read.text());
    assert_eq!(read.error_code(), "storage_access_denied");

    let write = server.upload("any.mp4", &pattern(100), "");
    assert_eq!(write.status, 502, "{}", write.text());
    assert_eq!(write.error_code(), "storage_access_denied");
    assert!(!write.text().contains("Signature"), "bucket details leaked to the client: {}", write.text());
}

#[test]
fn unreachable_bucket_gives_storage_unavailable() {
    let Ok(_) = std::env::var(ENDPOINT_VAR) else {
        assert!(TestServer::start_with(Backend::S3, json!({})).is_none());
        return;
    };
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{closed_port}");
    let storage = storage_section(&endpoint, &unique_prefix(), json!({}));
    let server = TestServer::start_with(Backend::S3, json!({ "storage": storage })).unwrap();

    let response = server.get("/videos/any.mp4", &[]);
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.error_code(), "storage_unavailable");
    assert_eq!(response.header("retry-after"), Some("5"));
}

#[test]
fn missing_bucket_stops_startup() {
    let Ok(endpoint) = std::env::var(ENDPOINT_VAR) else {
        assert!(TestServer::start_with(Backend::S3, json!({})).is_none());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut storage = storage_section(&endpoint, "p/", json!({}));
    storage["bucket"] = json!("no-such-bucket-here");
    let config = json!({ "listen": "127.0.0.1:0", "video_dir": dir.path().join("v"), "storage": storage });
    let config_path = dir.path().join("conf.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_streamserver"))
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no-such-bucket-here") && stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn bucket_killed_during_upload() {
    let Some(mut bucket) = PrivateS3::start() else { return };
    let Some(server) = start_on_private(&bucket) else { return };
    let bytes = pattern(48 * 1024 * 1024);

    let response = std::thread::scope(|scope| {
        let upload = scope.spawn(|| server.upload("cut.mp4", &bytes, ""));
        wait_for_log(&server, "uploading part 2 of", Duration::from_secs(60));
        bucket.kill();
        upload.join().unwrap()
    });
    assert!(
        response.status == 502 || response.status == 503,
        "expected 502 or 503, got {}: {}",
        response.status,
        response.text()
    );
    assert!(response.error_code().starts_with("storage_"), "{}", response.text());
    assert!(temp_files_in(&server.video_dir).is_empty(), "an upload temporary file remains");

    bucket.restart();
    let after = server.get("/videos/cut.mp4", &[]);
    assert_eq!(after.status, 404, "a partial object is visible: {}", after.status);
    assert!(!bucket.object_path("cut.mp4").exists());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bucket.upload_leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        bucket.upload_leftovers().is_empty(),
        "multipart parts remain after the bucket came back: {:?}",
        bucket.upload_leftovers()
    );
}

#[test]
fn bucket_killed_during_stream() {
    let Some(mut bucket) = PrivateS3::start() else { return };
    let Some(server) = start_on_private(&bucket) else { return };
    // Written straight into s3s-fs's folder: uploading it through a debug build is slow. At
    // 64 MiB it is far larger than what the socket buffers on the way can hold.
    let size = 64 * 1024 * 1024;
    let object = bucket.object_path("long.mp4");
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, pattern(size)).unwrap();

    let mut stream = server.connect();
    stream.write_all(b"GET /videos/long.mp4 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = vec![0u8; 1024 * 1024];
    if let Err(e) = stream.read_exact(&mut first) {
        panic!("the first MiB did not arrive before the bucket was stopped: {e}; server log:\n{}", server.log());
    }
    assert!(first.starts_with(b"HTTP/1.1 200"));

    bucket.kill();
    let received = first.len() + read_until_closed(&mut stream);
    assert!(received < size, "the whole object arrived although the bucket died");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health = server.get("/healthz", &[]).json();
        if health["tokens_in_use"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a token stayed in use: {health}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn streaming_holds_token_and_flat_memory() {
    let Some(bucket) = PrivateS3::start() else { return };
    let Some(server) = start_on_private(&bucket) else { return };
    let size = 64 * 1024 * 1024;
    let object = bucket.object_path("flat.mp4");
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, pattern(size)).unwrap();
    let peak_before = peak_rss_kib(server.pid());

    let mut stream = server.connect();
    stream.write_all(b"GET /videos/flat.mp4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = vec![0u8; 1024 * 1024];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(server.get("/healthz", &[]).json()["tokens_in_use"], 1, "the stream does not hold its token");

    let received = first.len() + read_until_closed(&mut stream);
    let head_len = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(received - head_len, size, "the body is incomplete");
    let growth_kib = peak_rss_kib(server.pid()) - peak_before;
    assert!(growth_kib < 16 * 1024, "streaming 64 MiB raised peak memory by {growth_kib} KiB");
}

/// The peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens `id` through the library, lets `change` alter the bucket, then reads the whole body.
fn read_after_change(id: &str, bytes: &[u8], change: impl FnOnce(&dyn Storage, &Path)) -> std::io::Result<Vec<u8>> {
    let endpoint = std::env::var(ENDPOINT_VAR).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let section = storage_section(&endpoint, &unique_prefix(), json!({}));
    let config: StorageConfig = serde_json::from_value(section).unwrap();
    let storage = S3Storage::new(&config, dir.path(), EnvCredentials::from_env().unwrap()).unwrap();
    let staged = dir.path().join("staged");
    std::fs::write(&staged, bytes).unwrap();
    storage.commit(&staged, id, false).unwrap();

    let object = storage.open(id).unwrap();
    change(&storage, dir.path());
    let Body::Stream { mut reader, len } = object.source.range_body(0, object.info.size) else {
        panic!("the S3 backend returned a body that is not a stream");
    };
    let mut body = Vec::new();
    reader.read_to_end(&mut body)?;
    assert_eq!(body.len() as u64, len);
    Ok(body)
}

#[test]
fn stream_of_deleted_object_fails_without_xml() {
    if std::env::var(ENDPOINT_VAR).is_err() {
        assert!(TestServer::start_with(Backend::S3, json!({})).is_none());
        return;
    }
    let bytes = pattern(5000);
    let result = read_after_change("gone.mp4", &bytes, |storage, _| storage.delete("gone.mp4").unwrap());
    match result {
        Ok(body) => panic!("{} bytes streamed from a deleted object", body.len()),
        Err(error) => assert!(!error.to_string().contains("<?xml"), "{error}"),
    }
}

#[test]
fn stream_of_replaced_object_fails() {
    if std::env::var(ENDPOINT_VAR).is_err() {
        assert!(TestServer::start_with(Backend::S3, json!({})).is_none());
        return;
    }
    let bytes = pattern(5000);
    let result = read_after_change("swap.mp4", &bytes, |storage, dir| {
        let staged = dir.join("replacement");
        std::fs::write(&staged, pattern(6000)).unwrap();
        storage.commit(&staged, "swap.mp4", true).unwrap();
    });
    match result {
        Ok(body) => panic!("{} bytes streamed although the object was replaced", body.len()),
        Err(error) => assert!(error.to_string().contains("replaced"), "{error}"),
    }
}

/// Reads until the server closes the connection. Returns the bytes read; a read timeout
/// (the server kept the connection open) fails the test.
fn read_until_closed(stream: &mut TcpStream) -> usize {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("the connection did not end after the bucket died: {e}"),
        }
    }
}

fn wait_for_log(server: &TestServer, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !server.log().contains(needle) {
        assert!(Instant::now() < deadline, "{needle:?} never appeared in the log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Fetches `url` with curl. Returns the status and the body.
fn curl(url: &str) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&body_path)
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("running curl");
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
    (status, std::fs::read(&body_path).unwrap_or_default())
}

/// Starts a server on a private s3s-fs.
fn start_on_private(bucket: &PrivateS3) -> Option<TestServer> {
    let storage = storage_section(&bucket.endpoint(), "p/", json!({}));
    TestServer::start_with(Backend::S3, json!({ "storage": storage }))
}

/// An s3s-fs process of one test, on its own port and data folder, that the test may kill and
/// restart on the same port and data.
struct PrivateS3 {
    bin: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
}

impl PrivateS3 {
    /// Starts one, or returns `None` with a message when `scripts/s3-server.sh` has not set
    /// up the environment.
    fn start() -> Option<PrivateS3> {
        let (Ok(bin), Ok(_)) = (std::env::var(S3FS_BIN_VAR), std::env::var(ENDPOINT_VAR)) else {
            assert!(std::env::var("CI").is_err(), "CI=true but {S3FS_BIN_VAR} is unset: run scripts/test.sh");
            eprintln!("skipping: {S3FS_BIN_VAR} is unset (scripts/s3-server.sh sets it)");
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket_name())).unwrap();
        let mut s3 = PrivateS3 {
            bin: PathBuf::from(bin),
            root,
            port: 0,
            access_key: std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
            secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
            child: None,
        };
        // A free port can be taken by another process before s3s-fs binds it, so a start
        // that loses its port is tried again on a new one.
        for _ in 0..5 {
            s3.port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if s3.try_spawn() {
                return Some(s3);
            }
        }
        panic!("s3s-fs lost its port to another process five times");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts s3s-fs on `self.port`, again after a [`PrivateS3::kill`]. Panics when it cannot.
    fn spawn(&mut self) {
        assert!(self.try_spawn(), "s3s-fs exited at startup; another process holds port {}", self.port);
    }

    /// Starts s3s-fs on `self.port` and waits until it accepts connections. Returns false
    /// when it exited instead, such as when another process has the port.
    fn try_spawn(&mut self) -> bool {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key, "--secret-key", &self.secret_key])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start on port {}", self.port);
            if !self.running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A connect can reach another process that took the port first. This s3s-fs then
        // fails to bind and exits, so it is still running only when the port is its own.
        std::thread::sleep(Duration::from_millis(50));
        self.running()
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Where s3s-fs keeps video `id` of a server started by [`start_on_private`].
    fn object_path(&self, id: &str) -> PathBuf {
        self.root.path().join(bucket_name()).join("p").join(id)
    }

    /// The files s3s-fs keeps for multipart uploads in progress.
    fn upload_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
    }
}
