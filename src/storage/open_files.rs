//! A small cache of open video files for the local backend, so a player's stream of range
//! requests on one video costs one `stat` each instead of `open`, `fstat` and `close`.
//!
//! An entry is reused only while a fresh `stat` of the path still shows the same file: same
//! device and inode, same size, same modification and change times. A file replaced by an
//! upload (a new inode), edited in place (new times) or deleted (the `stat` fails) is never
//! served from the cache. The cache keeps at most [`CAPACITY`] descriptors. A descriptor of a
//! deleted file is closed once its entry is dropped and no response still sends from it.
//! Opening, checking the file type and reporting errors stay with the backend.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, PoisonError};

/// Open descriptors kept at most.
pub const CAPACITY: usize = 64;

/// The `stat` fields that identify one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    pub fn of(meta: &Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A cached descriptor with the metadata it was opened with.
#[derive(Clone)]
pub struct OpenFile {
    pub file: Arc<File>,
    pub meta: Arc<Metadata>,
}

/// Open files by video id.
#[derive(Default)]
pub struct OpenFiles {
    entries: Mutex<HashMap<String, (FileKey, OpenFile)>>,
}

impl OpenFiles {
    /// Returns the cached file for `id` when `current`, a fresh `stat` of its path, still matches.
    pub fn get(&self, id: &str, current: &Metadata) -> Option<OpenFile> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, open) = entries.get(id)?;
        (*key == FileKey::of(current)).then(|| open.clone())
    }

    /// Remembers `open` for `id`, making room by dropping an older entry when full.
    pub fn insert(&self, id: &str, open: OpenFile) {
        let key = FileKey::of(&open.meta);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY && !entries.contains_key(id) {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(id.to_string(), (key, open));
    }

    /// Forgets `id`, such as after it was deleted or failed to `stat`.
    pub fn forget(&self, id: &str) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    fn open(path: &Path) -> OpenFile {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        OpenFile { file: Arc::new(file), meta: Arc::new(meta) }
    }

    /// Writes `a.mp4` into a fresh folder and caches it; returns the folder, the path and the cache.
    fn cached_video() -> (tempfile::TempDir, PathBuf, OpenFiles) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp4");
        std::fs::write(&path, b"abc").unwrap();
        let cache = OpenFiles::default();
        cache.insert("a.mp4", open(&path));
        (dir, path, cache)
    }

    fn cached_now(cache: &OpenFiles, path: &Path) -> bool {
        cache.get("a.mp4", &std::fs::metadata(path).unwrap()).is_some()
    }

    #[test]
    fn unchanged_file_is_reused() {
        let (_dir, path, cache) = cached_video();

        assert!(cached_now(&cache, &path));
    }

    #[test]
    fn replaced_file_is_not_reused() {
        let (dir, path, cache) = cached_video();

        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"abc").unwrap();
        std::fs::rename(&staged, &path).unwrap();

        assert!(!cached_now(&cache, &path));
    }

    #[test]
    fn file_grown_in_place_is_not_reused() {
        let (_dir, path, cache) = cached_video();

        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"d").unwrap();

        assert!(!cached_now(&cache, &path));
    }

    #[test]
    fn cache_stays_within_capacity() {
        let (_dir, path, cache) = cached_video();

        for i in 0..CAPACITY + 10 {
            cache.insert(&format!("v{i}"), open(&path));
        }

        assert_eq!(cache.len(), CAPACITY);
    }
}
