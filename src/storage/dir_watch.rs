//! Change notices for the video folder, read from inotify without blocking.
//!
//! The open-file cache reads them here before it trusts a descriptor without a fresh `stat`. The
//! kernel queues a notice before the system call that changed a file returns, so a request that
//! starts after a change always finds the notice. What inotify cannot see (a change through a hard link
//! in another folder, a file behind a symbolic link, another host writing to a network
//! filesystem) is left to the cache's periodic `stat`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Changes to the folder's entries that may make a cached descriptor stale.
const WATCHED: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// Bytes read per `read` of the notices; enough for dozens of notices.
const NOTICE_BUFFER: usize = 4096;

/// Notices that end the watch itself or report lost notices.
const WATCH_LOST: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED | libc::IN_UNMOUNT;

/// The changes since the last call to [`DirWatch::changes`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    Nothing,
    /// Entries with these names changed; `created` when a name was added, which may be a new
    /// hard link to a file another name already shows.
    Names { names: Vec<OsString>, created: bool },
    /// Notices were lost: anything may have changed.
    Unknown,
    /// The folder itself was moved or removed; no more notices will come.
    WatchLost,
}

/// An inotify watch on one folder.
pub struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Starts watching `dir`.
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        // SAFETY: a plain system call; the result is checked before it is owned.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor with no other owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid folder path: it contains a NUL byte"))?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), WATCHED | libc::IN_ONLYDIR) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DirWatch { fd })
    }

    /// Reads every queued notice. The common case, nothing queued, costs one `read`.
    pub fn changes(&self) -> Changes {
        let mut names = Vec::new();
        let mut created = false;
        // Left uninitialised: this runs on every request, and `read` fills what is used.
        let mut buf = std::mem::MaybeUninit::<[u8; NOTICE_BUFFER]>::uninit();
        loop {
            // SAFETY: reads into a buffer of the given length that this function owns.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), NOTICE_BUFFER) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::error!("reading the video folder's change notices failed: {e}");
                    return Changes::Unknown;
                }
                break;
            }

            // SAFETY: `read` initialised the first `n` bytes of the buffer.
            let read = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            match parse_notices(read, &mut names, &mut created) {
                Changes::Nothing => {}
                other => return other,
            }
        }
        if names.is_empty() {
            Changes::Nothing
        } else {
            Changes::Names { names, created }
        }
    }
}

/// Adds the names in one `read`'s worth of notices to `names`, and sets `created` for a new
/// name. Returns any change that is more than a list of names.
fn parse_notices(mut bytes: &[u8], names: &mut Vec<OsString>, created: &mut bool) -> Changes {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    while bytes.len() >= HEADER {
        // SAFETY: HEADER bytes are present; read_unaligned copes with any alignment.
        let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let end = (HEADER + event.len as usize).min(bytes.len());
        let name = &bytes[HEADER..end];
        bytes = &bytes[end..];

        if event.mask & WATCH_LOST != 0 {
            return Changes::WatchLost;
        }
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            return Changes::Unknown;
        }
        *created |= event.mask & libc::IN_CREATE != 0;
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if !name.is_empty() {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Changes::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_folder_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(dir.path()).unwrap();

        assert_eq!(watch.changes(), Changes::Nothing);
    }

    #[test]
    fn written_and_renamed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(dir.path()).unwrap();

        std::fs::write(dir.path().join("a.mp4"), b"abc").unwrap();
        std::fs::rename(dir.path().join("a.mp4"), dir.path().join("b.mp4")).unwrap();

        let Changes::Names { names, created } = watch.changes() else { panic!("expected names") };
        assert!(created, "a.mp4 was a new name");
        assert!(names.contains(&OsString::from("a.mp4")), "{names:?}");
        assert!(names.contains(&OsString::from("b.mp4")), "{names:?}");
        assert_eq!(watch.changes(), Changes::Nothing, "notices are read once");
    }

    #[test]
    fn removed_folder_ends_the_watch() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("videos");
        std::fs::create_dir(&dir).unwrap();
        let watch = DirWatch::new(&dir).unwrap();

        std::fs::remove_dir(&dir).unwrap();

        assert_eq!(watch.changes(), Changes::WatchLost);
    }
}
