//! The fixed pool of worker threads that serve parsed requests.
//!
//! A worker takes a [`Job`] (a connection with a complete request head), takes a token from the
//! limiter or responds 429 at once, runs the handler with panics caught, writes the response,
//! and gives the token back only after the last byte is written. It then serves requests the
//! client already pipelined, and hands the connection back to the poller to wait for the next.
//! Sockets are blocking here, with read and write timeouts, so a stalled client costs at most
//! `idle_timeout_secs` of one worker.

use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;


use crate::api::ApiError;
use crate::handlers::App;
use crate::server::body::BodyReader;
use crate::server::conn::Connection;
use crate::server::poller::{Park, PollerHandle};
use crate::server::queue::JobQueue;
use crate::server::request::{parse_head, Method, ParseOutcome, Request};
use crate::server::response::{write_response, Framing, Response};
use crate::server::Job;

/// Starts `count` workers that run until the job queue is closed and empty.
pub fn spawn_workers(
    count: usize,
    jobs: JobQueue,
    app: Arc<App>,
    poller: PollerHandle,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let jobs = jobs.clone();
            let app = app.clone();
            let poller = poller.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    while let Some(job) = jobs.pop() {
                        serve_connection(job, &app, &poller);
                    }
                })
                .expect("spawning a worker thread at startup")
        })
        .collect()
}

/// Serves the job's request and any complete requests pipelined behind it.
fn serve_connection(job: Job, app: &App, poller: &PollerHandle) {
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
    let written = write_response(body.stream(), response, head_only, framing);
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
