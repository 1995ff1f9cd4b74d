//! Responses and how their bytes reach the socket.
//!
//! A [`Response`] is a status, headers and a [`Body`] whose length is always known up front, so
//! every response carries an exact `Content-Length` and nothing is sent chunked. File bodies go
//! out with `sendfile(2)`, so no byte is copied through user space; `multipart/byteranges`
//! bodies are sent under `TCP_CORK` so their part headers share packets with the file bytes. Header values are checked here for
//! CR and LF, the one place every header passes, so no input can inject a header.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::SystemTime;

use serde::Serialize;
use std::borrow::Cow;

/// The bytes of a response after its head.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from offset `start`.
    File { file: std::sync::Arc<File>, start: u64, len: u64 },
    /// `len` bytes from a reader, such as an object store stream.
    Stream { reader: Box<dyn Read + Send>, len: u64 },
    /// Bodies sent one after the other, such as the parts of `multipart/byteranges`.
    Sequence(Vec<Body>),
}

impl Body {
    /// The number of bytes this body sends.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File { len, .. } | Body::Stream { len, .. } => *len,
            Body::Sequence(parts) => parts.iter().map(Body::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A status, its headers and a body of known length.
pub struct Response {
    pub status: u16,
    headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Body,
}

impl Response {
    /// Creates a response with no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::with_capacity(12), body: Body::Empty }
    }

    /// Creates an `application/json` response from a serializable value.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        bytes.push(b'\n');
        let mut response = Response::new(status);
        response.header("Content-Type", "application/json");
        response.body = Body::Bytes(bytes);
        response
    }

    /// Adds a header. A value holding CR or LF has them replaced by spaces, so no value can
    /// start a new header line.
    pub fn header(&mut self, name: &'static str, value: impl Into<Cow<'static, str>>) {
        let mut value = value.into();
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            log::warn!("header {name} held a line break; replaced it with a space");
            value = Cow::Owned(value.replace(['\r', '\n'], " "));
        }
        self.headers.push((name, value));
    }

    /// Returns the first value of a header, compared case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Returns an in-memory body's bytes, or an empty slice for other bodies.
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Bytes(bytes) => bytes,
            _ => &[],
        }
    }
}

/// How the connection continues after this response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP/1.1 keep-alive: no `Connection` header is needed.
    KeepAlive11,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive` is sent.
    KeepAlive10,
    /// The connection closes after the response: `Connection: close` is sent.
    Close,
}

/// Writes the head and, unless `head_only`, the body. Returns the body bytes written.
pub fn write_response(
    stream: &mut TcpStream,
    response: Response,
    head_only: bool,
    framing: Framing,
) -> io::Result<u64> {
    let Response { status, headers, body } = response;
    let head = render_head(status, &headers, body.len(), framing);

    if head_only || body.is_empty() {
        stream.write_all(&head)?;
        return Ok(0);
    }
    match body {
        Body::Bytes(bytes) => {
            let mut out = head;
            out.extend_from_slice(&bytes);
            stream.write_all(&out)?;
            Ok(bytes.len() as u64)
        }
        // A single file body goes out as head then sendfile with no cork, as nginx does with
        // `tcp_nopush off`: turning the cork off costs a system call and starts a transmit of
        // its own, and measured per request that outweighed the saved packet. Several parts
        // are corked so their small part headers do not leave as packets of their own.
        body @ Body::Sequence(_) => {
            let _cork = Cork::new(stream);
            stream.write_all(&head)?;
            write_body(stream, body)
        }
        body => {
            stream.write_all(&head)?;
            write_body(stream, body)
        }
    }
}

/// Sends a `100 Continue` interim response.
pub fn write_continue(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
}

fn render_head(
    status: u16,
    headers: &[(&'static str, Cow<'static, str>)],
    body_len: u64,
    framing: Framing,
) -> Vec<u8> {
    use std::fmt::Write as _;

    let mut head = String::with_capacity(512);
    // Writing into a String cannot fail, so the results of write! are ignored.
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    head.push_str("Date: ");
    push_http_date(&mut head);
    head.push_str("\r\nServer: streamserver\r\n");
    for (name, value) in headers {
        for part in [name, ": ", value.as_ref(), "\r\n"] {
            head.push_str(part);
        }
    }
    // RFC 9110 §8.6: no Content-Length on 204, and a 304 carries no body headers.
    if status != 204 && status != 304 {
        let _ = write!(head, "Content-Length: {body_len}\r\n");
    }
    match framing {
        Framing::KeepAlive11 => {}
        Framing::KeepAlive10 => head.push_str("Connection: keep-alive\r\n"),
        Framing::Close => head.push_str("Connection: close\r\n"),
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Appends the current time as an HTTP-date, formatted once per second per thread.
fn push_http_date(out: &mut String) {
    use std::cell::RefCell;
    use std::time::UNIX_EPOCH;

    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        out.push_str(&cache.1);
    })
}

fn write_body(stream: &mut TcpStream, body: Body) -> io::Result<u64> {
    match body {
        Body::Empty => Ok(0),
        Body::Bytes(bytes) => {
            stream.write_all(&bytes)?;
            Ok(bytes.len() as u64)
        }
        Body::File { file, start, len } => send_file(stream, &file, start, len),
        Body::Stream { reader, len } => copy_stream(stream, reader, len),
        Body::Sequence(parts) => {
            let mut written = 0;
            for part in parts {
                written += write_body(stream, part)?;
            }
            Ok(written)
        }
    }
}

/// Sends `len` bytes of `file` from `start` with `sendfile(2)`. A file that shrank while being
/// sent ends the response early with an error, so the connection closes and the client sees a
/// short body rather than bytes from another request.
fn send_file(stream: &mut TcpStream, file: &File, start: u64, len: u64) -> io::Result<u64> {
    let mut offset = start as libc::off_t;
    let mut remaining = len;
    while remaining > 0 {
        // Linux sends at most 0x7ffff000 bytes per call.
        let count = remaining.min(0x7fff_f000) as usize;
        // SAFETY: both descriptors are open for the duration of the call, and `offset` is a
        // valid pointer to an off_t that the kernel updates.
        let sent = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
        if sent < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))
                }
                _ => return Err(err),
            }
        }
        if sent == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
        }
        remaining -= sent as u64;
    }
    Ok(len)
}

fn copy_stream(stream: &mut TcpStream, mut reader: Box<dyn Read + Send>, len: u64) -> io::Result<u64> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut remaining = len;
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        let n = reader.read(&mut buffer[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source ended before its length"));
        }
        stream.write_all(&buffer[..n])?;
        remaining -= n as u64;
    }
    Ok(len)
}

/// Holds `TCP_CORK` on while alive, so the head and the start of the body leave in full
/// packets; dropping it flushes what is left.
struct Cork(i32);

impl Cork {
    fn new(stream: &TcpStream) -> Cork {
        set_cork(stream.as_raw_fd(), true);
        Cork(stream.as_raw_fd())
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        set_cork(self.0, false);
    }
}

fn set_cork(fd: i32, on: bool) {
    let value: libc::c_int = on.into();
    // SAFETY: fd is an open socket and value outlives the call. A failure only costs packets,
    // so the result is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The reason phrase for the statuses this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}
