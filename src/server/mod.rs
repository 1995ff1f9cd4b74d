//! The HTTP/1.1 server under the worker pool: listener, poller, workers and shutdown.
//!
//! Threads and their jobs:
//! - the poller ([`poller`]) accepts connections, waits for request heads on all of them with
//!   epoll, enforces header and idle timeouts, and sends each complete head to the workers;
//! - each lane ([`lanes`]: one per core with local storage, one with S3) has a pool of at most
//!   `workers` threads ([`worker`]). A worker takes a limiter token per request, runs the
//!   handler and writes the response, then watches the connection for its next request in an
//!   epoll instance its lane's workers share ([`queue`]) before the poller takes it back.
//!
//! Idle and slow clients therefore cost no thread, and the thread count is at most
//! `lanes x workers + 2` whatever the number of connections.

pub mod body;
pub mod conn;
pub mod lanes;
pub mod poller;
pub mod queue;
pub mod request;
pub mod response;
pub mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, StorageBackend};
use crate::handlers::App;
use conn::Connection;
use poller::{Poller, PollerHandle, PollerSettings};
use request::Request;

/// A connection with a complete request head, waiting for a worker.
pub struct Job {
    pub conn: Connection,
    pub request: Request,
}

/// The accept queue length; std's default of 128 overflows under a burst of new connections
/// while the poller waits for a CPU, and each overflow costs the client a one-second SYN retry.
const LISTEN_BACKLOG: i32 = 4096;

/// Raises the accept queue length. Linux lets `listen` be called again on a listening socket
/// to change it; the kernel caps it at `net.core.somaxconn`.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is a bound, listening socket owned by `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        log::warn!("cannot widen the listen backlog: {}", io::Error::last_os_error());
    }
}

/// Returns how many lanes ([`lanes`]) serve connections, and how many busy workers of a lane
/// keep its idle workers out of epoll (see [`queue`]). With local storage a busy worker keeps
/// about one core busy, the kernel's network work for its system calls included, so each core
/// gets a lane of one busy worker. On 2 cores (BENCHMARKS.md) one lane with a limit of 1 spent
/// 13 us of CPU per 64 KiB range request, and one with a limit of 2 spent 30 us. Two lanes
/// with a limit of 1 spent 13 us and served about 15% more requests than one. With S3
/// storage a busy worker mostly waits on the bucket, so one lane serves all, an idle worker
/// always waits in epoll, and the next one takes its place when it takes work.
fn lane_layout(config: &Config) -> (usize, usize) {
    match config.storage.backend {
        StorageBackend::S3 => (1, usize::MAX),
        StorageBackend::Local => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores.min(MAX_LANES), 1)
        }
    }
}

/// The maximum number of lanes, so that a machine with many cores starts a bounded number of
/// threads.
const MAX_LANES: usize = 16;

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    poller: PollerHandle,
    poller_thread: Option<JoinHandle<()>>,
    workers: Vec<worker::WorkerPool>,
    open_count: Arc<AtomicUsize>,
}

impl Server {
    /// Binds the listener and starts the poller and the workers.
    pub fn start(config: &Config, app: Arc<App>) -> io::Result<Server> {
        let addr = config.listen_addr().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr)?;
        widen_backlog(&listener);
        let local_addr = listener.local_addr()?;

        let stopping = app.stopping.clone();
        let open_count = Arc::new(AtomicUsize::new(0));
        let (lane_count, busy_limit) = lane_layout(config);
        let lanes = lanes::Lanes::new(lane_count, busy_limit)?;
        let settings = PollerSettings {
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_connections: config.max_connections,
        };
        let (poller, handle) =
            Poller::new(listener, settings, lanes.clone(), open_count.clone(), stopping.clone())?;

        let poller_thread = std::thread::Builder::new().name("poller".into()).spawn(move || poller.run())?;
        let workers = lanes
            .queues()
            .iter()
            .enumerate()
            .map(|(lane, jobs)| {
                worker::WorkerPool::start(lane, lane_count, config.worker_count(), jobs.clone(), app.clone(), handle.clone())
            })
            .collect();

        Ok(Server {
            local_addr,
            stopping,
            poller: handle,
            poller_thread: Some(poller_thread),
            workers,
            open_count,
        })
    }

    /// The bound address, with the real port when the config asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the number of lanes ([`lanes`]), each with its own pool of up to `workers`
    /// threads.
    pub fn lanes(&self) -> usize {
        self.workers.len()
    }

    /// Open client connections now.
    pub fn open_connections(&self) -> usize {
        self.open_count.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes waiting connections and waits for the poller to end.
    /// Workers finish the request they are serving; their threads end once every job is done.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.poller.wake();
        if let Some(thread) = self.poller_thread.take() {
            let _ = thread.join();
        }
    }

    /// Waits for the poller thread; returns after [`Server::stop`] or a fatal poller error.
    pub fn wait(&mut self) {
        if let Some(thread) = self.poller_thread.take() {
            let _ = thread.join();
        }
    }

    /// Worker threads still running; after [`Server::stop`] they end once the requests they
    /// serve and the queued ones are done.
    pub fn running_workers(&self) -> usize {
        self.workers.iter().map(worker::WorkerPool::running).sum()
    }
}
