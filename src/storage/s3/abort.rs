//! Retries the abort of multipart uploads whose first abort failed because the bucket was
//! unreachable, so their parts do not stay in the bucket once it is back.
//!
//! One background thread per storage keeps the failed aborts and retries each with a growing
//! delay, for eight minutes in all. Aborts still pending when the process exits are lost; a
//! bucket lifecycle rule (`AbortIncompleteMultipartUpload`) is the backstop for those.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3::Bucket;

use super::errors;
use crate::storage::StorageError;

/// Failed aborts waiting for the retry thread; more are logged and dropped.
const MAX_QUEUED: usize = 1000;

/// Delays between retries of one abort, in seconds.
const RETRY_DELAYS_SECS: [u64; 10] = [1, 2, 4, 8, 15, 30, 60, 120, 120, 120];

/// The sending side of the retry thread.
pub struct AbortQueue {
    sender: SyncSender<PendingAbort>,
}

struct PendingAbort {
    key: String,
    upload_id: String,
    attempts: usize,
    next_try: Instant,
}

impl AbortQueue {
    /// Starts the retry thread for `bucket`. It ends when the queue is dropped.
    pub fn start(bucket: Arc<Bucket>) -> std::io::Result<AbortQueue> {
        let (sender, receiver) = mpsc::sync_channel(MAX_QUEUED);
        std::thread::Builder::new()
            .name("s3-abort-retry".to_string())
            .spawn(move || retry_loop(&bucket, &receiver))?;
        Ok(AbortQueue { sender })
    }

    /// Aborts a failed multipart upload now, and queues a retry when the bucket is unreachable.
    /// Failures are logged, not returned: the upload has already failed.
    pub fn abort(&self, bucket: &Bucket, key: &str, upload_id: &str) {
        match try_abort(bucket, key, upload_id) {
            Ok(()) => log::info!("aborted the multipart upload of {key:?}"),
            Err(StorageError::NotFound) => log::debug!("the multipart upload of {key:?} was already gone"),
            Err(StorageError::Unavailable { .. }) => self.queue(key, upload_id),
            Err(e) => log::error!("{e}; its parts stay in the bucket until a lifecycle rule or an operator aborts it"),
        }
    }

    fn queue(&self, key: &str, upload_id: &str) {
        let pending = PendingAbort {
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            attempts: 0,
            next_try: Instant::now() + Duration::from_secs(RETRY_DELAYS_SECS[0]),
        };
        match self.sender.try_send(pending) {
            Ok(()) => log::warn!("cannot abort the multipart upload {upload_id} of {key:?} now; retrying in the background"),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => log::error!(
                "cannot abort the multipart upload {upload_id} of {key:?}, and the retry queue is full; \
                 its parts stay in the bucket until a lifecycle rule or an operator aborts it"
            ),
        }
    }
}

fn try_abort(bucket: &Bucket, key: &str, upload_id: &str) -> Result<(), StorageError> {
    bucket
        .abort_upload(key, upload_id)
        .map_err(|e| errors::from_s3(e, format!("abort multipart upload {upload_id} of {key}")))
}

fn retry_loop(bucket: &Bucket, receiver: &Receiver<PendingAbort>) {
    let mut pending: Vec<PendingAbort> = Vec::new();
    loop {
        let next_due = pending.iter().map(|p| p.next_try).min();
        let received = match next_due {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => receiver.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok(new) => pending.push(new),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }

        let now = Instant::now();
        pending.retain_mut(|p| p.next_try > now || !retry_once(bucket, p, now));
    }
}

/// Tries one due abort. Returns true when it is finished, by success or by giving up.
fn retry_once(bucket: &Bucket, pending: &mut PendingAbort, now: Instant) -> bool {
    let PendingAbort { key, upload_id, .. } = pending;
    match try_abort(bucket, key, upload_id) {
        Ok(()) => {
            log::info!("aborted the multipart upload {upload_id} of {key:?} on retry");
            true
        }
        Err(StorageError::NotFound) => true,
        Err(StorageError::Unavailable { .. }) if pending.attempts + 1 < RETRY_DELAYS_SECS.len() => {
            pending.attempts += 1;
            pending.next_try = now + Duration::from_secs(RETRY_DELAYS_SECS[pending.attempts]);
            false
        }
        Err(e) => {
            log::error!("{e}; gave up retrying; its parts stay in the bucket until a lifecycle rule or an operator aborts it");
            true
        }
    }
}
