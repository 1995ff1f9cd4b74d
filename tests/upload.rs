//! `POST /upload/{id}` against the real binary on local storage.
//!
//! Covers:
//! - the happy path: 201, `Location`, `{"id", "size", "url"}`, the file byte-exact on disk and
//!   no upload temporary file left behind, for `Content-Length` and chunked bodies;
//! - 409 `video_exists` for a stored id (file untouched) and `?overwrite=true` replacing it;
//! - 413 `upload_too_large` from the declared length before any body byte, with no
//!   `100 Continue`, and for a chunked body once it passes the limit;
//! - a body of exactly `max_upload_bytes` is accepted;
//! - 415 `not_multipart`, 400 `missing_file_field` and 400 `malformed_multipart`;
//! - hand-built multipart bodies (other fields, quoted boundary, `filename*`, GBK filename bytes,
//!   content ending in CRLFs or holding boundary look-alikes, preamble and epilogue, no CRLF
//!   after the closing delimiter) stored byte-exact;
//! - a client that hangs up or stalls mid-upload leaves no file and no temporary file, and an
//!   existing video under that id stays untouched;
//! - a reader during an overwrite sees the old or the new complete file, never a mix;
//! - a chunked upload whose last chunk arrives after the closing boundary was parsed keeps
//!   its connection open for the next request, and a body that stops short after the closing
//!   boundary, or trickles in, gets its 201 at once, with `Connection: close`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{multipart_body, pattern, read_response, Response, TestServer};
use serde_json::json;

const BOUNDARY: &str = "BOUNDARYxyz";

fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error_code(), code, "body: {}", response.text());
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

/// Polls `dir` until it contains exactly `expected`, for at most 5 s, and returns the last listing.
fn wait_for_names(dir: &Path, expected: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names = file_names(dir);
        if names == expected || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upload_request(id_and_query: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /upload/{id_and_query} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn post(server: &TestServer, id_and_query: &str, content_type: &str, body: &[u8]) -> Response {
    server.exchange(&upload_request(id_and_query, content_type, body))
}

/// Sends an upload like `post`, and fails with the server log when no response arrives within 10 s.
fn post_bounded(server: &TestServer, id_and_query: &str, content_type: &str, body: &[u8]) -> Response {
    let mut stream = server.connect();
    stream.write_all(&upload_request(id_and_query, content_type, body)).unwrap();
    match read_response(&mut stream, false) {
        Ok(response) => response,
        Err(e) => panic!("no response within 10 s ({e}); server log:\n{}", server.log()),
    }
}

fn form_data(boundary: &str) -> String {
    format!("multipart/form-data; boundary={boundary}")
}

/// Reads one response head byte by byte, so nothing after it is consumed.
fn read_head_text(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("reading the response head failed after {:?}: {e}", String::from_utf8_lossy(&head)),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn upload_stores_file_byte_exact() {
    let server = TestServer::start(json!({}));
    let data = pattern(300_000);

    let response = server.upload("clip.mp4", &data, "");

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("location"), Some("/videos/clip.mp4"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json(), json!({"id": "clip.mp4", "size": 300_000, "url": "/videos/clip.mp4"}));
    assert!(std::fs::read(server.video_dir.join("clip.mp4")).unwrap() == data, "stored file differs");
    assert_eq!(file_names(&server.video_dir), ["clip.mp4"]);
}

#[test]
fn empty_file_upload_is_stored() {
    let server = TestServer::start(json!({}));

    let response = server.upload("empty.mp4", b"", "");

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["size"], 0);
    assert_eq!(std::fs::read(server.video_dir.join("empty.mp4")).unwrap(), b"");
}

#[test]
fn chunked_upload_is_stored() {
    let server = TestServer::start(json!({}));
    let data = pattern(100_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);

    let mut request = format!(
        "POST /upload/chunked.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        form_data(BOUNDARY)
    )
    .into_bytes();
    request.extend_from_slice(&chunked(&body, 7_000));
    let response = server.exchange(&request);

    assert_eq!(response.status, 201, "{}", response.text());
    assert!(std::fs::read(server.video_dir.join("chunked.mp4")).unwrap() == data, "stored file differs");
    assert_eq!(file_names(&server.video_dir), ["chunked.mp4"]);
}

#[test]
fn late_last_chunk_keeps_the_connection_open() {
    let server = TestServer::start(json!({}));
    let data = pattern(50_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);
    let framed = chunked(&body, 8_000);
    let (before_last, last) = framed.split_at(framed.len() - b"0\r\n\r\n".len());

    let mut stream = server.connect();
    let head = format!(
        "POST /upload/late.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form_data(BOUNDARY)
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(before_last).unwrap();
    // Well within the 250 ms the server waits for the end of the body.
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(last).unwrap();

    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("connection"), None, "the connection must stay open");
    stream.write_all(b"GET /videos/late.mp4 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let download = read_response(&mut stream, false).unwrap();
    assert_eq!(download.status, 200);
    assert!(download.body == data, "downloaded bytes differ");
}

#[test]
fn short_body_answered_at_once() {
    let server = TestServer::start(json!({"idle_timeout_secs": 10}));
    let data = pattern(20_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);

    let mut stream = server.connect();
    let head = format!(
        "POST /upload/short.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form_data(BOUNDARY),
        body.len() + 2
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();

    let started = Instant::now();
    let response = read_response(&mut stream, false).unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(waited < Duration::from_secs(5), "the 201 took {waited:?}, close to the 10 s idle timeout");
    assert!(std::fs::read(server.video_dir.join("short.mp4")).unwrap() == data, "stored file differs");
}

/// Writes `piece` every 50 ms, 100 times (5 s), after the upload already sent on `stream`,
/// and checks that the 201 arrives with `Connection: close` long before the trickle ends.
fn assert_cut_off_while_trickling(mut stream: TcpStream, piece: &'static [u8]) {
    let started = Instant::now();
    let mut trickler = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if trickler.write_all(piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    let response = read_response(&mut stream, false).unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(waited < Duration::from_secs(3), "the 201 took {waited:?}; the rest takes 5 s to trickle in");
    drop(stream);
    trickle.join().unwrap();
}

#[test]
fn trickled_epilogue_is_cut_off_at_once() {
    let server = TestServer::start(json!({"idle_timeout_secs": 10}));
    let data = pattern(20_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);
    let epilogue_len = 100;

    let mut stream = server.connect();
    let head = format!(
        "POST /upload/trickle.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form_data(BOUNDARY),
        body.len() + epilogue_len
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();

    assert_cut_off_while_trickling(stream, b"e");
}

#[test]
fn trickled_trailers_are_cut_off_at_once() {
    let server = TestServer::start(json!({"idle_timeout_secs": 10}));
    let data = pattern(20_000);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);

    let mut stream = server.connect();
    let head = format!(
        "POST /upload/trailers.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        form_data(BOUNDARY),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    stream.write_all(b"\r\n0\r\n").unwrap();

    // One short trailer line at a time, each arriving well within any per-read timeout.
    assert_cut_off_while_trickling(stream, b"X-T: 1\r\n");
}

#[test]
fn existing_id_is_409_and_untouched() {
    let server = TestServer::start(json!({}));
    server.put_video("clip.mp4", b"original bytes");

    let response = server.upload("clip.mp4", &pattern(5000), "");

    assert_error(&response, 409, "video_exists");
    assert_eq!(std::fs::read(server.video_dir.join("clip.mp4")).unwrap(), b"original bytes");
    assert_eq!(wait_for_names(&server.video_dir, &["clip.mp4"]), ["clip.mp4"]);
}

#[test]
fn overwrite_replaces_existing() {
    let server = TestServer::start(json!({}));
    server.put_video("clip.mp4", b"original bytes");
    let data = pattern(5000);

    let response = server.upload("clip.mp4", &data, "?overwrite=true");

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["size"], 5000);
    assert!(std::fs::read(server.video_dir.join("clip.mp4")).unwrap() == data, "file was not replaced");
    assert_eq!(file_names(&server.video_dir), ["clip.mp4"]);
}

#[test]
fn declared_length_over_limit_is_413_before_body() {
    let server = TestServer::start(json!({"max_upload_bytes": 1000}));

    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut stream = server.connect();
        let head = format!(
            "POST /upload/big.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: 1001\r\n{expect}\r\n",
            form_data(BOUNDARY)
        );
        stream.write_all(head.as_bytes()).unwrap();

        // No body byte is sent, so the response must come from the head alone.
        let first_head = read_head_text(&mut stream);
        assert!(first_head.starts_with("HTTP/1.1 413 "), "{expect:?}: first response head was {first_head:?}");
        let length: usize = header_in(&first_head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "upload_too_large", "{expect:?}");
    }

    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn body_of_exactly_the_limit_is_accepted() {
    let server = TestServer::start(json!({"max_upload_bytes": 1000}));
    let framing = multipart_body(BOUNDARY, "file", "clip.mp4", b"").len();
    let data = pattern(1000 - framing);
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &data);
    assert_eq!(body.len(), 1000);

    let response = post(&server, "fits.mp4", &form_data(BOUNDARY), &body);

    assert_eq!(response.status, 201, "{}", response.text());
    assert!(std::fs::read(server.video_dir.join("fits.mp4")).unwrap() == data, "stored file differs");
}

#[test]
fn chunked_body_over_limit_is_413() {
    let server = TestServer::start(json!({"max_upload_bytes": 1000}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &pattern(3000));

    let mut stream = server.connect();
    let head = format!(
        "POST /upload/big.mp4 HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form_data(BOUNDARY)
    );
    // The server may respond and stop reading before the last chunk, so a failed write is fine.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&chunked(&body, 256));
    let response = read_response(&mut stream, false).expect("a 413 response");

    assert_error(&response, 413, "upload_too_large");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn non_multipart_is_415() {
    let server = TestServer::start(json!({}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", b"data");

    for content_type in ["application/octet-stream", "video/mp4", "multipart/mixed; boundary=BOUNDARYxyz", "text/plain"] {
        let response = post(&server, "clip.mp4", content_type, &body);
        assert_error(&response, 415, "not_multipart");
        assert_eq!(
            response.json()["error"]["message"],
            format!(
                "the upload must be multipart/form-data with a boundary: the Content-Type is {content_type:?}; \
                 send the file as a form field, as curl -F file=@clip.mp4 does"
            )
        );
    }

    let request = format!(
        "POST /upload/clip.mp4 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);
    let response = server.exchange(&request);
    assert_error(&response, 415, "not_multipart");
    assert_eq!(
        response.json()["error"]["message"],
        "the upload must be multipart/form-data with a boundary: the request has no Content-Type; \
         send the file as a form field, as curl -F file=@clip.mp4 does"
    );

    assert_eq!(file_names(&server.video_dir), Vec::<String>::new());
}

#[test]
fn missing_file_field_is_400() {
    let server = TestServer::start(json!({}));
    let body = multipart_body(BOUNDARY, "video", "clip.mp4", b"data");
    let empty = format!("--{BOUNDARY}--\r\n");

    assert_error(&post(&server, "clip.mp4", &form_data(BOUNDARY), &body), 400, "missing_file_field");
    assert_error(&post(&server, "clip.mp4", &form_data(BOUNDARY), empty.as_bytes()), 400, "missing_file_field");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn header_line_without_colon_is_malformed() {
    let server = TestServer::start(json!({}));
    let body = format!("--{BOUNDARY}\r\nthis line is no header\r\n\r\ndata\r\n--{BOUNDARY}--\r\n");

    let response = post_bounded(&server, "clip.mp4", &form_data(BOUNDARY), body.as_bytes());

    assert_error(&response, 400, "malformed_multipart");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn body_without_delimiter_is_malformed() {
    let server = TestServer::start(json!({}));

    let response = post_bounded(&server, "clip.mp4", &form_data(BOUNDARY), &pattern(2000));

    assert_error(&response, 400, "malformed_multipart");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn body_ending_before_close_is_malformed() {
    let server = TestServer::start(json!({}));
    let whole = multipart_body(BOUNDARY, "file", "clip.mp4", &pattern(2000));
    // The HTTP body is complete, but the multipart body stops inside the file part.
    let body = &whole[..whole.len() - 100];

    let response = post_bounded(&server, "clip.mp4", &form_data(BOUNDARY), body);

    assert_error(&response, 400, "malformed_multipart");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

#[test]
fn empty_body_is_malformed() {
    let server = TestServer::start(json!({}));

    let response = post_bounded(&server, "clip.mp4", &form_data(BOUNDARY), b"");

    assert_error(&response, 400, "malformed_multipart");
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
}

/// A body built by hand, the `Content-Type` it is sent with, and the file bytes it carries.
struct Case {
    name: &'static str,
    content_type: String,
    body: Vec<u8>,
    expected: Vec<u8>,
}

fn concat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

fn multipart_cases() -> Vec<Case> {
    let data = pattern(5000);
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let boundary = BOUNDARY;
    let file_head = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n");
    let close = format!("\r\n--{boundary}--\r\n");

    vec![
        Case {
            name: "other fields before and after",
            content_type: form_data(boundary),
            body: concat(&[
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nMy clip\r\n").as_bytes(),
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"notfile\"; filename=\"x.mp4\"\r\n\r\nxxxx\r\n").as_bytes(),
                file_head.as_bytes(),
                &data,
                format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"after\"\r\n\r\nlater").as_bytes(),
                close.as_bytes(),
            ]),
            expected: data.clone(),
        },
        Case {
            name: "quoted boundary with special characters",
            content_type: "multipart/form-data; boundary=\"odd:bound ary(1)\"".to_string(),
            body: concat(&[
                b"--odd:bound ary(1)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n",
                &data,
                b"\r\n--odd:bound ary(1)--\r\n",
            ]),
            expected: data.clone(),
        },
        Case {
            name: "filename* in UTF-8",
            content_type: form_data(boundary),
            body: concat(&[
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''%E8%A7%86%E9%A2%91.mp4\r\nContent-Type: video/mp4\r\n\r\n"
                )
                .as_bytes(),
                &data,
                close.as_bytes(),
            ]),
            expected: data.clone(),
        },
        Case {
            name: "GBK filename bytes",
            content_type: form_data(boundary),
            body: concat(&[
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"").as_bytes(),
                &[0xCA, 0xD3, 0xC6, 0xB5],
                b".mp4\"\r\n\r\n",
                &data,
                close.as_bytes(),
            ]),
            expected: data.clone(),
        },
        Case {
            name: "content ending in CRLFs",
            content_type: form_data(boundary),
            body: concat(&[file_head.as_bytes(), b"data\r\n\r\n\r\n", close.as_bytes()]),
            expected: b"data\r\n\r\n\r\n".to_vec(),
        },
        Case {
            name: "content holding boundary look-alikes",
            content_type: form_data(boundary),
            body: concat(&[
                file_head.as_bytes(),
                format!("a\r\n--{boundary}x\r\n--{boundary}-\r\n--BOUNDARYxy\r\n-").as_bytes(),
                close.as_bytes(),
            ]),
            expected: format!("a\r\n--{boundary}x\r\n--{boundary}-\r\n--BOUNDARYxy\r\n-").into_bytes(),
        },
        Case {
            name: "preamble and epilogue",
            content_type: form_data(boundary),
            body: concat(&[
                b"This is the preamble.\r\nIt is ignored.\r\n",
                file_head.as_bytes(),
                &data,
                close.as_bytes(),
                b"This is the epilogue.\r\n--BOUNDARYxyz\r\nnot a part\r\n",
            ]),
            expected: data.clone(),
        },
        Case {
            name: "no CRLF after the closing delimiter",
            content_type: form_data(boundary),
            body: concat(&[file_head.as_bytes(), &data, format!("\r\n--{boundary}--").as_bytes()]),
            expected: data.clone(),
        },
        Case {
            name: "every byte value",
            content_type: form_data(boundary),
            body: concat(&[file_head.as_bytes(), &all_bytes, close.as_bytes()]),
            expected: all_bytes.clone(),
        },
        Case {
            name: "lowercase header names and extra part headers",
            content_type: "Multipart/Form-Data; charset=utf-8; boundary=BOUNDARYxyz".to_string(),
            body: concat(&[
                format!(
                    "--{boundary}\r\ncontent-type: application/octet-stream\r\ncontent-disposition: form-data; filename=\"a.mp4\"; name=file\r\nX-Extra: 1\r\n\r\n"
                )
                .as_bytes(),
                &data,
                close.as_bytes(),
            ]),
            expected: data.clone(),
        },
    ]
}

#[test]
fn multipart_variants_store_exact_bytes() {
    let server = TestServer::start(json!({}));

    for (i, case) in multipart_cases().into_iter().enumerate() {
        let id = format!("case{i}.bin");
        let response = post(&server, &id, &case.content_type, &case.body);

        assert_eq!(response.status, 201, "{}: {}", case.name, response.text());
        assert_eq!(response.json()["size"], case.expected.len(), "{}", case.name);
        let stored = std::fs::read(server.video_dir.join(&id)).unwrap();
        assert!(stored == case.expected, "{}: stored {} bytes differ from the sent file", case.name, stored.len());
    }

    assert!(file_names(&server.video_dir).iter().all(|name| name.starts_with("case")));
}

#[test]
fn client_hangup_mid_upload_leaves_nothing() {
    let server = TestServer::start(json!({}));

    send_half_and_close(&server, "cut.mp4", "");

    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
    assert_eq!(server.get("/videos/cut.mp4", &[]).status, 404);
}

#[test]
fn cut_overwrite_keeps_existing_video() {
    let server = TestServer::start(json!({}));
    server.put_video("clip.mp4", b"original bytes");

    send_half_and_close(&server, "clip.mp4", "?overwrite=true");

    assert_eq!(wait_for_names(&server.video_dir, &["clip.mp4"]), ["clip.mp4"]);
    assert_eq!(std::fs::read(server.video_dir.join("clip.mp4")).unwrap(), b"original bytes");
}

#[test]
fn stalled_upload_times_out_and_leaves_nothing() {
    let server = TestServer::start(json!({"idle_timeout_secs": 1}));
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &pattern(200_000));

    let mut stream = server.connect();
    let request = upload_request("stalled.mp4", &form_data(BOUNDARY), &body);
    stream.write_all(&request[..request.len() / 2]).unwrap();

    // The connection stays open and silent; the server gives up after idle_timeout_secs.
    assert_eq!(wait_for_names(&server.video_dir, &[]), Vec::<String>::new());
    drop(stream);
}

#[test]
fn reader_during_overwrite_sees_whole_versions() {
    let server = Arc::new(TestServer::start(json!({})));
    let old = pattern(1 << 20);
    let new: Vec<u8> = pattern(3 << 19).iter().map(|byte| byte ^ 0x5A).collect();
    server.put_video("v.bin", &old);

    let done = Arc::new(AtomicBool::new(false));
    let uploader = {
        let server = server.clone();
        let done = done.clone();
        let new = new.clone();
        std::thread::spawn(move || {
            let response = upload_slowly(&server, "v.bin?overwrite=true", &new);
            done.store(true, Ordering::SeqCst);
            response
        })
    };

    let (mut saw_old, mut saw_new) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
        let response = server.get("/videos/v.bin", &[]);
        assert_eq!(response.status, 200);
        if response.body == old {
            saw_old += 1;
        } else if response.body == new {
            saw_new += 1;
        } else {
            panic!("read {} bytes that are neither the old nor the new file", response.body.len());
        }
    }

    let response = uploader.join().unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    assert!(saw_old > 0, "no read happened while the upload was running (new reads: {saw_new})");
    assert!(server.get("/videos/v.bin", &[]).body == new, "final file is not the new upload");
    assert_eq!(file_names(&server.video_dir), ["v.bin"]);
}

/// Sends the head and half of a valid upload body, then closes the connection.
fn send_half_and_close(server: &TestServer, id: &str, query: &str) {
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", &pattern(200_000));
    let request = upload_request(&format!("{id}{query}"), &form_data(BOUNDARY), &body);

    let mut stream = server.connect();
    stream.write_all(&request[..request.len() - body.len() / 2]).unwrap();
    stream.shutdown(Shutdown::Both).unwrap();
}

/// Uploads `data` in 32 KiB writes 10 ms apart, so the upload takes about half a second.
fn upload_slowly(server: &TestServer, id_and_query: &str, data: &[u8]) -> Response {
    let body = multipart_body(BOUNDARY, "file", "clip.mp4", data);
    let request = upload_request(id_and_query, &form_data(BOUNDARY), &body);

    let mut stream = server.connect();
    for piece in request.chunks(32 * 1024) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    read_response(&mut stream, false).unwrap()
}

/// Frames `body` as chunks of at most `size` bytes with the last-chunk and an empty trailer.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut framed = Vec::new();
    for piece in body.chunks(size) {
        framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    framed
}

fn header_in<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}
