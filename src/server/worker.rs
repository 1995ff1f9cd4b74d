//! The fixed-size pool of worker threads that serve the parsed requests of one lane
//! ([`crate::server::lanes`]).
//!
//! A worker takes a [`Job`] (a connection with a complete request head), takes a token from the
//! limiter or responds 429 at once, runs the handler with panics caught, writes the response,
//! and gives the token back only after the last byte is written. It then serves requests the
//! client already pipelined, and leaves the connection watched by the workers
//! ([`crate::server::queue`]) for its next request. Sockets are blocking here, with read and
//! write timeouts, so a stalled client costs at most `idle_timeout_secs` of one worker.
//! Threads start on demand up to the configured `workers` in each lane, so an idle server runs
//! only a few.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::api::ApiError;
use crate::handlers::App;
use crate::server::body::BodyReader;
use crate::server::conn::Connection;
use crate::server::poller::{Park, PollerHandle};
use crate::server::queue::{JobQueue, Work};
use crate::server::request::{parse_head, BodyFraming, Method, ParseOutcome, Request};
use crate::server::response::{write_response, Body, Framing, Response};
use crate::server::Job;

/// The body size from which a worker writing a response stops counting as busy (see
/// [`JobQueue::step_out`]): more than a socket buffer usually takes at once, so the write
/// likely waits on the client.
const LONG_BODY: u64 = 256 << 10;

/// Workers started at once, split over the lanes, with at least [`MIN_INITIAL_WORKERS`] in
/// each. The pool of a lane grows from there up to its fixed size.
const INITIAL_WORKERS: usize = 4;

/// The fewest workers started at once in a lane: one to wait in epoll and one on the bench.
const MIN_INITIAL_WORKERS: usize = 2;

/// The worker pool: a fixed maximum of threads, started on demand. A worker that takes the
/// last job while no other worker waits for one starts another, so a spare worker is ready
/// for the next request until the maximum is reached, and threads that were never needed
/// cost no memory. Workers never exit before shutdown.
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

struct Shared {
    /// The lane ([`crate::server::lanes`]) whose queue the pool serves.
    lane: usize,
    jobs: JobQueue,
    app: Arc<App>,
    poller: PollerHandle,
    max: usize,
    started: AtomicUsize,
    running: AtomicUsize,
}

impl WorkerPool {
    /// Starts the first workers of the pool of at most `max` that serves the queue of `lane`,
    /// one of `lanes`.
    pub fn start(lane: usize, lanes: usize, max: usize, jobs: JobQueue, app: Arc<App>, poller: PollerHandle) -> WorkerPool {
        let shared = Shared { lane, jobs, app, poller, max, started: AtomicUsize::new(0), running: AtomicUsize::new(0) };
        let pool = WorkerPool { shared: Arc::new(shared) };
        let initial = (INITIAL_WORKERS / lanes.max(1)).max(MIN_INITIAL_WORKERS);
        for _ in 0..initial.min(max) {
            pool.grow();
        }
        pool
    }

    /// Worker threads alive now; 0 once every worker has ended after shutdown.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Starts one more worker unless the pool is at its maximum.
    fn grow(&self) {
        let claimed = self.shared.started.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.shared.max).then_some(n + 1)
        });
        let Ok(index) = claimed else { return };

        self.shared.running.fetch_add(1, Ordering::AcqRel);
        let pool = self.clone();
        let name = format!("worker-{}-{index}", self.shared.lane);
        let spawned = std::thread::Builder::new().name(name).spawn(move || pool.work());
        if let Err(e) = spawned {
            self.shared.running.fetch_sub(1, Ordering::AcqRel);
            self.shared.started.fetch_sub(1, Ordering::AcqRel);
            log::error!("failed to start worker {index} of lane {}: {e}; the lane serves with {index} workers", self.shared.lane);
        }
    }

    fn work(self) {
        let shared = &*self.shared;
        let _running = Running(&shared.running);
        while let Some((work, _busy)) = shared.jobs.next() {
            if shared.jobs.idle() == 0 {
                self.grow();
            }
            match work {
                Work::Request(job) => serve_job(job, shared),
                Work::Readable(conn) => serve_readable(conn, shared),
            }
        }
    }
}

/// Counts a worker out of the running ones when its thread ends, by a panic too, so shutdown
/// does not wait for a worker that is gone.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves a request the poller parsed, then the connection's next ones.
fn serve_job(job: Job, shared: &Shared) {
    let Job { conn, request } = job;
    if let Err(e) = conn.stream.set_nonblocking(false) {
        log::debug!("closing connection from {}: socket setup failed: {e}", conn.peer);
        return;
    }
    serve_connection(conn, request, shared);
}

/// Reads the next request of a watched connection that became readable, and serves it.
fn serve_readable(conn: Connection, shared: &Shared) {
    if let Some((conn, request)) = read_next_head(conn, shared) {
        serve_connection(conn, request, shared);
    }
}

/// Reads the head of a keep-alive connection's next request without waiting: when no bytes
/// have arrived (an event can outlive the bytes it announced), the connection is watched
/// again. A head that is not complete in what arrived goes to the poller.
fn read_next_head(mut conn: Connection, shared: &Shared) -> Option<(Connection, Request)> {
    loop {
        match conn.try_fill() {
            Ok(0) => return None,
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn = shared.jobs.watch(conn)?,
            Err(e) => {
                log::debug!("closing connection from {}: reading its next request failed: {e}", conn.peer);
                return None;
            }
        }
    }

    match parse_head(conn.buffered(), conn.peer) {
        ParseOutcome::Complete(request, head_len) => {
            conn.consume(head_len);
            Some((conn, request))
        }
        ParseOutcome::Partial | ParseOutcome::Invalid(_) => {
            park_for_head(conn, &shared.poller);
            None
        }
    }
}

/// Serves the request, then the requests the client pipelined behind it, and leaves the
/// connection watched for its next request.
fn serve_connection(mut conn: Connection, mut request: Request, shared: &Shared) {
    loop {
        match serve_request(&mut conn, request, shared) {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Linger => {
                let _ = conn.stream.shutdown(Shutdown::Write);
                let _ = conn.stream.set_nonblocking(true);
                shared.poller.park(conn, Park::Linger);
                return;
            }
        }

        if conn.buffered().is_empty() {
            // Bytes that arrived while this worker was busy are read now; otherwise the
            // connection waits, watched, for any worker.
            let arrived = shared.jobs.watch(conn);
            match arrived.and_then(|conn| read_next_head(conn, shared)) {
                Some((next_conn, next)) => {
                    conn = next_conn;
                    request = next;
                    continue;
                }
                None => return,
            }
        }
        match parse_head(conn.buffered(), conn.peer) {
            ParseOutcome::Complete(next, head_len) => {
                conn.consume(head_len);
                request = next;
            }
            ParseOutcome::Partial | ParseOutcome::Invalid(_) => {
                park_for_head(conn, &shared.poller);
                return;
            }
        }
    }
}

/// Gives a connection with part of a head, or an invalid one, to the poller, which applies the
/// header timeout or sends the error response.
fn park_for_head(conn: Connection, poller: &PollerHandle) {
    match conn.stream.set_nonblocking(true) {
        Ok(()) => poller.park(conn, Park::KeepAlive),
        Err(e) => log::debug!("closing connection from {}: socket setup failed: {e}", conn.peer),
    }
}

enum Next {
    KeepAlive,
    Close,
    /// Close after discarding, for a while, input the client may still send.
    Linger,
}

/// Serves one request: token, handler, response, access log.
fn serve_request(conn: &mut Connection, request: Request, shared: &Shared) -> Next {
    let app = &*shared.app;
    if request.body != BodyFraming::Empty {
        // Every packet of a body would otherwise wake a worker waiting in epoll.
        conn.leave_workers();
    }
    let started = log::log_enabled!(target: "streamserver::access", log::Level::Info).then(Instant::now);
    let peer = conn.peer;
    let mut body = BodyReader::new(conn, request.body, request.expect_continue);

    let permit = app.limiter.try_acquire(peer.ip());
    let (response, panicked) = match &permit {
        Err(refusal) => {
            log::debug!("no token for {peer}: {refusal:?}");
            (ApiError::TooManyRequests.to_response(), false)
        }
        Ok(_) => {
            let _receiving = (request.body != BodyFraming::Empty).then(|| shared.jobs.step_out());
            run_handler(app, &request, &mut body)
        }
    };

    let status = response.status;
    let body_consumed = !panicked && body.skip_buffered();
    let keep_alive = request.keep_alive && body_consumed && !app.is_stopping();
    let framing = match (keep_alive, request.minor_version) {
        (false, _) => Framing::Close,
        (true, 0) => Framing::KeepAlive10,
        (true, _) => Framing::KeepAlive11,
    };
    let head_only = request.method == Method::Head;
    let streaming = (!head_only && is_long_body(&response.body)).then(|| shared.jobs.step_out());
    let written = match &permit {
        Ok(_) => write_response(body.stream(), response, head_only, framing),
        Err(_) => write_too_many_requests(body.stream(), response, head_only, framing),
    };
    drop(permit);
    drop(streaming);

    let bytes = match &written {
        Ok(n) => *n,
        Err(e) => {
            log::debug!("response to {peer} cut off: {e}");
            0
        }
    };
    log_access(&request, status, bytes, written.is_err(), started);

    // Closing after a complete response lingers too, because bytes the client sent after its
    // request would otherwise make the kernel reset the connection and drop the response's tail.
    match (written.is_ok(), keep_alive) {
        (false, _) => Next::Close,
        (true, true) => Next::KeepAlive,
        (true, false) => Next::Linger,
    }
}

/// Returns true for a body whose sending likely waits on the client: one larger than a socket
/// buffer takes at once, or one read from the object store as it goes.
fn is_long_body(body: &Body) -> bool {
    match body {
        Body::Stream { .. } => true,
        Body::Sequence(parts) => parts.iter().any(is_long_body) || body.len() >= LONG_BODY,
        other => other.len() >= LONG_BODY,
    }
}

/// Writes a 429 without blocking. A client that pipelines requests and reads none of the
/// responses would otherwise hold a worker in a blocked write for every rejected request, so
/// 429s would stop coming at once. A 429 that does not fit in the socket buffer closes the
/// connection instead.
fn write_too_many_requests(stream: &mut TcpStream, response: Response, head_only: bool, framing: Framing) -> io::Result<u64> {
    stream.set_nonblocking(true)?;
    let written = write_response(stream, response, head_only, framing);
    let restored = stream.set_nonblocking(false);

    match written {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            log::info!("closing connection from {peer}: its socket buffer is full of unread 429 responses");
            Err(e)
        }
        other => restored.and(other),
    }
}

/// Runs the handler, turning a panic into a 500. Returns the response and whether it panicked.
fn run_handler(app: &App, request: &Request, body: &mut BodyReader) -> (Response, bool) {
    match catch_unwind(AssertUnwindSafe(|| app.handle(request, body))) {
        Ok(response) => (response, false),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            log::error!(
                "handler panicked on {} {}: {what}; responded 500",
                request.method.as_str(),
                request.target.escape_debug()
            );
            (ApiError::Internal.to_response(), true)
        }
    }
}

/// `started` is `None` when access lines are filtered out, which saves reading the clock.
fn log_access(request: &Request, status: u16, bytes: u64, cut_off: bool, started: Option<Instant>) {
    let Some(started) = started else {
        return;
    };
    log::info!(
        target: "streamserver::access",
        "{} \"{} {}\" {} {} {}ms{}",
        request.peer,
        request.method.as_str().escape_debug(),
        request.target.escape_debug(),
        status,
        bytes,
        started.elapsed().as_millis(),
        if cut_off { " (cut off)" } else { "" }
    );
}
