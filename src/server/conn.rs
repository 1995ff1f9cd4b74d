//! One client connection: its socket, its address and the bytes read but not yet parsed.
//!
//! The read buffer is shared by head parsing and body reading, so pipelined requests and
//! body bytes that arrived with the head are never lost. It grows on demand up to
//! [`MAX_HEAD_BYTES`] and is freed while the connection sits idle, so an idle connection costs
//! its socket and a few words.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The longest request head accepted; a longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

const INITIAL_BUFFER: usize = 8 * 1024;

/// An open client connection. Dropping it closes the socket and frees its slot in the
/// open-connection count.
pub struct Connection {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Initialised up to its length; the unconsumed bytes are `buffer[start..end]`.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    open_count: Arc<AtomicUsize>,
    /// Registered with the workers' epoll instance ([`crate::server::queue`]).
    pub watched_by_workers: bool,
}

impl Connection {
    /// Wraps an accepted socket; `open_count` was already incremented for it.
    pub fn new(stream: TcpStream, peer: SocketAddr, open_count: Arc<AtomicUsize>) -> Connection {
        Connection { stream, peer, buffer: Vec::new(), start: 0, end: 0, open_count, watched_by_workers: false }
    }

    /// The bytes read from the socket and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Frees the buffer when it holds nothing, for a connection about to sit idle.
    pub fn shrink_if_empty(&mut self) {
        if self.buffered().is_empty() {
            self.buffer = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes from the socket into the buffer, up to [`MAX_HEAD_BYTES`] buffered.
    /// Returns the number read: 0 means end of stream, or a full buffer when
    /// [`Connection::buffer_full`] is true.
    pub fn fill(&mut self) -> io::Result<usize> {
        self.compact();
        if self.end >= MAX_HEAD_BYTES {
            return Ok(0);
        }
        if self.end == self.buffer.len() {
            let grown = (self.buffer.len() * 2).clamp(INITIAL_BUFFER, MAX_HEAD_BYTES);
            self.buffer.resize(grown, 0);
        }

        let result = self.stream.read(&mut self.buffer[self.end..]);
        if let Ok(n) = result {
            self.end += n;
        }
        result
    }

    /// True when the buffer holds [`MAX_HEAD_BYTES`] unconsumed bytes.
    pub fn buffer_full(&self) -> bool {
        self.buffered().len() >= MAX_HEAD_BYTES
    }

    /// Reads body bytes: first from the buffer, then straight from the socket, so large
    /// reads skip the copy through the buffer.
    pub fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buffered = self.buffered();
        if !buffered.is_empty() {
            let n = buffered.len().min(out.len());
            out[..n].copy_from_slice(&buffered[..n]);
            self.consume(n);
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open_count.fetch_sub(1, Ordering::Relaxed);
    }
}
