//! Where workers wait for work: requests the poller parsed, and keep-alive connections whose
//! response a worker has just sent.
//!
//! The workers share one epoll instance. It watches an eventfd that counts the jobs the poller
//! queued, and each connection whose response was sent a moment ago, in one-shot mode so that exactly
//! one worker takes it when its next request arrives. A worker that finishes a response thus
//! picks up the next ready request of any connection without sleeping, as an event loop does.
//! A client that sends its next request at once costs no trip through the poller. The poller takes back connections watched here for longer than
//! [`WATCH_WINDOW`], so idle connections fall under its timeouts as before.
//!
//! Each watched connection sits in a slot with a generation number, and its epoll event
//! carries both: a stale event for a connection already taken back is recognised and dropped.
//!
//! Idle workers do not all wait in epoll: the kernel wakes a waiting worker for every event,
//! even when a busy worker would take it a few microseconds later without sleeping. So an idle
//! worker waits in epoll only while fewer than `busy_limit` workers are busy. Otherwise it waits
//! on the bench, whose first worker looks for work every [`BENCH_POLL`] and, after
//! [`BENCH_POLLS`] looks that find nothing, waits in epoll itself. A busy worker that
//! starts a long wait on a client ([`JobQueue::step_out`]) stops counting as busy.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::server::conn::Connection;
use crate::server::Job;

/// How long a connection stays watched by the workers after a response before the poller
/// takes it back. The poller checks on its tick, so the real time is up to one tick longer.
pub const WATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often the first worker on the bench looks for work that no busy worker took.
const BENCH_POLL: Duration = Duration::from_millis(1);

/// Looks that find nothing before the first worker on the bench waits in epoll instead. Under
/// load the busy workers take each request within a few looks. When the looks keep finding
/// nothing, a wake-up per request costs less than a thousand looks a second.
const BENCH_POLLS: usize = 10;

/// The epoll token of the eventfd that counts queued jobs.
const JOBS_SIGNAL: u64 = u64::MAX;

/// Added to the job count on close so that every worker, now and later, wakes and ends.
const CLOSED_SIGNAL: u64 = 1 << 40;

/// The next piece of work for a worker.
pub enum Work {
    /// A request the poller parsed, with its connection in non-blocking mode.
    Request(Job),
    /// A watched connection that became readable; its socket is still in blocking mode.
    Readable(Connection),
}

struct Watched {
    conn: Connection,
    generation: u32,
    since: Instant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    watched: Vec<Option<Watched>>,
    free_slots: Vec<usize>,
    generation: u32,
}

struct Inner {
    epoll: OwnedFd,
    jobs_signal: OwnedFd,
    state: Mutex<State>,
    /// Workers blocked in `epoll_wait` now.
    waiting: AtomicUsize,
    /// Workers serving a request now, except those in a long wait on a client.
    busy: AtomicUsize,
    busy_limit: usize,
    bench: Mutex<Bench>,
    bench_call: Condvar,
    /// Workers on the bench, changed under its lock and read without it.
    sitting: AtomicUsize,
}

/// Idle workers kept out of epoll while enough workers are busy.
#[derive(Default)]
struct Bench {
    /// A worker sits first and looks for work every [`BENCH_POLL`].
    head_taken: bool,
}

/// The shared queue; clones refer to the same queue.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

impl JobQueue {
    /// Creates the epoll instance and the job counter. Idle workers wait in epoll while fewer
    /// than `busy_limit` workers are busy.
    pub fn new(busy_limit: usize) -> io::Result<JobQueue> {
        // SAFETY: plain system calls; each result is checked before it is wrapped as owned.
        let epoll = unsafe { owned(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
        let flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE;
        // SAFETY: as above.
        let jobs_signal = unsafe { owned(libc::eventfd(0, flags))? };

        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: JOBS_SIGNAL };
        // SAFETY: both descriptors are open and owned here; `event` outlives the call.
        let added = unsafe {
            libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, jobs_signal.as_raw_fd(), &mut event)
        };
        if added != 0 {
            return Err(io::Error::last_os_error());
        }

        let inner = Inner {
            epoll,
            jobs_signal,
            state: Mutex::default(),
            waiting: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            busy_limit: busy_limit.max(1),
            bench: Mutex::default(),
            bench_call: Condvar::new(),
            sitting: AtomicUsize::new(0),
        };
        Ok(JobQueue { inner: Arc::new(inner) })
    }

    /// Adds a job and wakes one waiting worker. Returns the job when the queue is closed.
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let mut state = self.lock();
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);

        self.signal_jobs(1);
        Ok(())
    }

    /// Watches a connection whose response is complete and whose buffer is empty, so the
    /// first worker free when its next request arrives serves it. The socket stays blocking.
    pub fn watch(&self, mut conn: Connection) {
        let fd = conn.stream.as_raw_fd();
        let was_registered = std::mem::replace(&mut conn.watched_by_workers, true);

        let mut state = self.lock();
        if state.closed {
            return;
        }
        let slot = state.free_slots.pop().unwrap_or_else(|| {
            state.watched.push(None);
            state.watched.len() - 1
        });
        state.generation = state.generation.wrapping_add(1);
        let generation = state.generation;
        state.watched[slot] = Some(Watched { conn, generation, since: Instant::now() });
        drop(state);

        // The event can fire as soon as the connection is armed, so it is armed last.
        let token = (u64::from(generation) << 32) | slot as u64;
        if let Err(e) = self.arm(fd, token, was_registered) {
            if let Some(watched) = self.take(slot, generation) {
                log::error!("cannot watch the connection from {} for its next request: {e}; closing it", watched.peer);
            }
        }
    }

    /// Waits for the next piece of work. The caller counts as busy until the returned guard
    /// drops. Returns `None` once the queue is closed and every queued job has been taken.
    pub fn next(&self) -> Option<(Work, Busy<'_>)> {
        let work = self.next_work()?;
        self.inner.busy.fetch_add(1, Ordering::Relaxed);
        Some((work, Busy { queue: self }))
    }

    /// Stops counting the calling worker as busy until the guard drops, for a wait on a client
    /// that may be long: streaming a large body or receiving an upload. If that leaves no
    /// worker waiting in epoll while others could, one is called off the bench.
    pub fn step_out(&self) -> SteppedOut<'_> {
        let busy = self.inner.busy.fetch_sub(1, Ordering::Relaxed) - 1;
        if busy < self.inner.busy_limit && self.inner.waiting.load(Ordering::Relaxed) == 0 {
            self.inner.bench_call.notify_one();
        }
        SteppedOut { queue: self }
    }

    /// Idle workers: waiting in epoll or on the bench.
    pub fn idle(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed) + self.inner.sitting.load(Ordering::Relaxed)
    }

    fn next_work(&self) -> Option<Work> {
        loop {
            let token = self.wait_for_event();
            if token != JOBS_SIGNAL {
                let (slot, generation) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
                match self.take(slot, generation) {
                    Some(conn) => return Some(Work::Readable(conn)),
                    None => continue,
                }
            }

            if !self.claim_job_signal() {
                continue;
            }
            let mut state = self.lock();
            match state.jobs.pop_front() {
                Some(job) => return Some(Work::Request(job)),
                None if state.closed => return None,
                None => continue,
            }
        }
    }

    /// Takes back the connections watched for longer than [`WATCH_WINDOW`], disarmed.
    pub fn take_expired(&self) -> Vec<Connection> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut state = self.lock();
        for slot in 0..state.watched.len() {
            let due = state.watched[slot].as_ref().is_some_and(|w| now.duration_since(w.since) >= WATCH_WINDOW);
            if due {
                if let Some(watched) = state.watched[slot].take() {
                    state.free_slots.push(slot);
                    expired.push(watched.conn);
                }
            }
        }
        drop(state);

        for conn in &mut expired {
            self.disarm(conn);
        }
        expired
    }

    /// Refuses new jobs, closes the watched connections, and lets workers end once the queued
    /// jobs are served.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let watched: Vec<Watched> = state.watched.iter_mut().filter_map(Option::take).collect();
        drop(state);

        drop(watched);
        self.signal_jobs(CLOSED_SIGNAL);
        self.inner.bench_call.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bench(&self) -> MutexGuard<'_, Bench> {
        self.inner.bench.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until an event arrives and returns its token: an event already pending is taken
    /// at once, and otherwise the worker sleeps in epoll or on the bench.
    fn wait_for_event(&self) -> u64 {
        loop {
            if let Some(token) = self.poll_epoll(0) {
                return token;
            }
            if self.inner.busy.load(Ordering::Relaxed) >= self.inner.busy_limit {
                match self.sit_on_bench() {
                    Some(token) => return token,
                    None => continue,
                }
            }

            self.inner.waiting.fetch_add(1, Ordering::Relaxed);
            let event = self.poll_epoll(-1);
            self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
            if let Some(token) = event {
                return token;
            }
        }
    }

    /// Waits on the bench until called, or as its first worker, until work turns up that no
    /// busy worker took or fewer workers are busy: it looks [`BENCH_POLLS`] times, then waits
    /// in epoll. A worker called when the first one left becomes the first. Returns an event
    /// the first worker found.
    fn sit_on_bench(&self) -> Option<u64> {
        let mut bench = self.bench();
        self.inner.sitting.fetch_add(1, Ordering::Relaxed);
        if bench.head_taken {
            bench = self.inner.bench_call.wait(bench).unwrap_or_else(PoisonError::into_inner);
            // Called with the first worker still polling: look again. Called by a first worker
            // that left: take over its polling, so no worker sits here unwatched.
            if bench.head_taken {
                self.inner.sitting.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
        }

        bench.head_taken = true;
        for _ in 0..BENCH_POLLS {
            bench = self.inner.bench_call.wait_timeout(bench, BENCH_POLL).unwrap_or_else(PoisonError::into_inner).0;
            drop(bench);
            let event = self.poll_epoll(0);
            let crowded = self.inner.busy.load(Ordering::Relaxed) >= self.inner.busy_limit;
            bench = self.bench();
            if event.is_some() || !crowded {
                return self.leave_bench_head(bench, event);
            }
        }

        // Nothing came for a while, so the busy workers are more likely blocked than quick:
        // wait in epoll, still as the first worker so the others stay asleep.
        self.inner.sitting.fetch_sub(1, Ordering::Relaxed);
        drop(bench);
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let event = self.poll_epoll(-1);
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        bench = self.bench();
        self.inner.sitting.fetch_add(1, Ordering::Relaxed);
        self.leave_bench_head(bench, event)
    }

    /// Ends the first worker's turn on the bench and calls the next one to take it over.
    fn leave_bench_head(&self, mut bench: MutexGuard<'_, Bench>, event: Option<u64>) -> Option<u64> {
        bench.head_taken = false;
        self.inner.sitting.fetch_sub(1, Ordering::Relaxed);
        let others = self.inner.sitting.load(Ordering::Relaxed) > 0;
        drop(bench);
        if others {
            self.inner.bench_call.notify_one();
        }
        event
    }

    /// Waits in `epoll_wait` for one event, up to `timeout` milliseconds (-1: no limit).
    fn poll_epoll(&self, timeout: libc::c_int) -> Option<u64> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the epoll descriptor is open for the queue's lifetime; one event fits.
        let n = unsafe { libc::epoll_wait(self.inner.epoll.as_raw_fd(), &mut event, 1, timeout) };
        if n == 1 {
            return Some(event.u64);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("workers' epoll wait failed: {e}; retrying");
                std::thread::sleep(BENCH_POLL);
            }
        }
        None
    }

    /// Takes one unit from the job counter; false when another worker took it first.
    fn claim_job_signal(&self) -> bool {
        let mut value = 0u64;
        // SAFETY: an 8-byte read into a u64 from the eventfd owned by the queue.
        let n = unsafe { libc::read(self.inner.jobs_signal.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        n == 8
    }

    fn signal_jobs(&self, count: u64) {
        // SAFETY: an 8-byte write of a u64 to the eventfd owned by the queue.
        let n = unsafe { libc::write(self.inner.jobs_signal.as_raw_fd(), (&count as *const u64).cast(), 8) };
        if n != 8 {
            log::error!("cannot signal the workers: {}", io::Error::last_os_error());
        }
    }

    /// Removes a watched connection if the slot still has the given generation.
    fn take(&self, slot: usize, generation: u32) -> Option<Connection> {
        let mut state = self.lock();
        let entry = state.watched.get_mut(slot)?;
        if entry.as_ref()?.generation != generation {
            return None;
        }
        let watched = entry.take()?;
        state.free_slots.push(slot);
        Some(watched.conn)
    }

    /// Arms one read event for the socket, registering it on its first watch.
    fn arm(&self, fd: RawFd, token: u64, registered: bool) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
        let first = if registered { libc::EPOLL_CTL_MOD } else { libc::EPOLL_CTL_ADD };
        match self.control(first, fd, events, token) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.control(libc::EPOLL_CTL_ADD, fd, events, token),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.control(libc::EPOLL_CTL_MOD, fd, events, token),
            other => other,
        }
    }

    /// Removes the socket from the workers' epoll instance.
    fn disarm(&self, conn: &mut Connection) {
        if std::mem::replace(&mut conn.watched_by_workers, false) {
            let _ = self.control(libc::EPOLL_CTL_DEL, conn.stream.as_raw_fd(), 0, 0);
        }
    }

    fn control(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `fd` is an open socket owned by a live connection; `event` outlives the call.
        let result = unsafe { libc::epoll_ctl(self.inner.epoll.as_raw_fd(), op, fd, &mut event) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A worker serving the work [`JobQueue::next`] gave it, a panic that ends its thread included.
pub struct Busy<'a> {
    queue: &'a JobQueue,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.queue.inner.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker in a long wait on a client; it counts as busy again when this drops.
pub struct SteppedOut<'a> {
    queue: &'a JobQueue,
}

impl Drop for SteppedOut<'_> {
    fn drop(&mut self) {
        self.queue.inner.busy.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps a new descriptor, or returns the error a negative result stands for.
///
/// # Safety
/// `fd` must be a descriptor just returned by a system call, with no other owner.
unsafe fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::request::{parse_head, ParseOutcome};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// Connects a pair: returns the server side wrapped as a connection, and the client side.
    fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        (Connection::new(server, peer, Arc::new(AtomicUsize::new(1))), client)
    }

    fn new_job() -> (Job, TcpStream) {
        let (conn, client) = pair();
        let ParseOutcome::Complete(request, _) = parse_head(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", conn.peer) else {
            panic!("a valid head")
        };
        (Job { conn, request }, client)
    }

    #[test]
    fn queued_job_counts_busy() {
        let queue = JobQueue::new(1).unwrap();
        let (job, _client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();

        let (work, busy) = queue.next().unwrap();
        assert!(matches!(work, Work::Request(_)));
        assert_eq!(queue.inner.busy.load(Ordering::Relaxed), 1);
        drop(busy);
        assert_eq!(queue.inner.busy.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn watched_connection_returns_when_readable() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, mut client) = pair();
        let peer = conn.peer;
        queue.watch(conn);

        client.write_all(b"GET").unwrap();
        let (work, _busy) = queue.next().unwrap();
        let Work::Readable(conn) = work else { panic!("expected the watched connection") };
        assert_eq!(conn.peer, peer);
        assert!(conn.watched_by_workers);
    }

    #[test]
    fn expired_connection_is_taken_back() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, mut client) = pair();
        queue.watch(conn);
        assert!(queue.take_expired().is_empty(), "a connection just watched is not due");

        std::thread::sleep(WATCH_WINDOW);
        let expired = queue.take_expired();
        assert_eq!(expired.len(), 1);
        assert!(!expired[0].watched_by_workers, "a connection taken back is no longer registered");

        // Bytes for the taken-back connection wake no worker; a job still does.
        client.write_all(b"GET").unwrap();
        let (job, _other) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        let (work, _busy) = queue.next().unwrap();
        assert!(matches!(work, Work::Request(_)));
    }

    #[test]
    fn stale_generation_is_ignored() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, _client) = pair();
        queue.watch(conn);

        assert!(queue.take(0, 0).is_none(), "generation 0 was never handed out");
        assert!(queue.take(0, 1).is_some());
        assert!(queue.take(0, 1).is_none(), "a slot is taken once");
    }

    #[test]
    fn close_ends_workers_after_queued_jobs() {
        let queue = JobQueue::new(1).unwrap();
        let (job, _client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        let (watched, _watched_client) = pair();
        queue.watch(watched);
        queue.close();

        let (work, busy) = queue.next().unwrap();
        assert!(matches!(work, Work::Request(_)));
        drop(busy);
        assert!(queue.next().is_none());
        assert!(queue.next().is_none(), "a closed queue stays closed for every worker");
        let (late, _late_client) = new_job();
        assert!(queue.push(late).is_err());
    }

    #[test]
    fn idle_worker_benched_while_others_busy() {
        let queue = JobQueue::new(1).unwrap();
        let (job, _client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        let (_work, _busy) = queue.next().unwrap();

        let waiter = queue.clone();
        let handle = std::thread::spawn(move || waiter.next().map(|(work, _)| matches!(work, Work::Request(_))));
        let deadline = Instant::now() + Duration::from_secs(5);
        while queue.inner.sitting.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(queue.inner.waiting.load(Ordering::Relaxed), 0, "no worker may sleep in epoll");

        // The bench's first worker finds the new job by polling.
        let (second, _second_client) = new_job();
        queue.push(second).map_err(|_| ()).unwrap();
        assert_eq!(handle.join().unwrap(), Some(true));
    }
}
