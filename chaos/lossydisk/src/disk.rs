//! The lossy device: a FUSE file system holding one file, `disk.img`, kept in memory.
//!
//! Every write lands in a pending overlay; an fsync of the file (what the loop driver sends for
//! a block-layer FLUSH, and for a FUA write, which the loop device turns into write + flush)
//! makes everything pending durable. A [`LossyDisk::cut`] throws the pending overlay away and
//! ignores every later write and fsync until [`LossyDisk::revive`]: what is left is exactly the
//! state as of the last completed flush, the harshest state a power cut may leave (a real disk
//! may also keep some unflushed writes; software must survive losing all of them).
//!
//! The file is opened with `FOPEN_DIRECT_IO`, so no page cache above this layer can hand back
//! bytes the cut dropped.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::Error;

/// Size of the pages the overlay tracks.
const PAGE: u64 = 4096;
/// The name of the one file.
pub const IMAGE_NAME: &str = "disk.img";
const IMAGE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(3600);

/// Counters of what the device saw since it was mounted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write requests received (dropped ones included).
    pub writes: u64,
    /// Fsyncs that made pending writes durable.
    pub flushes: u64,
    /// Write requests dropped since a cut.
    pub dropped: u64,
    /// Pages thrown away by cuts.
    pub pages_lost: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Pages as of the last flush; absent pages read as zeros.
    durable: HashMap<u64, Box<[u8]>>,
    /// Pages written since the last flush.
    pending: HashMap<u64, Box<[u8]>>,
    /// Powered off: writes and flushes are ignored.
    dead: bool,
    stats: Stats,
}

impl State {
    fn page(&self, n: u64) -> Option<&[u8]> {
        self.pending
            .get(&n)
            .or_else(|| self.durable.get(&n))
            .map(|p| &p[..])
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (no partial page is inserted),
        // so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct DiskFs {
    shared: Arc<Shared>,
    size: u64,
}

impl DiskFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == IMAGE_INO {
            (FileType::RegularFile, 0o600, self.size, 1)
        } else {
            (FileType::Directory, 0o700, 0, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == IMAGE_NAME {
            reply.entry(&TTL, &self.attr(IMAGE_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == IMAGE_INO {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    /// The image has a fixed size: changes of size, mode or times are accepted and ignored.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.attr(&TTL, &self.attr(ino));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == IMAGE_INO {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = (offset + u64::from(size)).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let st = self.shared.lock();
        let mut at = offset;
        while at < end {
            let (n, within) = (at / PAGE, at % PAGE);
            let take = (PAGE - within).min(end - at);
            match st.page(n) {
                Some(p) => out.extend_from_slice(&p[within as usize..(within + take) as usize]),
                None => out.resize(out.len() + take as usize, 0),
            }
            at += take;
        }
        drop(st);
        reply.data(&out);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset + data.len() as u64 > self.size {
            reply.error(Errno::ENOSPC);
            return;
        }
        let mut st = self.shared.lock();
        st.stats.writes += 1;
        if st.dead {
            st.stats.dropped += 1;
        } else {
            let mut at = offset;
            let mut rest = data;
            while !rest.is_empty() {
                let (n, within) = (at / PAGE, (at % PAGE) as usize);
                let take = (PAGE as usize - within).min(rest.len());
                let mut page = match st.page(n) {
                    Some(p) => Box::<[u8]>::from(p),
                    None => vec![0u8; PAGE as usize].into_boxed_slice(),
                };
                page[within..within + take].copy_from_slice(&rest[..take]);
                st.pending.insert(n, page);
                at += take as u64;
                rest = &rest[take..];
            }
        }
        drop(st);
        self.shared.changed.notify_all();
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2), not a durability point.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.shared.lock();
        if !st.dead {
            let pending = std::mem::take(&mut st.pending);
            st.durable.extend(pending);
            st.stats.flushes += 1;
        }
        drop(st);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (IMAGE_INO, FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted lossy device. Dropping it unmounts the FUSE file system (detach any loop device
/// over it first).
pub struct LossyDisk {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for LossyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyDisk")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl LossyDisk {
    /// Mounts a zeroed device of `size` bytes at `mountpoint` (an existing empty directory).
    /// Needs root (the FUSE mount is made with mount(2), without a setuid helper).
    pub fn mount(mountpoint: &Path, size: u64) -> Result<LossyDisk, Error> {
        let shared = Arc::new(Shared::default());
        let fs = DiskFs {
            shared: shared.clone(),
            size,
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("stowage-lossydisk".into()),
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| Error::Io {
            what: format!("mounting the lossy device at {}", mountpoint.display()),
            source,
        })?;
        Ok(LossyDisk {
            shared,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// The device file (give it to `losetup`, or `mkfs` it directly).
    pub fn image(&self) -> PathBuf {
        self.mountpoint.join(IMAGE_NAME)
    }

    /// Power cut: every write not yet flushed is lost, and every later write and flush is
    /// ignored until [`LossyDisk::revive`]. Returns how many pages were lost.
    pub fn cut(&self) -> u64 {
        let mut st = self.shared.lock();
        let lost = st.pending.len() as u64;
        st.pending.clear();
        st.dead = true;
        st.stats.pages_lost += lost;
        lost
    }

    /// Power back on: writes and flushes count again.
    pub fn revive(&self) {
        self.shared.lock().dead = false;
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// Waits until the device has received `writes` write requests in all, or `timeout`
    /// passed; returns whether the count was reached. Lets a test cut in the middle of I/O
    /// without guessing a delay.
    pub fn wait_writes(&self, writes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.stats.writes < writes {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.shared.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

impl Drop for LossyDisk {
    /// Unmounts (lazily) without waiting for the server thread: it ends once the last user of
    /// the image (a loop device not yet detached, after a failed teardown) lets go, and joining
    /// it here could hang a failing test instead of letting it report.
    fn drop(&mut self) {
        drop(self.session.take());
    }
}
