//! Where the workers of one lane ([`crate::server::lanes`]) wait for work: requests the poller
//! parsed, and keep-alive connections whose response a worker has just sent.
//!
//! The lane's workers share one epoll instance. It watches an eventfd that counts the jobs
//! the poller queued, and each connection whose response was sent a moment ago, so that one
//! worker takes it when its next request arrives. A worker that finishes a response thus picks up the next
//! ready request of any connection without sleeping, as an event loop does. A client that
//! sends its next request at once costs no trip through the poller. The poller takes back
//! connections watched here for longer than [`WATCH_WINDOW`], so idle connections fall under
//! its timeouts as before.
//!
//! A connection is registered once, edge-triggered, and stays registered while it moves
//! between workers, so watching it again after each response costs no system call. It keeps
//! one slot, with a generation number, for that whole time, and its events carry both. When an
//! event finds the connection parked in its slot, the worker takes it. When a worker is
//! serving it, the event only marks that bytes arrived, and that worker reads them at once
//! instead of parking the connection. A stale event, for a connection that left the workers,
//! has an old generation and is dropped.
//!
//! At most one idle worker waits in epoll, on its one seat. The kernel wakes a waiting worker
//! for every event, even when a busy worker would take it a few microseconds later without
//! sleeping. With several waiting, it wakes the one that has waited longest, whose cache is
//! the coldest. A worker takes the seat only while fewer than `busy_limit` workers
//! are busy. The other idle workers wait on the bench, whose first worker looks for work
//! every [`BENCH_POLL`] while a worker is busy. It takes a pending event only when, since its
//! last look, the busy workers took no work (they are stuck on slow clients) or found work
//! waiting every time they looked (they fall behind). A busy worker that keeps up serves the
//! events itself, as one event loop does. While a worker waits on the seat, the first worker
//! rests, until the seat is left. A busy worker that starts a long wait on a client
//! ([`JobQueue::step_out`]) stops counting as busy.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::server::conn::Connection;
use crate::server::Job;

/// How long a connection stays watched by the workers after a response before the poller
/// takes it back. The poller checks on its tick, so the real time is up to one tick longer.
pub const WATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often the first worker on the bench looks for work that no busy worker took. This
/// bounds how long a request waits behind workers stuck on slow clients.
const BENCH_POLL: Duration = Duration::from_millis(1);

/// Looks that find the busy workers stuck before the first worker on the bench waits in epoll
/// instead, so that a worker blocked on a stalled client costs no thousand looks a second.
const BENCH_POLLS: usize = 10;

/// The epoll token of the eventfd that counts queued jobs.
const JOBS_SIGNAL: u64 = u64::MAX;

/// Added to the job count on close so that every worker, now and later, wakes and ends.
const CLOSED_SIGNAL: u64 = 1 << 40;

/// The next piece of work for a worker.
pub enum Work {
    /// A request the poller parsed, with its connection in non-blocking mode.
    Request(Job),
    /// A watched connection that its event reported readable, though the bytes may already
    /// have been read. Its socket is still in blocking mode.
    Readable(Connection),
}

/// A connection's place in the workers' epoll instance, from its first watch until it leaves
/// the workers. Dropping the connection frees the slot; the kernel drops the registration
/// when the socket closes.
pub struct Registration {
    queue: Weak<Inner>,
    slot: usize,
    generation: u32,
}

impl Registration {
    /// Removes the socket from the workers' epoll instance and frees the slot.
    pub fn release(self, fd: RawFd) {
        if let Some(inner) = self.queue.upgrade() {
            let queue = JobQueue { inner };
            let _ = queue.control(libc::EPOLL_CTL_DEL, fd, 0, 0);
            queue.free(self.slot, self.generation);
        }
    }

    /// Frees the slot of a connection that is closing.
    pub fn forget(self) {
        if let Some(inner) = self.queue.upgrade() {
            JobQueue { inner }.free(self.slot, self.generation);
        }
    }
}

/// An event as `epoll_wait` returned it.
#[derive(Clone, Copy)]
struct Ready {
    token: u64,
    events: u32,
}

/// Event bits saying the client will send nothing more: after the bytes still unread comes the
/// end of input, and no later edge announces it again.
const INPUT_ENDED: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// The event bit for urgent data: a read stops at its mark and leaves the bytes after it in
/// the socket, with no later edge to announce them.
const URGENT: u32 = libc::EPOLLPRI as u32;

/// The occupant of a registered connection's slot.
#[derive(Default)]
enum Occupant {
    #[default]
    Free,
    /// Waiting for its next request.
    Parked { conn: Connection, since: Instant },
    /// Being served by a worker; `arrived` contains the bits of the events that came meanwhile.
    Out { arrived: u32 },
}

#[derive(Default)]
struct Slot {
    generation: u32,
    occupant: Occupant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    generation: u32,
}

struct Inner {
    epoll: OwnedFd,
    jobs_signal: OwnedFd,
    state: Mutex<State>,
    /// The number of workers in `epoll_wait`: 1 while a worker holds the one seat there, 0
    /// otherwise.
    waiting: AtomicUsize,
    /// Workers serving a request now, except those in a long wait on a client.
    busy: AtomicUsize,
    busy_limit: usize,
    /// Pieces of work taken so far, so the bench's first worker can tell busy workers that
    /// keep up from busy workers that are stuck.
    work_taken: AtomicUsize,
    /// Times a worker found no event pending, so the bench's first worker can tell busy
    /// workers that keep up from busy workers that fall behind.
    drained: AtomicUsize,
    bench: Mutex<Bench>,
    /// The condition variable that the workers behind the bench's first one wait on.
    bench_call: Condvar,
    /// The condition variable that the bench's first worker waits on between looks and rests on.
    head_call: Condvar,
    /// Workers on the bench, changed under its lock and read without it.
    sitting: AtomicUsize,
    /// A flag set while the bench's first worker rests instead of looking every [`BENCH_POLL`].
    head_resting: AtomicBool,
    /// A flag set by [`JobQueue::close`], which makes the bench's first worker leave.
    closed: AtomicBool,
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
            work_taken: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            bench: Mutex::default(),
            bench_call: Condvar::new(),
            head_call: Condvar::new(),
            sitting: AtomicUsize::new(0),
            head_resting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        Ok(JobQueue { inner: Arc::new(inner) })
    }

    /// Adds a job and wakes one waiting worker. Returns the job when the queue is closed.
    // The job comes back unboxed: boxing it would cost an allocation on every request.
    #[allow(clippy::result_large_err)]
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
    /// Returns the connection instead when it may have input that no new event would announce:
    /// bytes that arrived while it was being served, bytes a full buffer or an urgent mark left
    /// in the socket, or the end of input. The caller reads without blocking, and watches it again if there was
    /// nothing.
    pub fn watch(&self, mut conn: Connection) -> Option<Connection> {
        if conn.input_ended || conn.filled_buffer || std::mem::take(&mut conn.urgent) {
            return Some(conn);
        }
        match conn.registration.as_ref().map(|r| (r.slot, r.generation)) {
            Some((slot, generation)) => self.park(conn, slot, generation),
            None => {
                self.register(conn);
                None
            }
        }
    }

    /// Parks a registered connection in its slot, unless an event came while it was out.
    fn park(&self, mut conn: Connection, slot: usize, generation: u32) -> Option<Connection> {
        let mut state = self.lock();
        let closed = state.closed;
        let Some(entry) = state.slots.get_mut(slot).filter(|e| e.generation == generation && !closed) else {
            drop(state);
            return None;
        };
        if let Occupant::Out { arrived } = entry.occupant {
            if arrived != 0 {
                entry.occupant = Occupant::Out { arrived: 0 };
                conn.input_ended |= arrived & INPUT_ENDED != 0;
                conn.urgent |= arrived & URGENT != 0;
                return Some(conn);
            }
        }
        entry.occupant = Occupant::Parked { conn, since: Instant::now() };
        None
    }

    /// Gives a connection a slot and registers it, edge-triggered, for the rest of its time
    /// with the workers.
    fn register(&self, mut conn: Connection) {
        let fd = conn.stream.as_raw_fd();
        let mut state = self.lock();
        if state.closed {
            drop(state);
            return;
        }
        let slot = state.free_slots.pop().unwrap_or_else(|| {
            state.slots.push(Slot::default());
            state.slots.len() - 1
        });
        state.generation = state.generation.wrapping_add(1);
        let generation = state.generation;
        conn.registration = Some(Registration { queue: Arc::downgrade(&self.inner), slot, generation });
        state.slots[slot] = Slot { generation, occupant: Occupant::Parked { conn, since: Instant::now() } };
        drop(state);

        // The event can fire as soon as the socket is registered, so that comes last.
        let token = (u64::from(generation) << 32) | slot as u64;
        if let Err(e) = self.add(fd, token) {
            if let Some(conn) = self.take(slot, generation, 0) {
                log::error!("cannot watch the connection from {} for its next request: {e}; closing it", conn.peer);
            }
        }
    }

    /// Waits for the next piece of work. The caller counts as busy until the returned guard
    /// drops. Returns `None` once the queue is closed and every queued job has been taken.
    pub fn next(&self) -> Option<(Work, Busy<'_>)> {
        let (work, seated) = self.next_work()?;
        let busy = self.inner.busy.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.work_taken.fetch_add(1, Ordering::Relaxed);

        // A worker that left the seat in epoll calls the bench's first worker to take it at
        // once when more workers may be busy. A resting first worker is called back to its
        // looks, as a busy worker may get stuck.
        let hand_over_seat = seated && busy < self.inner.busy_limit && self.inner.sitting.load(Ordering::SeqCst) > 0;
        if hand_over_seat {
            self.call_head();
        } else {
            self.call_resting_head();
        }
        Some((work, Busy { queue: self }))
    }

    /// Stops counting the calling worker as busy until the guard drops, for a wait on a client
    /// that may be long: streaming a large body or receiving an upload. If that leaves the
    /// seat in epoll empty while fewer workers are busy, the bench's first worker is called.
    pub fn step_out(&self) -> SteppedOut<'_> {
        let busy = self.inner.busy.fetch_sub(1, Ordering::SeqCst) - 1;
        if busy < self.inner.busy_limit && self.inner.waiting.load(Ordering::SeqCst) == 0 {
            self.call_head();
        }
        SteppedOut { queue: self }
    }

    /// Idle workers: waiting in epoll or on the bench.
    pub fn idle(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed) + self.inner.sitting.load(Ordering::Relaxed)
    }

    /// Returns the next piece of work, and whether the worker waited for it on the seat in
    /// epoll.
    fn next_work(&self) -> Option<(Work, bool)> {
        loop {
            let (ready, seated) = self.wait_for_event();
            if ready.token != JOBS_SIGNAL {
                let (slot, generation) = ((ready.token & 0xffff_ffff) as usize, (ready.token >> 32) as u32);
                match self.take(slot, generation, ready.events) {
                    Some(conn) => return Some((Work::Readable(conn), seated)),
                    None => continue,
                }
            }

            if !self.claim_job_signal() {
                continue;
            }
            let mut state = self.lock();
            match state.jobs.pop_front() {
                Some(job) => return Some((Work::Request(job), seated)),
                None if state.closed => return None,
                None => continue,
            }
        }
    }

    /// Takes back the connections parked for longer than [`WATCH_WINDOW`], unregistered.
    pub fn take_expired(&self) -> Vec<Connection> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut state = self.lock();
        for slot in 0..state.slots.len() {
            let entry = &mut state.slots[slot];
            let due = matches!(&entry.occupant, Occupant::Parked { since, .. } if now.duration_since(*since) >= WATCH_WINDOW);
            if due {
                if let Occupant::Parked { mut conn, .. } = std::mem::take(&mut entry.occupant) {
                    conn.registration = None;
                    state.free_slots.push(slot);
                    expired.push(conn);
                }
            }
        }
        drop(state);

        for conn in &expired {
            let _ = self.control(libc::EPOLL_CTL_DEL, conn.stream.as_raw_fd(), 0, 0);
        }
        expired
    }

    /// Refuses new jobs, closes the watched connections, and lets workers end once the queued
    /// jobs are served.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let mut parked = Vec::new();
        for entry in &mut state.slots {
            if let Occupant::Parked { mut conn, .. } = std::mem::take(&mut entry.occupant) {
                conn.registration = None;
                parked.push(conn);
            }
        }
        drop(state);

        drop(parked);
        self.signal_jobs(CLOSED_SIGNAL);
        self.inner.closed.store(true, Ordering::SeqCst);
        let _bench = self.bench();
        self.inner.bench_call.notify_all();
        self.inner.head_call.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bench(&self) -> MutexGuard<'_, Bench> {
        self.inner.bench.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until an event arrives and returns it, with whether the worker waited for it on
    /// the seat in epoll. An event already pending is taken at once. Otherwise the worker
    /// takes the seat when it is empty and fewer than `busy_limit` workers are busy, or sits
    /// on the bench.
    fn wait_for_event(&self) -> (Ready, bool) {
        loop {
            if let Some(ready) = self.poll_epoll(0) {
                return (ready, false);
            }
            self.inner.drained.fetch_add(1, Ordering::Relaxed);

            if self.inner.busy.load(Ordering::SeqCst) < self.inner.busy_limit && self.claim_seat() {
                let event = self.poll_epoll(-1);
                self.inner.waiting.store(0, Ordering::SeqCst);
                match event {
                    Some(ready) => return (ready, true),
                    None => continue,
                }
            }

            if let Some(ready) = self.sit_on_bench() {
                return (ready, false);
            }
        }
    }

    /// Takes the one seat in epoll. Returns false when another worker waits there.
    fn claim_seat(&self) -> bool {
        self.inner.waiting.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// True when new work could go unnoticed without the bench's first worker: no worker
    /// waits in epoll. A worker there is woken by every event.
    fn needs_watch(&self) -> bool {
        self.inner.waiting.load(Ordering::SeqCst) == 0
    }

    /// Calls a resting first worker on the bench back to its looks when work could go
    /// unnoticed without it.
    fn call_resting_head(&self) {
        if self.inner.head_resting.load(Ordering::SeqCst) && self.needs_watch() {
            self.call_head();
        }
    }

    /// Wakes the bench's first worker for a look now.
    fn call_head(&self) {
        // Taking the lock orders this call after a first worker's check before it waits.
        let _bench = self.bench();
        self.inner.head_call.notify_one();
    }

    /// Waits on the bench until called, or as its first worker, looks for work every
    /// [`BENCH_POLL`] until it can take the seat in epoll. A look takes a pending event only
    /// when, since the last look, the busy workers took no work (they are stuck on slow
    /// clients, and the request would otherwise wait) or never found the queue empty (they
    /// fall behind). Busy workers that keep up are left alone, since each event taken here
    /// wakes a second worker that the busy one would have spared. After [`BENCH_POLLS`] looks
    /// that find the busy workers stuck, the first worker waits in epoll. After a look that
    /// finds a worker in epoll, it rests until called. Returns an event the first worker took.
    fn sit_on_bench(&self) -> Option<Ready> {
        let mut bench = self.bench();
        self.inner.sitting.fetch_add(1, Ordering::SeqCst);
        if bench.head_taken {
            // This worker may have left the seat in epoll empty while a worker is busy.
            if self.inner.head_resting.load(Ordering::SeqCst) && self.needs_watch() {
                self.inner.head_call.notify_one();
            }
            bench = self.inner.bench_call.wait(bench).unwrap_or_else(PoisonError::into_inner);
            // Called with the first worker still polling: look again. Called by a first worker
            // that left: take over its polling, so no worker sits here unwatched.
            if bench.head_taken {
                self.inner.sitting.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
        }

        bench.head_taken = true;
        let mut rest = false;
        let mut stuck_looks = 0;
        let mut last_taken = self.inner.work_taken.load(Ordering::Relaxed);
        let mut last_drained = self.inner.drained.load(Ordering::Relaxed);
        loop {
            bench = self.wait_as_head(bench, rest);
            drop(bench);

            let (taken, drained) = (self.inner.work_taken.load(Ordering::Relaxed), self.inner.drained.load(Ordering::Relaxed));
            let stuck = taken == last_taken;
            let behind = !stuck && drained == last_drained;
            (last_taken, last_drained) = (taken, drained);
            let event = if stuck || behind { self.poll_epoll(0) } else { None };

            bench = self.bench();
            let busy = self.inner.busy.load(Ordering::SeqCst);
            let seat_empty = self.inner.waiting.load(Ordering::SeqCst) == 0;
            if event.is_some() || (busy < self.inner.busy_limit && seat_empty) || self.is_closed() {
                return self.leave_bench_head(bench, event);
            }
            // With a worker in epoll, nothing can go unnoticed until it takes work, which
            // calls the first worker back.
            rest = !seat_empty;
            stuck_looks = if busy > 0 && stuck { stuck_looks + 1 } else { 0 };

            // Busy workers that stay stuck are blocked on stalled clients, not quick: wait in
            // epoll instead of looking a thousand times a second, still as the first worker so
            // the others stay asleep.
            if stuck_looks >= BENCH_POLLS && self.claim_seat() {
                self.inner.sitting.fetch_sub(1, Ordering::SeqCst);
                drop(bench);
                let event = self.poll_epoll(-1);
                self.inner.waiting.store(0, Ordering::SeqCst);
                bench = self.bench();
                self.inner.sitting.fetch_add(1, Ordering::SeqCst);
                return self.leave_bench_head(bench, event);
            }
        }
    }

    /// Waits as the bench's first worker: for [`BENCH_POLL`], or when `rest`, until called.
    /// A rest is skipped when work could go unnoticed.
    fn wait_as_head<'a>(&self, bench: MutexGuard<'a, Bench>, rest: bool) -> MutexGuard<'a, Bench> {
        if !rest {
            return self.inner.head_call.wait_timeout(bench, BENCH_POLL).unwrap_or_else(PoisonError::into_inner).0;
        }

        // Set before the check, so a worker that makes the check fail afterwards finds the
        // flag set and calls (see `next`).
        self.inner.head_resting.store(true, Ordering::SeqCst);
        let bench = if self.needs_watch() || self.is_closed() {
            bench
        } else {
            self.inner.head_call.wait(bench).unwrap_or_else(PoisonError::into_inner)
        };
        self.inner.head_resting.store(false, Ordering::SeqCst);
        bench
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Ends the first worker's turn on the bench and calls the next one to take it over.
    fn leave_bench_head(&self, mut bench: MutexGuard<'_, Bench>, event: Option<Ready>) -> Option<Ready> {
        bench.head_taken = false;
        self.inner.sitting.fetch_sub(1, Ordering::SeqCst);
        let others = self.inner.sitting.load(Ordering::SeqCst) > 0;
        drop(bench);
        if others {
            self.inner.bench_call.notify_one();
        }
        event
    }

    /// Waits in `epoll_wait` for one event, up to `timeout` milliseconds (-1: no limit).
    fn poll_epoll(&self, timeout: libc::c_int) -> Option<Ready> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: the epoll descriptor is open for the queue's lifetime; one event fits.
        let n = unsafe { libc::epoll_wait(self.inner.epoll.as_raw_fd(), &mut event, 1, timeout) };
        if n == 1 {
            return Some(Ready { token: event.u64, events: event.events });
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

    /// Handles an event for a slot: takes the connection parked there, or, while a worker
    /// serves it, notes what arrived. Events with an old generation are dropped.
    fn take(&self, slot: usize, generation: u32, events: u32) -> Option<Connection> {
        let mut state = self.lock();
        let entry = state.slots.get_mut(slot).filter(|e| e.generation == generation)?;
        match std::mem::replace(&mut entry.occupant, Occupant::Out { arrived: 0 }) {
            Occupant::Parked { mut conn, .. } => {
                conn.input_ended |= events & INPUT_ENDED != 0;
                conn.urgent |= events & URGENT != 0;
                Some(conn)
            }
            Occupant::Out { arrived } => {
                entry.occupant = Occupant::Out { arrived: arrived | events | libc::EPOLLIN as u32 };
                None
            }
            Occupant::Free => {
                entry.occupant = Occupant::Free;
                None
            }
        }
    }

    /// Frees a slot whose connection left the workers or closed.
    fn free(&self, slot: usize, generation: u32) {
        let mut state = self.lock();
        let Some(entry) = state.slots.get_mut(slot).filter(|e| e.generation == generation) else {
            return;
        };
        if !matches!(entry.occupant, Occupant::Free) {
            let occupant = std::mem::take(&mut entry.occupant);
            state.free_slots.push(slot);
            drop(state);
            drop(occupant);
        }
    }

    /// Registers the socket for read events, edge-triggered. A socket left registered by a
    /// failed removal is updated instead.
    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        match self.control(libc::EPOLL_CTL_ADD, fd, events, token) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.control(libc::EPOLL_CTL_MOD, fd, events, token),
            other => other,
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
        self.queue.inner.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker in a long wait on a client; it counts as busy again when this drops.
pub struct SteppedOut<'a> {
    queue: &'a JobQueue,
}

impl Drop for SteppedOut<'_> {
    fn drop(&mut self) {
        self.queue.inner.busy.fetch_add(1, Ordering::SeqCst);
        self.queue.call_resting_head();
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

    /// Watches a new connection, lets `send` write to it from the client side, and takes it
    /// back as the worker that its event wakes.
    fn readable_after(queue: &JobQueue, send: impl FnOnce(&mut TcpStream)) -> (Connection, TcpStream) {
        let (conn, mut client) = pair();
        assert!(queue.watch(conn).is_none());
        send(&mut client);
        let (Work::Readable(conn), _busy) = queue.next().unwrap() else { panic!("expected the watched connection") };
        (conn, client)
    }

    /// Reads `expected` bytes, consumes them, and checks that watching hands the connection
    /// back for another read instead of parking it.
    fn read_then_watch(queue: &JobQueue, mut conn: Connection, expected: usize) -> Connection {
        assert_eq!(conn.try_fill().unwrap(), expected);
        conn.consume(expected);
        queue.watch(conn).expect("the connection comes back for another read")
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
        assert!(queue.watch(conn).is_none());

        client.write_all(b"GET").unwrap();
        let (work, _busy) = queue.next().unwrap();
        let Work::Readable(conn) = work else { panic!("expected the watched connection") };
        assert_eq!(conn.peer, peer);
        assert!(conn.registration.is_some());
    }

    #[test]
    fn watch_returns_connection_with_new_bytes() {
        let queue = JobQueue::new(1).unwrap();
        let (mut conn, mut client) = readable_after(&queue, |client| client.write_all(b"GET / HTTP/1.1\r\n").unwrap());
        conn.try_fill().unwrap();

        // The worker is still serving it when more bytes come: the event only marks them.
        client.write_all(b"Host: t\r\n\r\n").unwrap();
        let token = queue.poll_epoll(5000).expect("an event for the new bytes");
        let (token, events) = (token.token, token.events);
        assert!(queue.take((token & 0xffff_ffff) as usize, (token >> 32) as u32, events).is_none());

        let mut conn = queue.watch(conn).expect("the bytes that arrived are reported");
        assert!(conn.try_fill().unwrap() > 0);
        assert!(queue.watch(conn).is_none(), "with nothing new, the connection is parked");
        assert!(queue.poll_epoll(0).is_none(), "parking again costs no new event");
    }

    #[test]
    fn watch_rereads_after_full_buffer() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, _client) = readable_after(&queue, |client| client.write_all(&[b'x'; 8192 + 10]).unwrap());
        // The edge for the last 10 bytes was spent, so parking now would strand them.
        let mut conn = read_then_watch(&queue, conn, 8192);
        assert_eq!(conn.try_fill().unwrap(), 10);
    }

    #[test]
    fn watch_rereads_after_input_end() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, _client) = readable_after(&queue, |client| {
            client.write_all(b"GET").unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
        });
        assert!(conn.input_ended, "the event carried the half-close");

        let mut conn = read_then_watch(&queue, conn, 3);
        assert_eq!(conn.try_fill().unwrap(), 0);
    }

    #[test]
    fn watch_rereads_after_urgent_mark() {
        use std::os::fd::AsRawFd;

        let queue = JobQueue::new(1).unwrap();
        let (conn, _client) = readable_after(&queue, |client| {
            client.write_all(b"GET a").unwrap();
            // SAFETY: a one-byte send of urgent data on the client's open socket.
            let sent = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
            assert_eq!(sent, 1);
            client.write_all(b"GET b").unwrap();
        });
        // A read stops at the urgent mark.
        let mut conn = read_then_watch(&queue, conn, 5);
        assert_eq!(conn.try_fill().unwrap(), 5);
        assert_eq!(conn.buffered(), b"GET b");
    }

    #[test]
    fn reparked_connection_wakes_worker() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, mut client) = pair();
        assert!(queue.watch(conn).is_none());
        for round in 0..3 {
            client.write_all(b"x").unwrap();
            let (Work::Readable(mut conn), _busy) = queue.next().unwrap() else { panic!("round {round}") };
            assert_eq!(conn.try_fill().unwrap(), 1);
            conn.consume(1);
            assert!(queue.watch(conn).is_none());
        }
    }

    #[test]
    fn closing_or_leaving_frees_the_slot() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, _client) = readable_after(&queue, |client| client.write_all(b"x").unwrap());
        drop(conn);
        assert_eq!(queue.lock().free_slots, [0], "a closed connection frees its slot");

        let (mut conn, mut client) = readable_after(&queue, |client| client.write_all(b"x").unwrap());
        conn.leave_workers();
        assert_eq!(queue.lock().free_slots, [0], "a connection leaving the workers frees its slot");
        client.write_all(b"y").unwrap();
        assert!(queue.poll_epoll(50).is_none(), "a connection that left raises no event");
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
        assert!(expired[0].registration.is_none(), "a connection taken back is no longer registered");

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

        assert!(queue.take(0, 0, 0).is_none(), "generation 0 was never handed out");
        assert!(queue.take(0, 1, 0).is_some());
        assert!(queue.take(0, 1, 0).is_none(), "a slot is taken once");
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

    /// Waits up to 5 s for `done` to hold.
    fn wait_until(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Queues a new job and takes it, so the caller counts as a busy worker while it keeps the
    /// returned guard.
    fn busy_with_job(queue: &JobQueue) -> (Work, Busy<'_>, TcpStream) {
        let (job, client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        let (work, busy) = queue.next().unwrap();
        (work, busy, client)
    }

    /// Starts a worker thread that takes one piece of work, stays busy with it until `release`
    /// has a message or closes, and reports whether it was a job.
    fn spawn_worker(queue: &JobQueue, release: &Arc<Mutex<std::sync::mpsc::Receiver<()>>>) -> std::thread::JoinHandle<Option<bool>> {
        let queue = queue.clone();
        let release = release.clone();
        std::thread::spawn(move || {
            let (work, _busy) = queue.next()?;
            let _ = release.lock().unwrap().recv();
            Some(matches!(work, Work::Request(_)))
        })
    }

    #[test]
    fn idle_workers_one_in_epoll() {
        let queue = JobQueue::new(1).unwrap();
        let (release, released) = std::sync::mpsc::channel();
        let released = Arc::new(Mutex::new(released));
        let workers: Vec<_> = (0..3).map(|_| spawn_worker(&queue, &released)).collect();
        assert!(wait_until(|| queue.idle() == 3), "three idle workers");
        assert_eq!(queue.inner.waiting.load(Ordering::SeqCst), 1, "one worker on the seat in epoll");
        assert_eq!(queue.inner.sitting.load(Ordering::SeqCst), 2, "two on the bench");

        // With a worker in epoll, the bench's first worker stops looking.
        assert!(wait_until(|| queue.inner.head_resting.load(Ordering::SeqCst)), "the first worker rests");

        // A job wakes the worker in epoll. While it is busy, the first worker on the bench
        // looks again, since a busy worker might get stuck.
        let (job, _client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        assert!(wait_until(|| queue.inner.busy.load(Ordering::SeqCst) == 1), "one worker took the job");
        assert!(wait_until(|| !queue.inner.head_resting.load(Ordering::SeqCst)), "the first worker looks again");
        std::thread::sleep(BENCH_POLL * (BENCH_POLLS as u32 + 5));
        assert!(!queue.inner.head_resting.load(Ordering::SeqCst), "no rest while the seat is empty");

        drop(release);
        queue.close();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| **r == Some(true)).count(), 1);
        assert_eq!(results.iter().filter(|r| r.is_none()).count(), 2, "the others end on close");
    }

    #[test]
    fn stuck_workers_bench_head_in_epoll() {
        let queue = JobQueue::new(1).unwrap();
        let (_stuck_work, _stuck, _client) = busy_with_job(&queue);

        // The busy worker takes nothing more, so the first worker on the bench stops looking
        // every millisecond and waits in epoll.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let worker = spawn_worker(&queue, &Arc::new(Mutex::new(released)));
        assert!(wait_until(|| queue.inner.waiting.load(Ordering::SeqCst) == 1), "the first worker waits in epoll");

        let (second, _second_client) = new_job();
        queue.push(second).map_err(|_| ()).unwrap();
        drop(release);
        assert_eq!(worker.join().unwrap(), Some(true));
    }

    #[test]
    fn stale_event_wakes_resting_bench_head() {
        let queue = JobQueue::new(1).unwrap();
        let (conn, mut client) = pair();
        assert!(queue.watch(conn).is_none());
        client.write_all(b"x").unwrap();
        let (Work::Readable(_served), busy) = queue.next().unwrap() else { panic!("expected the watched connection") };
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let workers: Vec<_> = (0..2).map(|_| spawn_worker(&queue, &released)).collect();
        assert!(wait_until(|| queue.idle() == 2), "two idle workers");

        // The busy worker starts a long send: one idle worker takes the seat in epoll, and
        // the bench's first worker rests.
        let stepped_out = queue.step_out();
        assert!(wait_until(|| queue.inner.waiting.load(Ordering::SeqCst) == 1), "a worker in epoll");
        assert!(wait_until(|| queue.inner.head_resting.load(Ordering::SeqCst)), "the first worker rests");

        // The send ends, and the client sends more to the connection still being served: the
        // worker in epoll takes the event, finds the connection out and joins the bench.
        drop(stepped_out);
        client.write_all(b"y").unwrap();

        // A new job is still taken, by a look of the bench's first worker.
        let (job, _job_client) = new_job();
        queue.push(job).map_err(|_| ()).unwrap();
        assert!(wait_until(|| workers.iter().any(|w| w.is_finished()) || queue.inner.busy.load(Ordering::SeqCst) == 2), "the job was taken");

        drop(release);
        drop(busy);
        queue.close();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| **r == Some(true)).count(), 1);
    }

    #[test]
    fn bench_head_rests_while_seat_taken() {
        let queue = JobQueue::new(1).unwrap();
        let (_work, _busy, _client) = busy_with_job(&queue);
        let stepped_out = queue.step_out();

        // With the busy worker stepped out, an idle worker takes the seat in epoll and the
        // bench's first worker rests.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let workers: Vec<_> = (0..2).map(|_| spawn_worker(&queue, &released)).collect();
        assert!(wait_until(|| queue.inner.waiting.load(Ordering::SeqCst) == 1), "a worker in epoll");
        assert!(wait_until(|| queue.inner.head_resting.load(Ordering::SeqCst)), "the first worker rests");

        // The busy worker counts again and stays stuck. The worker in epoll is still woken by
        // every event, so the first worker keeps resting instead of looking every millisecond.
        drop(stepped_out);
        for _ in 0..BENCH_POLLS + 5 {
            std::thread::sleep(BENCH_POLL);
            assert!(queue.inner.head_resting.load(Ordering::SeqCst), "the first worker rests");
        }

        let (second, _second_client) = new_job();
        queue.push(second).map_err(|_| ()).unwrap();
        assert!(wait_until(|| workers.iter().any(|w| w.is_finished()) || queue.inner.busy.load(Ordering::SeqCst) == 2), "the job was taken");
        drop(release);
        queue.close();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| **r == Some(true)).count(), 1);
    }
}
