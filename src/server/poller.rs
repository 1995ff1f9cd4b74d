//! The event loop: it accepts connections and parks every connection that waits for a request.
//!
//! One thread owns the listener and an epoll instance (through `mio`). A connection that is
//! idle between requests, or still sending its request head, sits here with a deadline and
//! costs no thread. When a head is complete (parsed with limits by [`parse_head`]), the
//! connection and its request go to the worker pool. Workers hand connections back through
//! [`PollerHandle`] to linger or to finish a partial head, and on each tick the poller takes back
//! the keep-alive connections the workers watched without a new request arriving.
//!
//! The loop also owns the protections that must not depend on a free worker: the header
//! timeout, the idle timeout, the open-connection cap, the answers to heads that are too large
//! or malformed, and recovery from `accept()` errors such as running out of file descriptors.

use std::io::{self, Read};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::server::lanes::Lanes;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::api::ApiError;
use crate::server::conn::Connection;
use crate::server::request::{parse_head, ParseOutcome};
use crate::server::response::{write_response, Framing};
use crate::server::Job;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);

/// How often deadlines are checked, and the longest the loop sleeps.
const TICK: Duration = Duration::from_millis(100);

/// How long a closing connection is read and discarded so that its unread request bytes do
/// not make the kernel reset the connection before the client reads the response.
const LINGER: Duration = Duration::from_secs(2);

/// Wait after an `accept()` error such as EMFILE before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The reason a connection comes back to the poller.
pub enum Park {
    /// Waiting for its next request.
    KeepAlive,
    /// Closing: its write side is shut, the rest of its input is discarded for a while.
    Linger,
}

/// The workers' way to give connections back to the poller.
#[derive(Clone)]
pub struct PollerHandle {
    inbound: Sender<(Connection, Park)>,
    waker: Arc<Waker>,
}

impl PollerHandle {
    pub fn park(&self, mut conn: Connection, park: Park) {
        conn.leave_workers();
        if self.inbound.send((conn, park)).is_ok() {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake the poller: {e}");
            }
        }
    }

    /// Wakes the loop so it notices a shutdown request.
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// Limits the poller enforces.
pub struct PollerSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte of the next request has arrived; the idle deadline applies.
    Idle,
    /// Part of a head has arrived; the header deadline applies.
    Head,
    Lingering,
}

struct Parked {
    conn: Connection,
    phase: Phase,
    deadline: Instant,
}

/// The event loop's state.
pub struct Poller {
    poll: Poll,
    listener: TcpListener,
    settings: PollerSettings,
    slots: Vec<Option<Parked>>,
    free_slots: Vec<usize>,
    inbound: Receiver<(Connection, Park)>,
    jobs: Lanes,
    open_count: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    accept_paused_until: Option<Instant>,
    rejected_for_cap: u64,
}

impl Poller {
    /// Creates the loop around a bound listener and returns it with the handle workers use.
    pub fn new(
        listener: TcpListener,
        settings: PollerSettings,
        jobs: Lanes,
        open_count: Arc<AtomicUsize>,
        stopping: Arc<AtomicBool>,
    ) -> io::Result<(Poller, PollerHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        listener.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let (inbound_tx, inbound) = crossbeam_channel::unbounded();

        let poller = Poller {
            poll,
            listener,
            settings,
            slots: Vec::new(),
            free_slots: Vec::new(),
            inbound,
            jobs,
            open_count,
            stopping,
            accept_paused_until: None,
            rejected_for_cap: 0,
        };
        Ok((poller, PollerHandle { inbound: inbound_tx, waker }))
    }

    /// Runs until shutdown is requested, then closes every parked connection.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();

        while !self.stopping.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("epoll wait failed: {e}");
                    std::thread::sleep(TICK);
                }
                continue;
            }

            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_inbound(),
                    LISTENER => self.accept_all(),
                    Token(slot) => self.on_readable(slot),
                }
            }

            self.resume_accept_if_due();
            if last_sweep.elapsed() >= TICK {
                self.take_back_watched();
                self.close_expired();
                last_sweep = Instant::now();
            }
        }
        self.close_all();
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let opened = Connection::new(stream, peer, self.open_count.clone());
                    self.admit(opened);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog
                    // and accepting resumes after a pause instead of ending the loop.
                    log::error!("accept failed: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn resume_accept_if_due(&mut self) {
        if self.accept_paused_until.is_some_and(|t| Instant::now() >= t) {
            self.accept_paused_until = None;
            self.accept_all();
        }
    }

    /// Counts a new connection and parks it, or closes it at once past `max_connections`.
    fn admit(&mut self, mut conn: Connection) {
        let open = self.open_count.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.settings.max_connections {
            self.rejected_for_cap += 1;
            if self.rejected_for_cap.is_power_of_two() {
                log::warn!(
                    "open connections at max_connections ({}); new connections closed so far: {}",
                    self.settings.max_connections,
                    self.rejected_for_cap
                );
            }
            let _ = conn.stream.set_nonblocking(true);
            let _ = write_response(
                &mut conn.stream,
                ApiError::TooManyConnections.to_response(),
                false,
                Framing::Close,
            );
            return;
        }

        // The read and write timeouts apply only while a worker holds the socket in blocking
        // mode; setting them once here saves two system calls on every request.
        let idle = Some(self.settings.idle_timeout);
        let configured = conn
            .stream
            .set_nonblocking(true)
            .and_then(|()| conn.stream.set_nodelay(true))
            .and_then(|()| conn.stream.set_read_timeout(idle))
            .and_then(|()| conn.stream.set_write_timeout(idle));
        if let Err(e) = configured {
            log::debug!("closing connection from {}: socket setup failed: {e}", conn.peer);
            return;
        }
        self.insert(conn, Phase::Idle, Instant::now() + self.settings.idle_timeout);
    }

    fn take_inbound(&mut self) {
        while let Ok((conn, park)) = self.inbound.try_recv() {
            match park {
                Park::KeepAlive => self.continue_keep_alive(conn),
                Park::Linger => {
                    self.insert(conn, Phase::Lingering, Instant::now() + LINGER);
                }
            }
        }
    }

    fn continue_keep_alive(&mut self, mut conn: Connection) {
        if conn.buffered().is_empty() {
            conn.shrink_if_empty();
            self.insert(conn, Phase::Idle, Instant::now() + self.settings.idle_timeout);
            return;
        }
        let header_deadline = Instant::now() + self.settings.header_timeout;
        if let Some(parked) = self.examine_head(conn, header_deadline) {
            self.insert(parked.conn, parked.phase, parked.deadline);
        }
    }

    /// Parks the keep-alive connections that stayed quiet while the workers watched them.
    fn take_back_watched(&mut self) {
        for conn in self.jobs.take_expired() {
            match conn.stream.set_nonblocking(true) {
                Ok(()) => self.continue_keep_alive(conn),
                Err(e) => log::debug!("closing connection from {}: socket setup failed: {e}", conn.peer),
            }
        }
    }

    fn insert(&mut self, mut conn: Connection, phase: Phase, deadline: Instant) {
        conn.lane = None;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registered = self.poll.registry().register(
            &mut SourceFd(&conn.stream.as_raw_fd()),
            Token(slot),
            Interest::READABLE,
        );
        if let Err(e) = registered {
            log::error!("cannot watch connection from {}: {e}; closing it", conn.peer);
            self.free_slots.push(slot);
            return;
        }
        self.slots[slot] = Some(Parked { conn, phase, deadline });
    }

    fn remove(&mut self, slot: usize) -> Option<Parked> {
        let parked = self.slots.get_mut(slot)?.take()?;
        let _ = self.poll.registry().deregister(&mut SourceFd(&parked.conn.stream.as_raw_fd()));
        self.free_slots.push(slot);
        Some(parked)
    }

    fn on_readable(&mut self, slot: usize) {
        let Some(parked) = self.remove(slot) else { return };
        let still_parked = match parked.phase {
            Phase::Lingering => discard_input(parked),
            Phase::Idle | Phase::Head => self.read_head(parked),
        };
        if let Some(parked) = still_parked {
            self.insert(parked.conn, parked.phase, parked.deadline);
        }
    }

    /// Reads what the socket has and dispatches a complete head. Returns the connection when
    /// it must wait for more bytes.
    fn read_head(&mut self, mut parked: Parked) -> Option<Parked> {
        // A client may send its request and shut down its write side at once; the request
        // still gets its response, and the connection closes when nothing complete is left.
        let mut end_of_input = false;
        loop {
            match parked.conn.fill() {
                Ok(0) if parked.conn.buffer_full() => break,
                Ok(0) => {
                    end_of_input = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection from {} failed while reading a head: {e}", parked.conn.peer);
                    return None;
                }
            }
        }
        if parked.conn.buffered().is_empty() {
            return if end_of_input { None } else { Some(parked) };
        }

        let header_deadline = match parked.phase {
            Phase::Head => parked.deadline,
            _ => Instant::now() + self.settings.header_timeout,
        };
        let waiting = self.examine_head(parked.conn, header_deadline)?;
        // A partial head that can never be completed is dropped; an answered invalid head
        // lingers as usual.
        if end_of_input && waiting.phase == Phase::Head {
            return None;
        }
        Some(waiting)
    }

    /// Parses the buffered head: dispatches it when complete, answers it when invalid, and
    /// returns the connection when more bytes are needed.
    fn examine_head(&mut self, mut conn: Connection, header_deadline: Instant) -> Option<Parked> {
        match parse_head(conn.buffered(), conn.peer) {
            ParseOutcome::Complete(request, head_len) => {
                conn.consume(head_len);
                if let Err(job) = self.jobs.push(Job { conn, request }) {
                    log::debug!("dropping request from {}: workers have stopped", job.conn.peer);
                }
                None
            }
            ParseOutcome::Partial if conn.buffer_full() => {
                Some(self.reject(conn, ApiError::HeadersTooLarge))
            }
            ParseOutcome::Partial => Some(Parked { conn, phase: Phase::Head, deadline: header_deadline }),
            ParseOutcome::Invalid(error) => Some(self.reject(conn, error)),
        }
    }

    /// Answers a head the workers never see, then lingers before closing.
    fn reject(&mut self, mut conn: Connection, error: ApiError) -> Parked {
        // The head did not parse, so the line has no method or path.
        let written = write_response(&mut conn.stream, error.to_response(), false, Framing::Close);
        log::info!(
            target: "streamserver::access",
            "{} \"-\" {} {} 0ms ({})",
            conn.peer,
            error.status(),
            written.unwrap_or(0),
            error.code()
        );
        let _ = conn.stream.shutdown(Shutdown::Write);
        conn.consume(conn.buffered().len());
        Parked { conn, phase: Phase::Lingering, deadline: Instant::now() + LINGER }
    }

    fn close_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|p| p.deadline <= now).map(|_| i))
            .collect();

        for slot in expired {
            let Some(parked) = self.remove(slot) else { continue };
            match parked.phase {
                Phase::Idle => log::debug!("closing idle connection from {}", parked.conn.peer),
                Phase::Head => {
                    let lingering = self.reject(parked.conn, ApiError::RequestTimeout);
                    self.insert(lingering.conn, lingering.phase, lingering.deadline);
                }
                Phase::Lingering => {}
            }
        }
    }

    fn close_all(&mut self) {
        let count = self.slots.iter().filter(|s| s.is_some()).count();
        log::info!("poller stopping; closing {count} waiting connections");
        for slot in 0..self.slots.len() {
            self.remove(slot);
        }
        // Workers end once they have served the requests already queued.
        self.jobs.close();
    }
}

/// Reads and drops a lingering connection's input. Returns it while it stays open.
fn discard_input(mut parked: Parked) -> Option<Parked> {
    let mut sink = [0u8; 16 * 1024];
    loop {
        match parked.conn.stream.read(&mut sink) {
            Ok(0) => return None,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(parked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) | Some(libc::EPERM)
    )
}
