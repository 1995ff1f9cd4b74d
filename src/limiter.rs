//! The token bucket that caps requests served at once.
//!
//! The bucket is a bounded crossbeam channel with one slot per token: taking a token is a
//! non-blocking send, and returning it is a receive. [`Limiter::try_acquire`] never waits, so a
//! request that finds the bucket full gets its 429 at once. A token is a [`Permit`] that goes
//! back on drop, so every exit path of a request, a panic included, returns it.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// The bucket of `capacity` tokens shared by all workers.
#[derive(Clone)]
pub struct Limiter {
    take: Sender<()>,
    give_back: Receiver<()>,
    capacity: usize,
}

/// One token, held until dropped.
pub struct Permit {
    give_back: Receiver<()>,
}

impl Limiter {
    pub fn new(capacity: usize) -> Limiter {
        let (take, give_back) = bounded(capacity);
        Limiter { take, give_back, capacity }
    }

    /// Takes a token without blocking; `None` when all are in use.
    pub fn try_acquire(&self) -> Option<Permit> {
        match self.take.try_send(()) {
            Ok(()) => Some(Permit { give_back: self.give_back.clone() }),
            Err(TrySendError::Full(())) => None,
            Err(TrySendError::Disconnected(())) => unreachable!("the limiter owns both channel ends"),
        }
    }

    /// Tokens in use now.
    pub fn in_use(&self) -> usize {
        self.take.len()
    }

    /// Tokens in the bucket when none are in use.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Each permit put exactly one item in the channel, so one is always there to take.
        let _ = self.give_back.try_recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bucket_refuses_at_once() {
        let limiter = Limiter::new(2);
        let a = limiter.try_acquire().unwrap();
        let _b = limiter.try_acquire().unwrap();
        assert!(limiter.try_acquire().is_none());
        assert_eq!(limiter.in_use(), 2);
        drop(a);
        assert_eq!(limiter.in_use(), 1);
        assert!(limiter.try_acquire().is_some());
    }

    #[test]
    fn panic_returns_the_token() {
        let limiter = Limiter::new(1);
        let clone = limiter.clone();
        let result = std::thread::spawn(move || {
            let _permit = clone.try_acquire().unwrap();
            panic!("handler failed");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(limiter.in_use(), 0);
    }
}
