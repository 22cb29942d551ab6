//! The local file system write path for upload parts.
//!
//! `object_store`'s local multipart writer fsyncs the whole file only when the upload
//! completes, so a 1 GiB part spends its last half second waiting for writeback that could have
//! happened while the bytes were still arriving. This writer overlaps the three costs of a push:
//!
//! ```text
//! request task:  receive body frames, group them (1 MiB) ----+--> hasher thread: sha256
//!                                                           +--> writer thread: write(2)
//!                                                                      |  every 16 MiB
//!                                                                      v
//!                                                            syncer thread: fdatasync
//! ```
//!
//! Each frame is shared (`Bytes`, reference counted) between the hasher and the writer, never
//! copied. Channels are bounded, so a slow disk or hasher pushes back on the client instead of
//! filling memory (a few MiB in flight per upload). The caller records a part in the index only
//! after this returns, so a part file cut short by a crash is never counted: a retry of that
//! chunk overwrites it, and start-up recovery removes staging of sessions that have no record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use stowage_core::Hasher;
use tokio::sync::mpsc;

use crate::direct::PartFile;
use crate::{next_chunk, CasError};

/// Frames are handed to the threads in groups of at least this many bytes (without copying),
/// so each thread wakes up once per group rather than once per frame.
const GROUP: usize = 1024 * 1024;
/// Bodies up to this size are handled without the thread pipeline.
const INLINE_MAX: u64 = 4 * 1024 * 1024;
/// Depth of each hand-off channel, in groups.
const DEPTH: usize = 2;
/// Bytes written between background data syncs.
const SYNC_EVERY: u64 = 16 * 1024 * 1024;

fn io(context: String) -> impl FnOnce(std::io::Error) -> CasError {
    move |source| CasError::Io { context, source }
}

/// The folder holding `path` (every part and blob path has one).
fn parent(path: &Path) -> Result<&Path, CasError> {
    path.parent().ok_or_else(|| CasError::Io {
        context: format!("finding the folder of {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path has no parent"),
    })
}

/// Syncs a directory so that a rename or create inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CasError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

/// Creates `dir` and every missing parent, syncing each parent whose entries changed.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), CasError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Streams `body` into the part file `path`, hashing it on the way. See the module docs.
///
/// Bodies up to [`INLINE_MAX`] are hashed as they arrive, kept in memory, and written and synced
/// in one blocking call: for small blobs the thread hand-offs of the pipeline cost more than
/// they save. A body that grows past it continues through the pipeline.
pub(crate) async fn write_part<S, E>(
    path: PathBuf,
    mut body: S,
    hasher: &mut Hasher,
    limit: u64,
    durable: bool,
    direct: bool,
) -> Result<u64, CasError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut head: Vec<Bytes> = Vec::new();
    let mut received: u64 = 0;
    let mut ended = true;
    let mut held = InlineHold(0);
    while let Some(chunk) = next_chunk(&mut body, &mut received, limit).await? {
        hasher.update(&chunk);
        let fits = held.take(chunk.len() as u64);
        head.push(chunk);
        if received > INLINE_MAX || !fits {
            ended = false;
            break;
        }
    }
    if received == 0 {
        return Ok(0);
    }
    if ended {
        tokio::task::spawn_blocking(move || {
            let written = write_new_file(&path, &head, durable, direct);
            if written.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            written
        })
        .await
        .map_err(|source| CasError::Task {
            task: "part write",
            source,
        })??;
        return Ok(received);
    }
    // The head is written first and soon freed; do not keep it charged to the inline budget.
    drop(held);
    pipeline(path, head, received, body, hasher, limit, durable, direct).await
}

/// Bytes held in memory by all inline (small-body) writes together. Past it, further bodies take
/// the streaming pipeline at once, so many concurrent small pushes cannot grow memory without
/// bound.
const INLINE_BUDGET: u64 = 64 * 1024 * 1024;
static INLINE_HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This write's share of [`INLINE_BUDGET`], returned on drop.
struct InlineHold(u64);

impl InlineHold {
    /// Takes `n` more bytes from the budget; false (taking nothing) when it is exhausted.
    fn take(&mut self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        let prev = INLINE_HELD.fetch_add(n, Ordering::Relaxed);
        if prev + n > INLINE_BUDGET {
            INLINE_HELD.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        self.0 += n;
        true
    }
}

impl Drop for InlineHold {
    fn drop(&mut self) {
        INLINE_HELD.fetch_sub(self.0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Creates `path`, writes `chunks`, syncs it (and its folder when `durable`).
fn write_new_file(
    path: &Path,
    chunks: &[Bytes],
    durable: bool,
    direct: bool,
) -> Result<(), CasError> {
    let dir = parent(path)?;
    create_dir_durable(dir)?;
    let mut f =
        PartFile::create(path, direct).map_err(io(format!("creating {}", path.display())))?;
    for c in chunks {
        f.write(c)
            .map_err(io(format!("writing {}", path.display())))?;
    }
    f.finish()
        .map_err(io(format!("writing and syncing {}", path.display())))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The threaded path for large bodies. `head` (already hashed, `received` bytes) is written
/// first; the rest of `body` is hashed and written by the threads.
#[allow(clippy::too_many_arguments)]
async fn pipeline<S, E>(
    path: PathBuf,
    head: Vec<Bytes>,
    mut received: u64,
    mut body: S,
    hasher: &mut Hasher,
    limit: u64,
    durable: bool,
    direct: bool,
) -> Result<u64, CasError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let dir = parent(&path)?.to_path_buf();
    let file = {
        let (dir, path) = (dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            create_dir_durable(&dir)?;
            PartFile::create(&path, direct).map_err(io(format!("creating {}", path.display())))
        })
        .await
        .map_err(|source| CasError::Task {
            task: "part file",
            source,
        })??
    };

    let algo = hasher.algorithm();
    let mut own_hasher = std::mem::replace(hasher, Hasher::new(algo));
    let (hash_tx, mut hash_rx) = mpsc::channel::<Arc<Vec<Bytes>>>(DEPTH);
    let (write_tx, mut write_rx) = mpsc::channel::<Arc<Vec<Bytes>>>(DEPTH);
    let hash_thread = tokio::task::spawn_blocking(move || {
        while let Some(group) = hash_rx.blocking_recv() {
            for b in group.iter() {
                own_hasher.update(b);
            }
        }
        own_hasher
    });
    let writer_path = path.clone();
    let write_thread = tokio::task::spawn_blocking(move || -> Result<(), CasError> {
        let mut out = file;
        // Buffered writes leave dirty pages behind: a syncer thread (started with the first
        // 16 MiB) pushes them to disk while more arrive. Direct writes are on the device already.
        let mut syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)> =
            None;
        let mut since_sync = 0u64;
        let mut result = Ok(());
        'groups: while let Some(group) = write_rx.blocking_recv() {
            for b in group.iter() {
                if let Err(e) = out.write(b) {
                    result = Err(io(format!("writing {}", writer_path.display()))(e));
                    break 'groups;
                }
                since_sync += b.len() as u64;
            }
            if since_sync >= SYNC_EVERY && !out.is_direct() {
                since_sync = 0;
                if syncer.is_none() {
                    let handle = out
                        .file()
                        .try_clone()
                        .map_err(io(format!("opening {} for syncing", writer_path.display())))?;
                    syncer = Some(start_syncer(handle)?);
                }
                if let Some((tx, _)) = &syncer {
                    let _ = tx.try_send(());
                }
            }
        }
        if let Some((tx, handle)) = syncer {
            drop(tx);
            let _ = handle.join();
        }
        result?;
        out.finish()
            .map_err(io(format!("writing and syncing {}", writer_path.display())))?;
        Ok(())
    });

    // Write the already-hashed head, then receive frames and fan them out in groups.
    let feed: Result<(), CasError> = async {
        let closed = || CasError::Body("part writer stopped early".into());
        write_tx.send(Arc::new(head)).await.map_err(|_| closed())?;
        let mut group: Vec<Bytes> = Vec::new();
        let mut group_len = 0usize;
        while let Some(chunk) = next_chunk(&mut body, &mut received, limit).await? {
            group_len += chunk.len();
            group.push(chunk);
            if group_len >= GROUP {
                group_len = 0;
                send_both(&hash_tx, &write_tx, Arc::new(std::mem::take(&mut group))).await?;
            }
        }
        if !group.is_empty() {
            send_both(&hash_tx, &write_tx, Arc::new(group)).await?;
        }
        Ok(())
    }
    .await;
    drop(hash_tx);
    drop(write_tx);
    let hashed = hash_thread.await.map_err(|source| CasError::Task {
        task: "hash",
        source,
    });
    let wrote = write_thread
        .await
        .map_err(|source| CasError::Task {
            task: "write",
            source,
        })
        .and_then(|r| r);
    let hashed = hashed.map(|h| *hasher = h);
    // The writer's own error (disk full, I/O) explains more than "stopped early".
    match wrote.and(hashed).and(feed) {
        Ok(()) => {
            if durable {
                tokio::task::spawn_blocking(move || sync_dir(&dir))
                    .await
                    .map_err(|source| CasError::Task {
                        task: "part sync",
                        source,
                    })??;
            }
            Ok(received)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}

/// Publishes staged part `part` as `blob` by hard link (create-if-absent), syncs the blob's
/// folder, and removes the staged name. Returns false when the blob already existed.
/// Writes the files `parts`, in order, into a new file `out` and makes it durable. The copy
/// stays in the kernel (`std::io::copy` between files uses `copy_file_range`). A leftover `out`
/// from an interrupted attempt is replaced.
pub(crate) fn concatenate(parts: &[std::path::PathBuf], out: &Path) -> Result<(), CasError> {
    let mut dst =
        std::fs::File::create(out).map_err(|e| io(format!("creating {}", out.display()))(e))?;
    for part in parts {
        let mut src =
            std::fs::File::open(part).map_err(|e| io(format!("opening {}", part.display()))(e))?;
        std::io::copy(&mut src, &mut dst)
            .map_err(|e| io(format!("copying {} into {}", part.display(), out.display()))(e))?;
    }
    dst.sync_all()
        .map_err(|e| io(format!("syncing {}", out.display()))(e))?;
    Ok(())
}

pub(crate) fn publish(part: &Path, blob: &Path) -> Result<bool, CasError> {
    let dir = parent(blob)?;
    let linked = match std::fs::hard_link(part, blob) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Usually the shard folder does not exist yet (or another commit is creating it
            // right now): create it (idempotent) and retry once. If the staged part itself is
            // missing, the retry reports that.
            create_dir_durable(dir)?;
            match std::fs::hard_link(part, blob) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io(format!("linking {}", blob.display()))(e)),
            }
        }
        Err(e) => return Err(io(format!("linking {}", blob.display()))(e)),
    };
    if linked {
        sync_dir(dir)?;
    }
    // The staged name is no longer needed; a leftover after a crash is swept at start.
    let _ = std::fs::remove_file(part);
    Ok(linked)
}

/// A thread that runs `fdatasync` on `file` each time it is signalled. Errors are ignored here:
/// they surface in the final sync after the last write.
fn start_syncer(
    file: std::fs::File,
) -> Result<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>), CasError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let handle = std::thread::Builder::new()
        .name("stowage-part-sync".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Start writeback of what is written so far while more arrives.
                let _ = file.sync_data();
            }
        })
        .map_err(io("starting part sync thread".into()))?;
    Ok((tx, handle))
}

async fn send_both(
    hash_tx: &mpsc::Sender<Arc<Vec<Bytes>>>,
    write_tx: &mpsc::Sender<Arc<Vec<Bytes>>>,
    b: Arc<Vec<Bytes>>,
) -> Result<(), CasError> {
    let closed = || CasError::Body("part writer stopped early".into());
    hash_tx.send(b.clone()).await.map_err(|_| closed())?;
    write_tx.send(b).await.map_err(|_| closed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_budget_is_bounded_and_returned() {
        // Other tests may hold part of the budget concurrently; only relative effects are checked.
        let mut a = InlineHold(0);
        let mut taken = 0u64;
        while a.take(1024 * 1024) {
            taken += 1024 * 1024;
            assert!(taken <= INLINE_BUDGET, "budget exceeded");
        }
        let mut b = InlineHold(0);
        assert!(!b.take(INLINE_BUDGET), "a full budget refuses more");
        drop(a);
        assert!(b.take(1024), "dropping a hold returns its bytes");
    }
}
