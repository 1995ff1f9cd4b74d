//! The local folder backend: videos are files in `video_dir`, named by their id.
//!
//! A commit syncs the temporary file, renames it over the final name (or, without overwrite,
//! links it in with `renameat2(RENAME_NOREPLACE)` so two uploads of one id cannot both win),
//! then syncs the folder, so an acknowledged upload survives a crash.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::open_files::{OpenFile, OpenFiles};
use super::{Object, ObjectInfo, ObjectSource, Storage, StorageError};
use crate::server::response::Body;

/// Videos stored as files in one folder.
pub struct LocalStorage {
    dir: PathBuf,
    open_files: OpenFiles,
}

impl LocalStorage {
    /// Uses `dir`, creating it when missing.
    pub fn new(dir: &Path) -> io::Result<LocalStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(LocalStorage { dir: dir.to_path_buf(), open_files: OpenFiles::new(dir) })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Returns the open file for `id`: the cached descriptor while no change notice named it
    /// or a `stat` of the path shows the same file, otherwise a fresh one, cached when it is a
    /// regular file.
    fn open_cached(&self, id: &str) -> Result<OpenFile, StorageError> {
        let start = match self.open_files.get_unchanged(id) {
            Ok(open) => return Ok(open),
            Err(start) => start,
        };

        let path = self.path_of(id);
        let current = std::fs::metadata(&path).map_err(|e| {
            self.open_files.forget(id);
            not_found_or(e, &path, "stat")
        })?;
        // Only regular files are opened, so a socket, a device or a folder at the path is a
        // missing video rather than a failed open.
        if !current.is_file() {
            self.open_files.forget(id);
            return Err(StorageError::NotFound);
        }
        if let Some(open) = self.open_files.get(id, &current, start) {
            return Ok(open);
        }

        // O_NONBLOCK keeps a FIFO from blocking the open; regular files ignore the flag.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| not_found_or(e, &path, "open"))?;
        let meta = file.metadata().map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?;
        let open = OpenFile { file: Arc::new(file), meta: Arc::new(meta) };
        if open.meta.is_file() {
            let direct = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            self.open_files.insert(id, open.clone(), direct, start);
        }
        Ok(open)
    }
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("local folder {}", self.dir.display())
    }

    fn open(&self, id: &str) -> Result<Object, StorageError> {
        let open = self.open_cached(id)?;
        let meta = &open.meta;
        if !meta.is_file() {
            return Err(StorageError::NotFound);
        }

        let info = ObjectInfo {
            size: meta.len(),
            modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            identity: identity(meta),
            content_type: None,
        };
        Ok(Object { info, source: Box::new(LocalSource { file: open.file }) })
    }

    fn exists(&self, id: &str) -> Result<bool, StorageError> {
        match std::fs::metadata(self.path_of(id)) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(format!("stat {id}"), e)),
        }
    }

    fn staging_dir(&self) -> &Path {
        &self.dir
    }

    fn commit(&self, staged: &Path, id: &str, overwrite: bool) -> Result<(), StorageError> {
        let target = self.path_of(id);
        let result = sync_file(staged)
            .and_then(|()| if overwrite { std::fs::rename(staged, &target) } else { rename_noreplace(staged, &target) })
            .map_err(|e| match e.raw_os_error() {
                // EISDIR and ENOTEMPTY: a folder holds the name, so overwriting cannot replace it.
                Some(libc::EEXIST) | Some(libc::EISDIR) | Some(libc::ENOTEMPTY) => {
                    StorageError::AlreadyExists
                }
                _ => StorageError::io(format!("store {}", target.display()), e),
            });
        if result.is_err() {
            let _ = std::fs::remove_file(staged);
            return result;
        }
        // The replaced file's descriptor would otherwise keep its disk space until the next
        // request for this id.
        self.open_files.forget(id);

        sync_dir(&self.dir).map_err(|e| StorageError::io(format!("sync folder {}", self.dir.display()), e))
    }

    fn delete(&self, id: &str) -> Result<(), StorageError> {
        let path = self.path_of(id);
        if !self.exists(id)? {
            return Err(StorageError::NotFound);
        }
        std::fs::remove_file(&path).map_err(|e| not_found_or(e, &path, "remove"))?;
        self.open_files.forget(id);
        sync_dir(&self.dir).map_err(|e| StorageError::io(format!("sync folder {}", self.dir.display()), e))
    }
}

struct LocalSource {
    file: Arc<File>,
}

impl ObjectSource for LocalSource {
    fn range_body(&self, start: u64, len: u64) -> Body {
        Body::File { file: self.file.clone(), start, len }
    }

    fn read_prefix(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; n];
        let read = self.file.read_at(&mut buffer, 0)?;
        buffer.truncate(read);
        Ok(buffer)
    }
}

/// Returns the ETag identity of a file: its device and inode, mixed with its change time so
/// that a file rewritten in place with its old size and modification time restored (as
/// `rsync --inplace -t` does) gets a new ETag.
fn identity(meta: &std::fs::Metadata) -> u64 {
    let ctime = (meta.ctime() as u64).wrapping_mul(1_000_000_007) ^ meta.ctime_nsec() as u64;
    meta.ino() ^ (meta.dev() << 48) ^ ctime.rotate_left(17)
}

/// Maps a failed `stat` or `open` to a missing video, or to an I/O error with its context. A
/// symbolic link loop counts as missing, like a dangling link.
fn not_found_or(e: io::Error, path: &Path, action: &str) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) {
        return StorageError::NotFound;
    }
    StorageError::io(format!("{action} {}", path.display()), e)
}

fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` unless `to` exists, atomically (Linux `renameat2`). Filesystems
/// without RENAME_NOREPLACE fall back to `link` then `unlink`, which is just as exclusive.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both strings are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
}

