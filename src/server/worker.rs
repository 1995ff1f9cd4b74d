//! The fixed-size pool of worker threads that serve parsed requests.
//!
//! A worker takes a [`Job`] (a connection with a complete request head), takes a token from the
//! limiter or responds 429 at once, runs the handler with panics caught, writes the response,
//! and gives the token back only after the last byte is written. It then serves requests the
//! client already pipelined or sends within [`NEXT_REQUEST_WAIT`], and otherwise hands the
//! connection back to the poller to wait for the next. Sockets are blocking here, with read
//! and write timeouts, so a stalled client costs at most `idle_timeout_secs` of one worker.
//! Threads start on demand up to the configured `workers`, so an idle server runs only a few.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::ApiError;
use crate::handlers::App;
use crate::server::body::BodyReader;
use crate::server::conn::Connection;
use crate::server::poller::{Park, PollerHandle};
use crate::server::queue::JobQueue;
use crate::server::request::{parse_head, Method, ParseOutcome, Request};
use crate::server::response::{write_response, Framing, Response};
use crate::server::Job;

/// How long a worker keeps a keep-alive connection after a response, waiting for the next
/// request, before it hands the connection back to the poller. A benchmark client or a player
/// filling its buffer sends its next request within this time. Serving it here saves two
/// thread wake-ups and two `epoll_ctl` calls per request. A viewer's next range request,
/// seconds later, goes through the poller as before.
const NEXT_REQUEST_WAIT: Duration = Duration::from_millis(2);

/// Workers started at once; the pool grows from here up to its fixed size.
const INITIAL_WORKERS: usize = 4;

/// The worker pool: a fixed maximum of threads, started on demand. A worker that takes the
/// last job while no other worker waits for one starts another, so a spare worker is ready
/// for the next request until the maximum is reached, and threads that were never needed
/// cost no memory. Workers never exit before shutdown.
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

struct Shared {
    jobs: JobQueue,
    app: Arc<App>,
    poller: PollerHandle,
    max: usize,
    started: AtomicUsize,
    running: AtomicUsize,
}

impl WorkerPool {
    /// Starts the first workers of a pool of at most `max`.
    pub fn start(max: usize, jobs: JobQueue, app: Arc<App>, poller: PollerHandle) -> WorkerPool {
        let shared = Shared { jobs, app, poller, max, started: AtomicUsize::new(0), running: AtomicUsize::new(0) };
        let pool = WorkerPool { shared: Arc::new(shared) };
        for _ in 0..INITIAL_WORKERS.min(max) {
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
        let spawned = std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || pool.work());
        if let Err(e) = spawned {
            self.shared.running.fetch_sub(1, Ordering::AcqRel);
            self.shared.started.fetch_sub(1, Ordering::AcqRel);
            log::error!("cannot start worker {index}: {e}; serving with {index} workers");
        }
    }

    fn work(self) {
        let shared = &*self.shared;
        let _running = Running(&shared.running);
        while let Some((job, last_awake)) = shared.jobs.pop() {
            if last_awake {
                self.grow();
            }
            serve_connection(job, &shared.app, &shared.poller, &shared.jobs);
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

/// Serves the job's request, then the requests the client pipelined behind it or sends
/// within [`NEXT_REQUEST_WAIT`].
fn serve_connection(job: Job, app: &App, poller: &PollerHandle, jobs: &JobQueue) {
    let Job { mut conn, mut request } = job;
    if let Err(e) = make_blocking(&conn) {
        log::debug!("closing connection from {}: socket setup failed: {e}", conn.peer);
        return;
    }

    loop {
        match serve_request(&mut conn, request, app) {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Linger => {
                let _ = conn.stream.shutdown(Shutdown::Write);
                let _ = conn.stream.set_nonblocking(true);
                poller.park(conn, Park::Linger);
                return;
            }
        }

        // A client that sends its next request at once is served without a trip through
        // the poller, as long as another worker is free for new work meanwhile.
        if conn.buffered().is_empty() && jobs.has_idle_worker() && next_request_arrives(&conn) {
            match conn.fill() {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("closing connection from {}: reading its next request failed: {e}", conn.peer);
                    return;
                }
            }
        }

        match parse_head(conn.buffered(), conn.peer) {
            ParseOutcome::Complete(next, head_len) => {
                conn.consume(head_len);
                request = next;
            }
            ParseOutcome::Partial | ParseOutcome::Invalid(_) => {
                if conn.stream.set_nonblocking(true).is_ok() {
                    poller.park(conn, Park::KeepAlive);
                }
                return;
            }
        }
    }
}

/// Waits up to [`NEXT_REQUEST_WAIT`] for the client's next request on a keep-alive connection.
fn next_request_arrives(conn: &Connection) -> bool {
    let mut pfd = libc::pollfd { fd: conn.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let timeout = NEXT_REQUEST_WAIT.as_millis() as libc::c_int;
    // SAFETY: one valid pollfd for a socket this worker owns, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
    ready == 1 && pfd.revents & libc::POLLIN != 0
}

enum Next {
    KeepAlive,
    Close,
    /// Close after discarding, for a while, input the client may still send.
    Linger,
}

/// Serves one request: token, handler, response, access log.
fn serve_request(conn: &mut Connection, request: Request, app: &App) -> Next {
    let started = Instant::now();
    let peer = conn.peer;
    let mut body = BodyReader::new(conn, request.body, request.expect_continue);

    let permit = app.limiter.try_acquire(peer.ip());
    let (response, panicked) = match &permit {
        Err(refusal) => {
            log::debug!("no token for {peer}: {refusal:?}");
            (ApiError::TooManyRequests.to_response(), false)
        }
        Ok(_) => run_handler(app, &request, &mut body),
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
    let written = match &permit {
        Ok(_) => write_response(body.stream(), response, head_only, framing),
        Err(_) => write_too_many_requests(body.stream(), response, head_only, framing),
    };
    drop(permit);

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

/// Switches the socket to blocking mode; its read and write timeouts of `idle_timeout_secs`
/// were set when it was accepted.
fn make_blocking(conn: &Connection) -> std::io::Result<()> {
    conn.stream.set_nonblocking(false)
}

fn log_access(request: &Request, status: u16, bytes: u64, cut_off: bool, started: Instant) {
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
