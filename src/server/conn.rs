//! One client connection: its socket, its address and the bytes read but not yet parsed.
//!
//! The read buffer is shared by head parsing and body reading, so pipelined requests and
//! body bytes that arrived with the head are never lost. It grows on demand up to
//! [`MAX_HEAD_BYTES`] and is freed while the connection sits idle, so an idle connection costs
//! its socket and a few words.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::server::lanes::LaneMember;
use crate::server::queue::Registration;

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
    /// The client's end of input was announced: no later event will report it.
    pub input_ended: bool,
    /// The last read filled the buffer, so more bytes may wait in the socket with no new
    /// event to announce them.
    pub filled_buffer: bool,
    /// Urgent data arrived: a read stops at its mark and leaves the bytes after it in the
    /// socket, with no new event to announce them.
    pub urgent: bool,
    /// The socket's place in the workers' epoll instance ([`crate::server::queue`]), present
    /// while it is registered there.
    pub registration: Option<Registration>,
    /// The lane ([`crate::server::lanes`]) that serves the connection, counted there from the
    /// time the poller hands it over until the poller gets it back or it closes.
    pub lane: Option<LaneMember>,
}

impl Connection {
    /// Wraps an accepted socket; `open_count` was already incremented for it.
    pub fn new(stream: TcpStream, peer: SocketAddr, open_count: Arc<AtomicUsize>) -> Connection {
        Connection { stream, peer, buffer: Vec::new(), start: 0, end: 0, open_count, input_ended: false, filled_buffer: false, urgent: false, registration: None, lane: None }
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
        self.fill_with(|stream, free| stream.read(free))
    }

    /// Reads as [`Connection::fill`] does, but fails with `WouldBlock` instead of waiting when
    /// no bytes have arrived, whatever the socket's mode.
    pub fn try_fill(&mut self) -> io::Result<usize> {
        self.fill_with(recv_now)
    }

    fn fill_with(&mut self, read: impl FnOnce(&mut TcpStream, &mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.compact();
        if self.end >= MAX_HEAD_BYTES {
            return Ok(0);
        }
        if self.end == self.buffer.len() {
            let grown = (self.buffer.len() * 2).clamp(INITIAL_BUFFER, MAX_HEAD_BYTES);
            self.buffer.resize(grown, 0);
        }

        let free = self.buffer.len() - self.end;
        let result = read(&mut self.stream, &mut self.buffer[self.end..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.filled_buffer = n == free;
        self.end += n;
        result
    }

    /// Takes the socket out of the workers' epoll instance, before the connection goes to the
    /// poller or a worker reads a request body from it.
    pub fn leave_workers(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.release(self.stream.as_raw_fd());
        }
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

/// Receives once with `MSG_DONTWAIT`, failing with `WouldBlock` when nothing has arrived.
fn recv_now(stream: &mut TcpStream, free: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the socket is open and `free` is a writable buffer of the given length.
    let n = unsafe { libc::recv(stream.as_raw_fd(), free.as_mut_ptr().cast(), free.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.forget();
        }
        self.open_count.fetch_sub(1, Ordering::Relaxed);
    }
}
