//! The queue of parsed requests between the poller and the workers.
//!
//! A mutex-guarded queue with a condition variable: an idle worker sleeps in the kernel at
//! once. A crossbeam channel receiver first spins and yields before it sleeps, and with a
//! worker pool larger than the core count that spinning cost about a fifth of the CPU per
//! keep-alive request in the S2 benchmark (bench/run.sh).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::server::Job;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers sleeping in [`JobQueue::pop`].
    idle: usize,
}

/// The shared queue; clones refer to the same queue.
#[derive(Clone, Default)]
pub struct JobQueue {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl JobQueue {
    pub fn new() -> JobQueue {
        JobQueue::default()
    }

    /// Adds a job and wakes one idle worker. Returns the job when the queue is closed.
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let (lock, ready) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);
        ready.notify_one();
        Ok(())
    }

    /// Takes the next job, sleeping while there is none. Returns it with `true` when no other
    /// worker is left sleeping here to take the job after it, or `None` once the queue is
    /// closed and empty.
    pub fn pop(&self) -> Option<(Job, bool)> {
        let (lock, ready) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                let last_awake = state.idle == 0;
                return Some((job, last_awake));
            }
            if state.closed {
                return None;
            }
            state.idle += 1;
            state = ready.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
    }

    /// True when a worker sleeps here, ready to take the next job at once.
    pub fn has_idle_worker(&self) -> bool {
        let (lock, _) = &*self.inner;
        lock.lock().unwrap_or_else(PoisonError::into_inner).idle > 0
    }

    /// Refuses new jobs and lets workers end once the queued ones are served.
    pub fn close(&self) {
        let (lock, ready) = &*self.inner;
        lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        ready.notify_all();
    }
}
