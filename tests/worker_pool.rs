//! How workers share the work: keep-alive connections watched by the workers for their next
//! request, handed back to the poller when they stay quiet, and the bench of idle workers.
//!
//! Behaviours covered:
//! - a keep-alive connection is served whether its next request comes at once, within the
//!   workers' watch window, or long after it, and a head split across the hand-back is
//!   completed;
//! - the idle timeout still closes a connection that goes quiet after a response;
//! - while more workers than the machine has cores are blocked writing to clients that stopped
//!   reading, other clients still get their responses at once;
//! - when the busy workers change (a stalled client leaves, new ones arrive), every idle worker
//!   still waits where new requests reach it;
//! - a shutdown closes the connections the workers watch and the process exits;
//! - a pipelined batch whose first read ends exactly on a request boundary, with more
//!   requests still in the socket, is served without waiting for the poller.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::{connect_from, pattern, read_response, TestServer};
use serde_json::json;

fn get_healthz(stream: &mut TcpStream) {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let response = read_response(stream, false).expect("a complete response");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("Connection"), None, "the connection must stay open");
}

#[test]
fn keep_alive_served_at_any_pace() {
    let server = TestServer::start(json!({}));
    let mut stream = server.connect();

    // At once, within the watch window, after it, and well after the poller took it back.
    for pause_ms in [0, 0, 5, 50, 150, 400, 0, 250] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        get_healthz(&mut stream);
    }

    // A head whose first half arrives while the workers watch the connection.
    stream.write_all(b"GET /healthz HTT").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"P/1.1\r\nHost: t\r\n\r\n").unwrap();
    let response = read_response(&mut stream, false).expect("a complete response");
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn quiet_connection_meets_idle_timeout() {
    let server = TestServer::start(json!({"idle_timeout_secs": 1}));
    let mut stream = server.connect();
    get_healthz(&mut stream);

    let started = Instant::now();
    let mut byte = [0u8; 1];
    let n = stream.read(&mut byte).expect("the server closes the connection, not the read timeout");
    let waited = started.elapsed();
    assert_eq!(n, 0, "no bytes may follow the response");
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the idle timeout");
    assert!(waited < Duration::from_secs(4), "closed only after {waited:?}");
}

#[test]
fn requests_served_beside_stalled_clients() {
    let server = TestServer::start(json!({"max_conns": 64, "max_conns_per_ip": 64, "idle_timeout_secs": 30}));
    // Each response is below the size from which a writing worker stops counting as busy, so
    // the stalled workers below all count as busy.
    server.put_video("part.mp4", &pattern(200 << 10));

    // Pipelined downloads on connections that read nothing fill the socket buffers, then keep
    // a worker blocked in a write each: more of them than there are cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stalled: Vec<TcpStream> = (0..cores + 1)
        .map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, 10 + i as u8);
            let mut stream = connect_from(source, server.addr, Some(4096));
            let burst = b"GET /videos/part.mp4 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
            stream.write_all(&burst).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let mut stream = server.connect();
    for _ in 0..50 {
        get_healthz(&mut stream);
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "50 requests took {waited:?} beside the stalled clients");
    drop(stalled);
}

/// Opens a connection that pipelines 200 KiB downloads and reads nothing, so its worker blocks
/// in a write while it counts as busy.
fn stalled_client(server: &TestServer, source: Ipv4Addr) -> TcpStream {
    let mut stream = connect_from(source, server.addr, Some(4096));
    let burst = b"GET /videos/part.mp4 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(400);
    stream.write_all(&burst).unwrap();
    stream
}

#[test]
fn idle_workers_stay_reachable() {
    let server = TestServer::start(json!({"workers": 10, "max_conns": 40, "max_conns_per_ip": 40, "idle_timeout_secs": 30}));
    server.put_video("part.mp4", &pattern(200 << 10));

    // Workers that finish while one is stalled wait on the bench.
    let first = stalled_client(&server, Ipv4Addr::new(127, 0, 5, 1));
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..3u8 {
        let burst: Vec<_> = (0..10u8)
            .map(|i| {
                let addr = server.addr;
                std::thread::spawn(move || {
                    let mut stream = connect_from(Ipv4Addr::new(127, 0, 6 + round, i + 1), addr, None);
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    get_healthz(&mut stream);
                })
            })
            .collect();
        burst.into_iter().for_each(|t| t.join().unwrap());
    }

    // The stalled client leaves, so the bench empties into epoll; new stalled clients then
    // occupy every worker that waited there.
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    let stalled_later: Vec<_> = (0..4).map(|i| stalled_client(&server, Ipv4Addr::new(127, 0, 7, i + 1))).collect();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 9, 9), server.addr, None);
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    get_healthz(&mut stream);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "a fresh request waited {waited:?}");
    drop(stalled_later);
}

#[test]
fn shutdown_closes_watched_connections() {
    let mut server = TestServer::start(json!({"shutdown_grace_secs": 5}));
    let mut stream = server.connect();
    get_healthz(&mut stream);

    server.send_signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(4)).expect("the server exits");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    let mut rest = Vec::new();
    let n = stream.read_to_end(&mut rest).expect("an orderly close");
    assert_eq!(n, 0, "no bytes may follow the response: {:?}", String::from_utf8_lossy(&rest));
}

/// 256 pipelined requests of 64 bytes: the first read takes exactly the 8 KiB of the read
/// buffer, which ends on a request boundary, and the rest waits in the socket with no new
/// event to announce it. Stranded, they would wait for the poller to take the connection back
/// after the 100 ms watch window, so the fastest of three batches must beat that window.
#[test]
fn pipelined_batch_at_buffer_edge_served() {
    let server = TestServer::start(json!({}));
    let head = "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: ";
    let request = format!("{head}{}\r\n\r\n", "p".repeat(64 - head.len() - 4));
    assert_eq!(request.len(), 64);

    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let mut stream = server.connect();
        get_healthz(&mut stream);
        let started = Instant::now();
        stream.write_all(request.repeat(256).as_bytes()).unwrap();
        for i in 0..256 {
            let response = read_response(&mut stream, false).expect("a complete response");
            assert_eq!(response.status, 200, "response {i}: {}", response.text());
        }
        fastest = fastest.min(started.elapsed());
    }
    assert!(fastest < Duration::from_millis(90), "the fastest batch took {fastest:?}");
}
