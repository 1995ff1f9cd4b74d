//! Where videos live: the storage trait the handlers talk to, and its backends.
//!
//! Handlers never touch paths or buckets. They stat and open a video through [`Storage`], get
//! its bytes as response [`Body`] values for the ranges they chose, and store an upload by
//! handing over a finished, synced temporary file with [`Storage::commit`]. Each backend makes
//! that commit atomic: a reader sees the old video or the complete new one.

mod dir_watch;
pub mod local;
mod open_files;
pub mod s3;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::server::response::Body;

/// Metadata a backend keeps for a stored video.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub size: u64,
    pub modified: SystemTime,
    /// A number that changes when the object is replaced, such as the inode; part of the ETag.
    pub identity: u64,
    /// A content type stored with the object, when the backend keeps one.
    pub content_type: Option<String>,
}

/// An opened video: its metadata and a way to read its bytes. For local files both come from
/// one open descriptor, so they stay consistent even if the file is replaced meanwhile.
pub struct Object {
    pub info: ObjectInfo,
    pub source: Box<dyn ObjectSource>,
}

/// Reads ranges of one opened video.
pub trait ObjectSource: Send + Sync {
    /// A response body of `len` bytes from `start`; remote backends fetch lazily.
    fn range_body(&self, start: u64, len: u64) -> Body;

    /// Up to `n` bytes from the start, for guessing the content type.
    fn read_prefix(&self, n: usize) -> io::Result<Vec<u8>>;
}

/// A storage backend.
pub trait Storage: Send + Sync {
    /// A one-line description for the startup log, with no secrets.
    fn describe(&self) -> String;

    /// Opens a video for reading.
    fn open(&self, id: &str) -> Result<Object, StorageError>;

    /// True when a video is stored under `id`.
    fn exists(&self, id: &str) -> Result<bool, StorageError>;

    /// The local folder for upload temporary files.
    fn staging_dir(&self) -> &Path;

    /// Stores a synced temporary file under `id`; without `overwrite` an existing video makes
    /// it fail with [`StorageError::AlreadyExists`]. The temporary file is gone afterwards,
    /// whether the commit succeeded or not.
    fn commit(&self, staged: &Path, id: &str, overwrite: bool) -> Result<(), StorageError>;

    /// Removes a stored video; [`StorageError::NotFound`] when there is none.
    fn delete(&self, id: &str) -> Result<(), StorageError>;

    /// A URL the client should fetch `id` from instead of this server, such as a presigned
    /// bucket URL, or `None` when this server sends the bytes itself (the default).
    fn redirect_url(&self, _id: &str) -> Option<Result<String, StorageError>> {
        None
    }
}

/// A storage failure, mapped to an API error by the handlers.
#[derive(Debug)]
pub enum StorageError {
    NotFound,
    AlreadyExists,
    /// The disk or the bucket is full.
    NoSpace,
    /// Any other failure; the path or key involved is in the message.
    Io { context: String, source: io::Error },
    /// The bucket rejected the credentials or their permissions (HTTP 401 or 403).
    AccessDenied { context: String, detail: String },
    /// The bucket could not be reached, timed out, or answered with a 5xx status; a later
    /// retry may succeed.
    Unavailable { context: String, detail: String },
    /// The bucket answered with an error this server cannot act on, such as a missing bucket.
    Backend { context: String, detail: String },
}

impl StorageError {
    /// Wraps an I/O error, naming the file and the action.
    pub fn io(context: impl Into<String>, source: io::Error) -> StorageError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace,
            _ => StorageError::Io { context: context.into(), source },
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound => write!(f, "not found"),
            StorageError::AlreadyExists => write!(f, "already exists"),
            StorageError::NoSpace => write!(f, "no space left on the device"),
            StorageError::Io { context, source } => write!(f, "{context}: {source}"),
            StorageError::AccessDenied { context, detail } => write!(f, "{context}: access denied: {detail}"),
            StorageError::Unavailable { context, detail } => write!(f, "{context}: bucket unavailable: {detail}"),
            StorageError::Backend { context, detail } => write!(f, "{context}: {detail}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The prefix of every upload temporary file. Ids cannot start with a dot, so no video can
/// have such a name, and startup cleanup removes only these files.
pub const TEMP_PREFIX: &str = ".upload-";

/// The suffix of every upload temporary file.
pub const TEMP_SUFFIX: &str = ".part";

/// The maximum bytes of the id a temporary file name repeats, so the name stays under the
/// 255-byte file name limit for ids of up to 255 bytes.
const TEMP_ID_BYTES: usize = 64;

/// A fresh temporary file name for an upload of `id` in `dir`. The id's first bytes are in
/// the name only to help a person reading the folder; ids are ASCII, so any cut is valid.
pub fn temp_path(dir: &Path, id: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let shown = &id[..id.len().min(TEMP_ID_BYTES)];
    dir.join(format!("{TEMP_PREFIX}{shown}.{}-{n}{TEMP_SUFFIX}", std::process::id()))
}

/// Locks a temporary upload file for as long as it stays open, so another server process
/// sharing the folder can tell the upload is in progress and leaves the file alone.
pub fn lock_temp_file(file: &File) -> io::Result<()> {
    // SAFETY: flock(2) on a descriptor the File owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The set of upload temporary files a cleanup removes.
#[derive(Debug, Clone, Copy)]
pub enum TempCleanup {
    /// Files no process holds locked: uploads cut off by a crash. Used at startup, when
    /// another server on the same folder may still be finishing its uploads.
    Unlocked,
    /// This process's own files, locked or not: uploads cut off by its shutdown.
    OwnedBy(u32),
}

/// Removes upload temporary files. Returns how many were removed. Only files named like an
/// upload temporary file are ever touched.
pub fn remove_temp_files(dir: &Path, which: TempCleanup) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(TEMP_PREFIX) || !name.ends_with(TEMP_SUFFIX) || !entry.file_type()?.is_file() {
            continue;
        }
        let selected = match which {
            TempCleanup::OwnedBy(pid) => name.contains(&format!(".{pid}-")),
            TempCleanup::Unlocked => File::open(entry.path()).and_then(|f| lock_temp_file(&f)).is_ok(),
        };
        if !selected {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove upload temporary file {}: {e}", entry.path().display()),
        }
    }
    Ok(removed)
}
