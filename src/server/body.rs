//! Reading a request body: `Content-Length` and chunked framing, `100 Continue`, the size
//! limit and an optional deadline.
//!
//! [`BodyReader`] sends `100 Continue` on the first read, so a handler that rejects a request
//! before reading (413, 409, 401) never invites the client to send its body. After the handler,
//! the worker calls [`BodyReader::skip_buffered`] to learn whether the connection can carry
//! another request: a body the handler left unread is skipped when it already sits in the
//! connection's buffer, and otherwise the connection closes, so body bytes are never parsed as
//! a request and no worker waits for a body nobody needs.

use std::io::{self, Read};
use std::time::Instant;

use crate::server::conn::Connection;
use crate::server::request::BodyFraming;
use crate::server::response::write_continue;

/// Maximum unread body bytes [`BodyReader::skip_buffered`] skips; a longer body closes the
/// connection.
const MAX_SKIPPED_BYTES: u64 = 256 * 1024;

/// Maximum length of a chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 4096;

/// Maximum length of a chunked body's trailer section. Trailer bytes count toward no upload
/// limit, so this bounds them.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// An I/O error kind payload that marks a body over the limit, so handlers can tell it from a
/// client that hung up.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body exceeds the upload limit")
    }
}

impl std::error::Error for BodyTooLarge {}

/// An I/O error kind payload for a malformed chunked body.
#[derive(Debug)]
pub struct BadChunk(pub &'static str);

impl std::fmt::Display for BadChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

impl std::error::Error for BadChunk {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of a Content-Length body remain.
    Length(u64),
    /// The next bytes are a chunk-size line.
    ChunkSize,
    /// `n` bytes of the current chunk remain, then its CRLF.
    ChunkData(u64),
    /// The trailer section after the last chunk.
    Trailers,
    Done,
    /// A read failed; the connection must close.
    Broken,
}

/// The body of one request, read from its connection.
pub struct BodyReader<'a> {
    conn: &'a mut Connection,
    state: State,
    continue_pending: bool,
    limit: Option<u64>,
    consumed: u64,
    /// Reads come only from the connection's buffer and fail with `WouldBlock` past it.
    buffered_only: bool,
    /// The instant after which reads fail with `TimedOut`, however slowly bytes trickle in.
    deadline: Option<Instant>,
    /// Bytes of trailer lines read so far.
    trailer_bytes: usize,
}

impl<'a> BodyReader<'a> {
    pub fn new(conn: &'a mut Connection, framing: BodyFraming, expect_continue: bool) -> Self {
        let state = match framing {
            BodyFraming::Empty => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
        };
        let continue_pending = expect_continue && state != State::Done;
        BodyReader {
            conn,
            state,
            continue_pending,
            limit: None,
            consumed: 0,
            buffered_only: false,
            deadline: None,
            trailer_bytes: 0,
        }
    }

    /// Fails reads with [`BodyTooLarge`] once more than `limit` bytes have been read.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = Some(limit);
    }

    /// Makes reads fail with `TimedOut` once `deadline` passes: every wait on the socket is cut
    /// to the time left, so a client that trickles a line byte by byte cannot hold the reader
    /// past it. The socket keeps the last timeout set, so the caller restores its own.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Declared length of a Content-Length body, if it has one.
    pub fn declared_length(&self) -> Option<u64> {
        match self.state {
            State::Length(n) if self.consumed == 0 => Some(n),
            _ => None,
        }
    }

    /// The socket, for writing the response.
    pub fn stream(&mut self) -> &mut std::net::TcpStream {
        &mut self.conn.stream
    }

    /// The body bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Skips the unread rest of the body when the connection's buffer already contains all of
    /// it, without touching the socket. Returns true when the body is fully consumed, so the
    /// connection can carry another request. A client still waiting for `100 Continue` has
    /// sent nothing of its body, so its connection cannot be reused.
    pub fn skip_buffered(&mut self) -> bool {
        if self.state == State::Done {
            return true;
        }
        if self.continue_pending {
            return false;
        }
        self.buffered_only = true;
        self.limit = Some(self.consumed + MAX_SKIPPED_BYTES);
        let skipped = io::copy(self, &mut io::sink()).is_ok();
        self.buffered_only = false;
        skipped && self.state == State::Done
    }

    fn send_continue_once(&mut self) -> io::Result<()> {
        if self.continue_pending {
            self.continue_pending = false;
            write_continue(&mut self.conn.stream)?;
        }
        Ok(())
    }

    /// Reads a chunk-size, chunk-end or trailer line and returns it without its CRLF. RFC 9112
    /// §7.1 ends these lines in CRLF only. A bare LF, or a CR or other control byte inside the
    /// line, is rejected, because a proxy in front could see a line end there that this server
    /// does not (CVE-2025-22871 in Go was the bare LF case).
    fn read_chunk_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let buffered = self.conn.buffered();
            if let Some(pos) = buffered.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buffered[..pos]);
                self.conn.consume(pos + 1);
                if line.len() > MAX_CHUNK_LINE + 1 {
                    return Err(bad_chunk("chunk-size or trailer line too long"));
                }
                if line.pop() != Some(b'\r') {
                    return Err(bad_chunk("chunked line ends in a bare LF instead of CRLF"));
                }
                if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return Err(bad_chunk("control character in a chunk-size or trailer line"));
                }
                return Ok(line);
            }
            line.extend_from_slice(buffered);
            let n = buffered.len();
            self.conn.consume(n);
            if line.len() > MAX_CHUNK_LINE {
                return Err(bad_chunk("chunk-size or trailer line too long"));
            }
            if self.buffered_only {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.cut_wait_to_deadline()?;
            if self.conn.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Cuts the socket's read timeout to the time left before the deadline, if one is set.
    fn cut_wait_to_deadline(&mut self) -> io::Result<()> {
        let Some(deadline) = self.deadline else { return Ok(()) };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "body read timed out: its deadline passed"));
        }
        self.conn.stream.set_read_timeout(Some(left))
    }

    fn read_chunk_size(&mut self) -> io::Result<u64> {
        let line = self.read_chunk_line()?;
        let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let digits = std::str::from_utf8(digits).map_err(|_| bad_chunk("chunk size is not hex"))?;
        // RFC 9112 §7.1: chunk-size is 1*HEXDIG, optionally followed by whitespace before an
        // extension. A sign or leading whitespace is rejected, so no proxy in front can read
        // the size differently.
        let digits = digits.trim_end_matches([' ', '\t']);
        if digits.is_empty() || digits.len() > 15 {
            return Err(bad_chunk("chunk size is missing or too long"));
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad_chunk("chunk size is not hex"));
        }
        u64::from_str_radix(digits, 16).map_err(|_| bad_chunk("chunk size is not hex"))
    }

    fn read_inner(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done | State::Broken => return Ok(0),
                State::Length(0) => self.state = State::Done,
                State::Length(remaining) => {
                    let n = self.read_data(out, remaining)?;
                    self.state = State::Length(remaining - n as u64);
                    return Ok(n);
                }
                State::ChunkSize => {
                    let size = self.read_chunk_size()?;
                    self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                }
                State::ChunkData(0) => {
                    if !self.read_chunk_line()?.is_empty() {
                        return Err(bad_chunk("chunk data longer than its size"));
                    }
                    self.state = State::ChunkSize;
                }
                State::ChunkData(remaining) => {
                    let n = self.read_data(out, remaining)?;
                    self.state = State::ChunkData(remaining - n as u64);
                    return Ok(n);
                }
                State::Trailers => {
                    let line = self.read_chunk_line()?;
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(bad_chunk("trailer section longer than 16 KiB"));
                    }
                }
            }
        }
    }

    fn read_data(&mut self, out: &mut [u8], remaining: u64) -> io::Result<usize> {
        let want = remaining.min(out.len() as u64) as usize;
        if self.conn.buffered().is_empty() {
            if self.buffered_only {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.cut_wait_to_deadline()?;
        }
        let n = self.conn.read_body(&mut out[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.send_continue_once()?;

        let result = self.read_inner(out);
        match result {
            Ok(n) => {
                self.consumed += n as u64;
                if self.limit.is_some_and(|limit| self.consumed > limit) {
                    self.state = State::Broken;
                    return Err(io::Error::other(BodyTooLarge));
                }
                Ok(n)
            }
            Err(e) => {
                self.state = State::Broken;
                Err(e)
            }
        }
    }
}

fn bad_chunk(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, BadChunk(why))
}

/// True when an I/O error from a [`BodyReader`] means the body passed its limit.
pub fn is_too_large(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<BodyTooLarge>())
}

/// The malformed-chunk reason, when an I/O error from a [`BodyReader`] is one.
pub fn bad_chunk_reason(error: &io::Error) -> Option<&'static str> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<BadChunk>()).map(|b| b.0)
}
