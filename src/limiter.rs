//! The token bucket that caps requests served at once, in total and per client address.
//!
//! The bucket is a bounded crossbeam channel with one slot per token: taking a token is a
//! non-blocking send, and returning it is a receive. [`Limiter::try_acquire`] never waits, so a
//! request that finds the bucket full gets its 429 at once. A per-address count keeps one
//! client from holding every token. A token is a [`Permit`] that goes back on drop, so every
//! exit path of a request, a panic included, returns it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// The bucket of `capacity` tokens shared by all workers.
#[derive(Clone)]
pub struct Limiter {
    take: Sender<()>,
    give_back: Receiver<()>,
    capacity: usize,
    per_client: usize,
    held_by_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why no token was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every token is in use.
    BucketEmpty,
    /// This client address already holds its share.
    ClientShareUsed,
}

/// One token, held until dropped.
pub struct Permit {
    give_back: Receiver<()>,
    client: IpAddr,
    held_by_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Limiter {
    /// A bucket of `capacity` tokens, at most `per_client` of them held by one address.
    pub fn new(capacity: usize, per_client: usize) -> Limiter {
        let (take, give_back) = bounded(capacity);
        Limiter {
            take,
            give_back,
            capacity,
            per_client,
            held_by_client: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes a token for `client` without blocking.
    pub fn try_acquire(&self, client: IpAddr) -> Result<Permit, Refusal> {
        self.take_client_share(client)?;
        match self.take.try_send(()) {
            Ok(()) => Ok(Permit {
                give_back: self.give_back.clone(),
                client,
                held_by_client: self.held_by_client.clone(),
            }),
            Err(TrySendError::Full(())) => {
                release_client_share(&self.held_by_client, client);
                Err(Refusal::BucketEmpty)
            }
            Err(TrySendError::Disconnected(())) => unreachable!("the limiter owns both channel ends"),
        }
    }

    fn take_client_share(&self, client: IpAddr) -> Result<(), Refusal> {
        let mut held = self.held_by_client.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(client).or_insert(0);
        if *count >= self.per_client {
            return Err(Refusal::ClientShareUsed);
        }
        *count += 1;
        Ok(())
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

fn release_client_share(held_by_client: &Mutex<HashMap<IpAddr, usize>>, client: IpAddr) {
    let mut held = held_by_client.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(count) = held.get_mut(&client) {
        *count -= 1;
        if *count == 0 {
            held.remove(&client);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Each permit put exactly one item in the channel, so one is always there to take.
        let _ = self.give_back.try_recv();
        release_client_share(&self.held_by_client, self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn empty_bucket_refuses_at_once() {
        let limiter = Limiter::new(2, 2);
        let first = limiter.try_acquire(A).unwrap();
        let _second = limiter.try_acquire(B).unwrap();
        assert_eq!(limiter.try_acquire(B).err(), Some(Refusal::BucketEmpty));
        assert_eq!(limiter.in_use(), 2);
        drop(first);
        assert_eq!(limiter.in_use(), 1);
        assert!(limiter.try_acquire(A).is_ok());
    }

    #[test]
    fn one_client_cannot_take_every_token() {
        let limiter = Limiter::new(3, 2);
        let _a1 = limiter.try_acquire(A).unwrap();
        let _a2 = limiter.try_acquire(A).unwrap();
        assert_eq!(limiter.try_acquire(A).err(), Some(Refusal::ClientShareUsed));
        assert!(limiter.try_acquire(B).is_ok());
    }

    #[test]
    fn refused_bucket_does_not_leak_client_share() {
        let limiter = Limiter::new(1, 1);
        let held = limiter.try_acquire(B).unwrap();
        assert_eq!(limiter.try_acquire(A).err(), Some(Refusal::BucketEmpty));
        drop(held);
        assert!(limiter.try_acquire(A).is_ok());
    }

    #[test]
    fn panic_returns_the_token() {
        let limiter = Limiter::new(1, 1);
        let clone = limiter.clone();
        let result = std::thread::spawn(move || {
            let _permit = clone.try_acquire(A).unwrap();
            panic!("handler failed");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(limiter.in_use(), 0);
        assert!(limiter.try_acquire(A).is_ok());
    }
}
