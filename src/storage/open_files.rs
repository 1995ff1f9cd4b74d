//! A small cache of open video files for the local backend, so a player's stream of range
//! requests on one video costs no `open`, `fstat` and `close` each, and mostly no `stat`.
//!
//! An entry is reused without a `stat` while no change notice from the folder
//! ([`super::dir_watch`]) named its file and a `stat` matched less than [`TRUST_FOR`] ago.
//! Otherwise it is reused only while a fresh `stat` of the path still shows the same file: same
//! device and inode, same size, same modification and change times. A file replaced by an
//! upload (a new inode), edited in place (new times) or deleted (the `stat` fails) is never
//! served from the cache. No entry is reused without a `stat` when its file is reached through
//! a symbolic link or has more than one name, because its changes may come with no notice
//! naming this path. The same applies after any new name in the folder (it may be a new hard
//! link) until the next `stat`, and to a check that a notice overlapped. The cache keeps at most [`CAPACITY`]
//! descriptors. A descriptor of a deleted file is closed once its entry is dropped and no
//! response still sends from it. Opening, checking the file type and reporting errors stay
//! with the backend.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::dir_watch::{Changes, DirWatch};

/// Open descriptors kept at most.
pub const CAPACITY: usize = 64;

/// How long an entry no change notice named is reused without a `stat`. This bounds how long a
/// change inotify cannot see goes unnoticed.
pub const TRUST_FOR: Duration = Duration::from_secs(1);

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
#[derive(Clone, Debug)]
pub struct OpenFile {
    pub file: Arc<File>,
    pub meta: Arc<Metadata>,
}

struct Entry {
    key: FileKey,
    open: OpenFile,
    /// When a `stat` last matched, if the entry may be reused without one until
    /// [`TRUST_FOR`] later.
    trusted_since: Option<Instant>,
    /// Opened through a path that is not a symbolic link, so inotify reports its changes.
    direct: bool,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// `None` without inotify: every request then checks with `stat`.
    watch: Option<DirWatch>,
    /// Reads of the notices that found any, so a check that overlapped one is detected.
    notice_reads: u64,
}

/// The cache's notice count when a request started checking a file with `stat`; see
/// [`OpenFiles::get_unchanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckStart(u64);

/// Returns true when `meta` may be trusted without a `stat` later. That needs a path that is
/// not a symbolic link (`direct`) and a file with one name, so that every change to it comes
/// with a notice naming this path.
fn trustworthy(meta: &Metadata, direct: bool) -> bool {
    direct && meta.nlink() == 1
}

/// Open files by video id.
#[derive(Default)]
pub struct OpenFiles {
    entries: Mutex<Entries>,
}

impl OpenFiles {
    /// Creates a cache for the videos in `dir`, with change notices when inotify is available.
    pub fn new(dir: &Path) -> OpenFiles {
        let watch = DirWatch::new(dir)
            .map_err(|e| {
                log::warn!("cannot watch {} for changes: {e}; every request checks its file with stat", dir.display())
            })
            .ok();
        OpenFiles { entries: Mutex::new(Entries { map: HashMap::new(), watch, notice_reads: 0 }) }
    }

    /// Returns the cached file for `id` without a `stat`, when no change notice named it and
    /// a `stat` matched within [`TRUST_FOR`]. Otherwise returns the start of the check the
    /// caller makes next, for [`OpenFiles::get`] and [`OpenFiles::insert`].
    pub fn get_unchanged(&self, id: &str) -> Result<OpenFile, CheckStart> {
        let mut entries = self.lock();
        entries.apply_changes();
        let start = CheckStart(entries.notice_reads);
        if entries.watch.is_none() {
            return Err(start);
        }
        match entries.map.get(id) {
            Some(entry) if entry.trusted_since.is_some_and(|t| t.elapsed() < TRUST_FOR) => Ok(entry.open.clone()),
            _ => Err(start),
        }
    }

    /// Returns the cached file for `id` when `current`, a fresh `stat` of its path, still
    /// matches. The match is trusted for later requests only when no notice arrived since
    /// `start`, since one could name a change made after the `stat`.
    pub fn get(&self, id: &str, current: &Metadata, start: CheckStart) -> Option<OpenFile> {
        let mut entries = self.lock();
        entries.apply_changes();
        let quiet = entries.notice_reads == start.0;
        let entry = entries.map.get_mut(id)?;
        if entry.key != FileKey::of(current) {
            return None;
        }
        entry.trusted_since = (quiet && trustworthy(current, entry.direct)).then(Instant::now);
        Some(entry.open.clone())
    }

    /// Remembers `open` for `id`, making room by dropping an older entry when full. `direct`
    /// is true when the path is not a symbolic link, and `start` is as for [`OpenFiles::get`].
    pub fn insert(&self, id: &str, open: OpenFile, direct: bool, start: CheckStart) {
        let key = FileKey::of(&open.meta);
        let mut entries = self.lock();
        entries.apply_changes();
        let quiet = entries.notice_reads == start.0;
        let trusted_since = (quiet && trustworthy(&open.meta, direct)).then(Instant::now);
        if entries.map.len() >= CAPACITY && !entries.map.contains_key(id) {
            if let Some(victim) = entries.map.keys().next().cloned() {
                entries.map.remove(&victim);
            }
        }
        entries.map.insert(id.to_string(), Entry { key, open, trusted_since, direct });
    }

    /// Forgets `id`, such as after it was deleted or failed to `stat`.
    pub fn forget(&self, id: &str) {
        self.lock().map.remove(id);
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

impl Entries {
    /// Drops the entries that change notices named, and after a new name, trusts no entry until
    /// its next `stat`: the name may be a new hard link to a cached file. Runs under the
    /// cache's lock, so no request can use an entry between the notice being read and the
    /// entry being dropped.
    fn apply_changes(&mut self) {
        let Some(watch) = &self.watch else { return };
        let changes = watch.changes();
        if changes == Changes::Nothing {
            return;
        }

        self.notice_reads += 1;
        match changes {
            Changes::Nothing => {}
            Changes::Names { names, created } => {
                for name in names {
                    if let Some(id) = name.to_str() {
                        self.map.remove(id);
                    }
                }
                if created {
                    self.map.values_mut().for_each(|entry| entry.trusted_since = None);
                }
            }
            Changes::Unknown => self.map.clear(),
            Changes::WatchLost => {
                log::warn!("the video folder's change notices stopped; every request now checks its file with stat");
                self.map.clear();
                self.watch = None;
            }
        }
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
    /// Replaces `path` with a new file holding `content`, as an upload or `mv` does.
    fn replace_by_rename(dir: &Path, path: &Path, content: &[u8]) {
        let staged = dir.join("staged");
        std::fs::write(&staged, content).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    fn cached_video() -> (tempfile::TempDir, PathBuf, OpenFiles) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp4");
        std::fs::write(&path, b"abc").unwrap();
        let cache = OpenFiles::default();
        cache.insert("a.mp4", open(&path), true, CheckStart(0));
        (dir, path, cache)
    }

    fn cached_now(cache: &OpenFiles, path: &Path) -> bool {
        cache.get("a.mp4", &std::fs::metadata(path).unwrap(), CheckStart(0)).is_some()
    }

    #[test]
    fn unchanged_file_is_reused() {
        let (_dir, path, cache) = cached_video();

        assert!(cached_now(&cache, &path));
    }

    #[test]
    fn replaced_file_is_not_reused() {
        let (dir, path, cache) = cached_video();

        replace_by_rename(dir.path(), &path, b"abc");

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
            cache.insert(&format!("v{i}"), open(&path), true, CheckStart(0));
        }

        assert_eq!(cache.len(), CAPACITY);
    }

    /// Like [`cached_video`], with the folder watched for changes.
    fn watched_video() -> (tempfile::TempDir, PathBuf, OpenFiles) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mp4");
        std::fs::write(&path, b"abc").unwrap();
        let cache = OpenFiles::new(dir.path());
        cache.insert("a.mp4", open(&path), true, CheckStart(0));
        (dir, path, cache)
    }

    #[test]
    fn unnamed_file_is_reused_without_stat() {
        let (dir, _path, cache) = watched_video();
        std::fs::write(dir.path().join("other.mp4"), b"x").unwrap();
        assert!(cache.get_unchanged("a.mp4").is_err(), "a new name asks for a stat first");
        let start = cache.get_unchanged("a.mp4").unwrap_err();
        let current = std::fs::metadata(dir.path().join("a.mp4")).unwrap();
        assert!(cache.get("a.mp4", &current, start).is_some());

        std::fs::write(dir.path().join("other.mp4"), b"y").unwrap();

        assert!(cache.get_unchanged("a.mp4").is_ok());
    }

    #[test]
    fn new_hard_link_is_never_trusted() {
        let (dir, path, cache) = watched_video();

        let link = dir.path().join("b.mp4");
        std::fs::hard_link(&path, &link).unwrap();

        assert!(cache.get_unchanged("a.mp4").is_err());
        let start = cache.get_unchanged("a.mp4").unwrap_err();
        let current = std::fs::metadata(&path).unwrap();
        assert!(cache.get("a.mp4", &current, start).is_none(), "the link changed the file's change time");
        cache.insert("a.mp4", open(&path), true, start);
        assert!(cache.get_unchanged("a.mp4").is_err(), "a file with two names is checked every time");
    }

    #[test]
    fn notice_during_a_check_withholds_trust() {
        let (dir, path, cache) = watched_video();
        let start = cache.get_unchanged("b.mp4").unwrap_err();
        let stale = open(&path);

        // Another request reads a notice about the file while this one is still opening it.
        replace_by_rename(dir.path(), &path, b"new");
        assert!(cache.get_unchanged("c.mp4").is_err());
        cache.insert("a.mp4", stale, true, start);

        assert!(cache.get_unchanged("a.mp4").is_err());
    }

    #[test]
    fn file_edited_in_place_needs_stat() {
        let (_dir, path, cache) = watched_video();

        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"x").unwrap();

        assert!(cache.get_unchanged("a.mp4").is_err());
    }

    #[test]
    fn file_renamed_over_needs_stat() {
        let (dir, path, cache) = watched_video();

        replace_by_rename(dir.path(), &path, b"abc");

        assert!(cache.get_unchanged("a.mp4").is_err());
    }

    #[test]
    fn symlink_or_unwatched_needs_stat() {
        let (_dir, path, cache) = watched_video();
        cache.insert("link.mp4", open(&path), false, CheckStart(0));
        assert!(cache.get_unchanged("link.mp4").is_err());

        let (_dir, path, unwatched) = cached_video();
        assert!(unwatched.get_unchanged("a.mp4").is_err());
        assert!(cached_now(&unwatched, &path));
    }
}
