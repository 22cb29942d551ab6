//! Part files written with `O_DIRECT` where the file system allows it.
//!
//! A buffered write copies every byte into freshly allocated page-cache pages, and the sync
//! that follows walks them again to submit writeback: on the machines measured that was the
//! largest kernel cost of a push after hashing (see `benches/README.md`). Direct I/O sends the
//! bytes from a small, reused, aligned user buffer straight to the device, so the only copy is
//! into that (cache-hot) buffer and the final `fdatasync` has only metadata and the device cache
//! to flush. File systems without `O_DIRECT` (tmpfs, some network file systems) get buffered
//! writes through the same interface.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Alignment of buffer addresses, file offsets and write lengths for direct I/O. 4096 covers
/// both 512-byte and 4 KiB logical block sizes.
const ALIGN: usize = 4096;
/// Bytes gathered before each direct write.
pub(crate) const BUF_SIZE: usize = 1024 * 1024;
/// Idle buffers kept for reuse; more concurrent writers allocate and free their own.
const POOL_MAX: usize = 32;

static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// A heap buffer of `BUF_SIZE` bytes whose first byte sits on an `ALIGN` boundary.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Takes a buffer from the pool, or allocates one. `None` if no aligned start can be found
    /// (the caller then writes buffered).
    fn take() -> Option<AlignedBuf> {
        if let Some(mut b) = POOL.lock().ok().and_then(|mut p| p.pop()) {
            b.len = 0;
            return Some(b);
        }
        let raw = vec![0u8; BUF_SIZE + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(AlignedBuf { raw, start, len: 0 })
    }

    fn give_back(self) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        let from = self.start + self.len;
        &mut self.raw[from..self.start + BUF_SIZE]
    }

    /// The filled bytes, zero-padded to a multiple of `ALIGN`.
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.div_ceil(ALIGN) * ALIGN;
        self.raw[self.start + self.len..self.start + padded].fill(0);
        &self.raw[self.start..self.start + padded]
    }
}

/// Writes a new file sequentially, directly when possible. Call [`PartFile::finish`] to write
/// the tail and sync; dropping it unfinished leaves a partial file for the caller to remove.
pub(crate) struct PartFile {
    file: File,
    /// `Some` in direct mode.
    buf: Option<AlignedBuf>,
    /// Bytes written to the file so far (always a multiple of `ALIGN` in direct mode).
    written: u64,
}

impl PartFile {
    /// Creates (truncating) `path`. Direct I/O is used unless `direct` is false or the file
    /// system refuses it.
    pub(crate) fn create(path: &Path, direct: bool) -> std::io::Result<PartFile> {
        if direct {
            if let Some(buf) = AlignedBuf::take() {
                match open(path, true) {
                    Ok(file) => {
                        return Ok(PartFile {
                            file,
                            buf: Some(buf),
                            written: 0,
                        })
                    }
                    // EINVAL: this file system has no O_DIRECT. Write buffered instead.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => buf.give_back(),
                    Err(e) => {
                        buf.give_back();
                        return Err(e);
                    }
                }
            }
        }
        Ok(PartFile {
            file: open(path, false)?,
            buf: None,
            written: 0,
        })
    }

    /// True when writes bypass the page cache.
    pub(crate) fn is_direct(&self) -> bool {
        self.buf.is_some()
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let Some(buf) = self.buf.as_mut() else {
            self.file.write_all(data)?;
            self.written += data.len() as u64;
            return Ok(());
        };
        while !data.is_empty() {
            let spare = buf.spare();
            let n = spare.len().min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            buf.len += n;
            data = &data[n..];
            if buf.len == BUF_SIZE {
                (&self.file).write_all(buf.padded())?;
                self.written += BUF_SIZE as u64;
                buf.len = 0;
            }
        }
        Ok(())
    }

    /// Writes what is buffered, trims the padding of the last block, and syncs the data.
    /// Returns the file's length.
    pub(crate) fn finish(mut self) -> std::io::Result<u64> {
        if let Some(mut buf) = self.buf.take() {
            let tail = buf.len as u64;
            if tail > 0 {
                let result = (&self.file).write_all(buf.padded());
                if let Err(e) = result {
                    buf.give_back();
                    return Err(e);
                }
                self.written += tail;
                // The last write was padded to a whole block; cut the file to its real length.
                if !tail.is_multiple_of(ALIGN as u64) {
                    self.file.set_len(self.written)?;
                }
            }
            buf.give_back();
        }
        self.file.sync_data()?;
        Ok(self.written)
    }

    /// The open file (for background syncs in buffered mode).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            buf.give_back();
        }
    }
}

/// Opens `path` for direct reads; `None` when the file system has no `O_DIRECT`.
pub(crate) fn open_read_direct(path: &Path) -> std::io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(None)
    }
}

/// Where a direct read of `start` must begin, and how many leading bytes to skip.
pub(crate) fn aligned_start(start: u64) -> (u64, usize) {
    let aligned = start - start % ALIGN as u64;
    (aligned, (start - aligned) as usize)
}

/// Reads up to one buffer from `file` (opened by [`open_read_direct`]) at `offset`, which must
/// be a multiple of the alignment. Returns the bytes (fewer at end of file; empty past it)
/// without copying them out of the aligned buffer, which returns to the pool when the last
/// reference is dropped.
pub(crate) fn read_block(file: &File, offset: u64) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = AlignedBuf::take()
        .ok_or_else(|| std::io::Error::other("no aligned buffer for a direct read"))?;
    loop {
        let at = offset + buf.len as u64;
        let n = file.read_at(buf.spare(), at)?;
        buf.len += n;
        // A short read that is not block-aligned means end of file; stop there too because the
        // next direct read would start at an unaligned offset.
        if n == 0 || buf.len == BUF_SIZE || buf.len % ALIGN != 0 {
            break;
        }
    }
    Ok(bytes::Bytes::from_owner(Filled(Some(buf))))
}

/// The filled part of a pooled buffer, as the owner of a `Bytes`.
struct Filled(Option<AlignedBuf>);

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Some(b) => &b.raw[b.start..b.start + b.len],
            None => &[],
        }
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.give_back();
        }
    }
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_DIRECT);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = direct;
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    /// Every length around the block and buffer boundaries, written in uneven pieces, reads
    /// back exactly, in both modes.
    #[test]
    fn lengths_around_boundaries_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            BUF_SIZE - 1,
            BUF_SIZE,
            BUF_SIZE + 1,
            3 * BUF_SIZE + 12345,
        ];
        for direct in [true, false] {
            for (i, &n) in sizes.iter().enumerate() {
                let path = dir.path().join(format!("f{direct}{i}"));
                let data = pattern(n);
                let mut f = PartFile::create(&path, direct).expect("create");
                for piece in data.chunks(7919) {
                    f.write(piece).expect("write");
                }
                assert_eq!(f.finish().expect("finish"), n as u64);
                let back = std::fs::read(&path).expect("read back");
                assert_eq!(back.len(), n, "length of {n} bytes, direct={direct}");
                assert!(back == data, "content of {n} bytes, direct={direct}");
            }
        }
    }

    /// Direct reads from any offset return the file's bytes, including its unaligned tail.
    #[test]
    fn direct_reads_from_any_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r");
        let data = pattern(2 * BUF_SIZE + 5000);
        std::fs::write(&path, &data).expect("write");
        let Some(file) = open_read_direct(&path).expect("open") else {
            return; // no O_DIRECT on this file system: nothing to test
        };
        for start in [0u64, 1, 4095, 4096, 5000, BUF_SIZE as u64 + 3] {
            let (mut at, skip) = aligned_start(start);
            let mut got = Vec::new();
            loop {
                let block = read_block(&file, at).expect("read");
                if block.is_empty() {
                    break;
                }
                at += block.len() as u64;
                got.extend_from_slice(&block);
            }
            assert!(got[skip..] == data[start as usize..], "bytes from {start}");
        }
    }

    #[test]
    fn buffers_are_aligned_and_reused() {
        let mut a = AlignedBuf::take().expect("aligned buffer");
        assert_eq!(a.spare().as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.spare().len(), BUF_SIZE);
        a.len = 10;
        assert_eq!(a.padded().len(), ALIGN);
        a.give_back();
        let b = AlignedBuf::take().expect("buffer from pool");
        assert_eq!(b.len, 0, "a reused buffer starts empty");
    }
}
