//! Properties of the chunked body decoder in `BodyReader`, which reads from a `Connection` and
//! so needs a real socket.
//!
//! One loopback TCP pair is opened per process and reused. Each input is written to the client
//! side and, once all of it has arrived, decoded from a `Connection` on the nonblocking server
//! side. Then the rest is drained.
//! An input that ends early then fails with `WouldBlock`, as a body whose remaining bytes have
//! not arrived yet. The decoder must agree with the reference decoder below on the body
//! bytes, on success or failure, and on where the body ends. The end matters most: a decoder
//! that stops early or late lets a client smuggle bytes in as the next request.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use streamserver::server::body::{bad_chunk_reason, BodyReader};
use streamserver::server::conn::Connection;
use streamserver::server::request::BodyFraming;

/// Largest body input; loopback socket buffers hold it without a reader.
pub const MAX_CHUNKED_INPUT: usize = 4096;

/// Maximum length of the chunk-size field that the decoder accepts, in hex digits.
const MAX_SIZE_DIGITS: usize = 15;

/// How long written bytes may take to arrive on the server side of the loopback pair.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Decodes fuzz input of the form `READ_LEN\nBODY` and checks it. A missing or invalid
/// `READ_LEN` reads 4096 bytes at a time, and input without a line feed is skipped.
pub fn check_chunked_input(data: &[u8]) {
    let Some(newline) = data.iter().position(|&byte| byte == b'\n') else {
        return;
    };
    let read_len = std::str::from_utf8(&data[..newline])
        .ok()
        .and_then(|digits| digits.trim().parse::<usize>().ok())
        .unwrap_or(4096);

    check_chunked_body(&data[newline + 1..], read_len.clamp(1, 64 * 1024));
}

/// Decodes `body` with `BodyReader` in reads of `read_len` bytes and compares the result with
/// the reference decoder. Bodies longer than [`MAX_CHUNKED_INPUT`] are cut to that length.
pub fn check_chunked_body(body: &[u8], read_len: usize) {
    let body = &body[..body.len().min(MAX_CHUNKED_INPUT)];
    let expected = decode_reference(body);

    let actual = decode_with_body_reader(body, read_len);

    assert_eq!(actual.content, expected.content, "decoded bytes differ from the reference");
    match (expected.outcome, actual.failure) {
        (Outcome::Complete(end), None) => {
            assert_eq!(actual.after_body, &body[end..], "bytes after the body differ from the reference");
        }
        (Outcome::Incomplete, Some((io::ErrorKind::WouldBlock, None))) => {}
        (Outcome::Malformed, Some((io::ErrorKind::InvalidData, Some(_)))) => {}
        (expected, actual) => panic!("BodyReader ended with {actual:?}, the reference with {expected:?}"),
    }
}

/// Result of decoding one body with `BodyReader`.
struct Decoded {
    content: Vec<u8>,
    /// The error kind and malformed-chunk reason of a failed read.
    failure: Option<(io::ErrorKind, Option<&'static str>)>,
    /// The bytes after the body: the connection's buffer, then what was left in the socket.
    after_body: Vec<u8>,
}

struct LoopbackPair {
    client: TcpStream,
    server: TcpStream,
    peer: SocketAddr,
}

fn loopback_pair() -> &'static Mutex<LoopbackPair> {
    static PAIR: OnceLock<Mutex<LoopbackPair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let client = TcpStream::connect(listener.local_addr().expect("listener address"))
            .expect("connect to the loopback listener");
        let (server, peer) = listener.accept().expect("accept the loopback connection");
        server.set_nonblocking(true).expect("make the server side nonblocking");
        Mutex::new(LoopbackPair { client, server, peer })
    })
}

fn decode_with_body_reader(body: &[u8], read_len: usize) -> Decoded {
    let mut pair = loopback_pair().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // A check that panicked earlier may have left its bytes in the socket.
    drain(&mut pair.server, &mut Vec::new());
    pair.client.write_all(body).expect("write the body to the loopback socket");
    wait_until_delivered(&pair.server, body.len());
    let server = pair.server.try_clone().expect("duplicate the server socket");
    let mut conn = Connection::new(server, pair.peer, Arc::new(AtomicUsize::new(1)));

    let mut content = Vec::new();
    let mut failure = None;
    let mut reader = BodyReader::new(&mut conn, BodyFraming::Chunked, false);
    let mut chunk = vec![0u8; read_len];
    // Every read but the last returns at least one byte.
    for _ in 0..=body.len() + 1 {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => content.extend_from_slice(&chunk[..count]),
            Err(error) => {
                failure = Some((error.kind(), bad_chunk_reason(&error)));
                break;
            }
        }
    }
    assert_eq!(reader.consumed(), content.len() as u64, "consumed() differs from the bytes returned");

    let mut after_body = conn.buffered().to_vec();
    drop(conn);
    drain(&mut pair.server, &mut after_body);
    Decoded { content, failure, after_body }
}

/// Waits until `len` bytes can be read from `server`. Loopback delivery is usually done when
/// `write` returns, but on a busy machine the kernel may finish it later, and a decoder that
/// ran early would see a cut body.
fn wait_until_delivered(server: &TcpStream, len: usize) {
    if len == 0 {
        return;
    }
    let mut peeked = vec![0u8; len];
    let started = Instant::now();
    loop {
        match server.peek(&mut peeked) {
            Ok(count) if count >= len => return,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(error) => panic!("peeking at the loopback socket failed: {error}"),
        }
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "loopback socket did not receive {len} bytes within {DELIVERY_TIMEOUT:?}"
        );
        std::thread::yield_now();
    }
}

/// Appends everything the socket contains to `out`, so the next input starts clean.
fn drain(server: &mut TcpStream, out: &mut Vec<u8>) {
    let mut scratch = [0u8; 8192];
    loop {
        match server.read(&mut scratch) {
            Ok(0) => panic!("loopback client closed"),
            Ok(count) => out.extend_from_slice(&scratch[..count]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => panic!("draining the loopback socket failed: {error}"),
        }
    }
}

/// The reference decoder's result.
#[derive(Debug)]
struct Reference {
    content: Vec<u8>,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// The body is valid and ends just before this offset.
    Complete(usize),
    /// The input ends inside the body.
    Incomplete,
    /// The body breaks the chunked syntax.
    Malformed,
}

/// Decodes a chunked body (RFC 9112 §7.1) with the server's documented leniency: spaces and
/// tabs between the size and an extension are ignored. Every line ends in CRLF and contains no
/// other control byte than a tab. Extensions and trailer fields are otherwise skipped
/// unchecked, and the size is at most 15 hex digits.
fn decode_reference(body: &[u8]) -> Reference {
    let mut content = Vec::new();
    let mut position = 0;
    let finish = |content, outcome| Reference { content, outcome };

    loop {
        let line = match next_line(body, &mut position) {
            Some(Ok(line)) => line,
            Some(Err(Malformed)) => return finish(content, Outcome::Malformed),
            None => return finish(content, Outcome::Incomplete),
        };
        let Some(size) = parse_chunk_size(line) else {
            return finish(content, Outcome::Malformed);
        };
        if size == 0 {
            break;
        }

        let available = (body.len() - position) as u64;
        let taken = size.min(available) as usize;
        content.extend_from_slice(&body[position..position + taken]);
        position += taken;
        if (taken as u64) < size {
            return finish(content, Outcome::Incomplete);
        }

        match next_line(body, &mut position) {
            Some(Ok([])) => {}
            Some(_) => return finish(content, Outcome::Malformed),
            None => return finish(content, Outcome::Incomplete),
        }
    }

    loop {
        match next_line(body, &mut position) {
            Some(Ok([])) => return finish(content, Outcome::Complete(position)),
            Some(Ok(_)) => {}
            Some(Err(Malformed)) => return finish(content, Outcome::Malformed),
            None => return finish(content, Outcome::Incomplete),
        }
    }
}

/// A line that does not end in CRLF or contains a control byte other than a tab.
struct Malformed;

/// Returns the line at `position` without its CRLF and moves past it, or `None` when no LF
/// follows.
fn next_line<'a>(body: &'a [u8], position: &mut usize) -> Option<Result<&'a [u8], Malformed>> {
    let rest = &body[*position..];
    let length = rest.iter().position(|&byte| byte == b'\n')?;
    *position += length + 1;
    let Some(line) = rest[..length].strip_suffix(b"\r") else {
        return Some(Err(Malformed));
    };
    let control = line.iter().any(|&byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f);
    Some(if control { Err(Malformed) } else { Ok(line) })
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let field = line.split(|&byte| byte == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(field).ok()?.trim_end_matches([' ', '\t']);
    let valid = !digits.is_empty()
        && digits.len() <= MAX_SIZE_DIGITS
        && digits.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !valid {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}
