//! Streaming reads: large chunks from local files, and digest verification of whole reads.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore};
use stowage_core::{Digest, Hasher};

use crate::direct::{aligned_start, open_read_direct, read_block, BUF_SIZE};
use crate::CasError;

/// Read size for local files. `object_store`'s own file stream reads 8 KiB per blocking call,
/// which caps pulls far below disk and loopback speed; 1 MiB reads do not.
const FILE_CHUNK: u64 = 1024 * 1024;
/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 4;

/// Opens `path`, whole or a range, as a stream of chunks.
/// With `direct`, reads of local files bypass the page cache (see `direct.rs`): blobs are written
/// that way too, so the cache would rarely hold them, and filling it costs more CPU per byte than
/// the direct read itself.
pub(crate) async fn open(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    range: Option<Range<u64>>,
    direct: bool,
) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
    let opts = GetOptions {
        range: range.map(GetRange::Bounded),
        ..Default::default()
    };
    let result = store.get_opts(path, opts).await?;
    match result.payload {
        GetResultPayload::File(file, local) => Ok(file_stream(file, local, result.range, direct)),
        GetResultPayload::Stream(s) => Ok(s),
    }
}

fn file_stream(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
    direct: bool,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    if direct {
        return direct_stream(file, path, range);
    }
    // A reader thread runs ahead of the response by up to READ_AHEAD chunks, so disk reads
    // overlap hashing and socket writes. When the response is dropped (client gone) the channel
    // closes and the thread stops.
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let fail = |what: String| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: what.into(),
        };
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(fail(format!("seeking {}: {e}", path.display()))));
            return;
        }
        let mut pos = range.start;
        while pos < range.end {
            let to_read = (range.end - pos).min(FILE_CHUNK);
            let mut buf = Vec::with_capacity(to_read as usize);
            let item = match (&mut file).take(to_read).read_to_end(&mut buf) {
                Ok(0) => Err(fail(format!(
                    "{} ended early at byte {pos} of {}",
                    path.display(),
                    range.end
                ))),
                Ok(n) => {
                    pos += n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(fail(format!("reading {}: {e}", path.display()))),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// Direct reads wait for the device, so (for blobs of more than one block) two reader threads
/// each keep one read in flight: blocks 0, 2, 4... on one, 1, 3, 5... on the other; the stream
/// takes them in turn.
const DIRECT_READERS: usize = 2;

/// Streams `range` of a large local file through pooled aligned buffers, with `O_DIRECT` where
/// the file system has it (else buffered `pread`s of the same blocks from `file`).
fn direct_stream(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    let file = Arc::new(file);
    let path = Arc::new(path);
    let (first, skip) = aligned_start(range.start);
    let blocks = (range.end.saturating_sub(first)).div_ceil(BUF_SIZE as u64);
    let readers = (blocks as usize).clamp(1, DIRECT_READERS);
    let mut receivers = Vec::with_capacity(readers);
    for reader in 0..readers {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD / DIRECT_READERS);
        receivers.push(rx);
        let (file, path, range) = (file.clone(), path.clone(), range.clone());
        tokio::task::spawn_blocking(move || {
            let fail = |what: String| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: what.into(),
            };
            let direct = match open_read_direct(&path) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(fail(format!("opening {}: {e}", path.display()))));
                    return;
                }
            };
            let source: &std::fs::File = direct.as_ref().unwrap_or(&file);
            let stride = (readers * BUF_SIZE) as u64;
            let mut at = first + (reader * BUF_SIZE) as u64;
            while at < range.end {
                let want_end = (at + BUF_SIZE as u64).min(range.end);
                let item = match read_block(source, at) {
                    Ok(block) if at + (block.len() as u64) < want_end => Err(fail(format!(
                        "{} ended early at byte {} of {}",
                        path.display(),
                        at + block.len() as u64,
                        range.end
                    ))),
                    Ok(block) => {
                        let from = if at == first { skip } else { 0 };
                        Ok(block.slice(from..(want_end - at) as usize))
                    }
                    Err(e) => Err(fail(format!("reading {}: {e}", path.display()))),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
                at += stride;
            }
        });
    }
    futures::stream::unfold((receivers, 0usize), |(mut rxs, turn)| async move {
        let item = rxs[turn].recv().await?;
        let next = (turn + 1) % rxs.len();
        Some((item, (rxs, next)))
    })
    .boxed()
}

/// A blob's bytes as a stream. When verifying, the final poll checks the bytes and yields
/// [`CasError::Corrupt`] instead of ending cleanly if the bytes do not match.
pub struct BlobStream {
    inner: BoxStream<'static, Result<Bytes, object_store::Error>>,
    digest: Digest,
    check: Option<Check>,
    done: bool,
}

/// How a whole read is checked.
enum Check {
    /// Against the CRC-32C recorded when the blob was written: catches corruption at a small
    /// fraction of the cost of hashing.
    Crc { expected: u32, running: u32 },
    /// By hashing the bytes again (blobs recorded without a checksum).
    Digest(Box<Hasher>),
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("verify", &self.check.is_some())
            .finish()
    }
}

/// With `verify`, the stream checks what it yields: against `crc32c` when the index has it,
/// else against the digest.
pub(crate) fn wrap(
    inner: BoxStream<'static, Result<Bytes, object_store::Error>>,
    digest: Digest,
    verify: bool,
    crc32c: Option<u32>,
) -> BlobStream {
    let check = verify.then(|| match crc32c {
        Some(expected) => Check::Crc {
            expected,
            running: 0,
        },
        None => Check::Digest(Box::new(Hasher::new(digest.algorithm()))),
    });
    BlobStream {
        inner,
        digest,
        check,
        done: false,
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, CasError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                match self.check.as_mut() {
                    Some(Check::Crc { running, .. }) => {
                        *running = crc32c::crc32c_append(*running, &chunk);
                    }
                    Some(Check::Digest(h)) => h.update(&chunk),
                    None => {}
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let digest = self.digest.clone();
                Poll::Ready(Some(Err(CasError::Backend {
                    context: format!("reading blob {digest}"),
                    source: e,
                })))
            }
            Poll::Ready(None) => {
                self.done = true;
                let mismatch = match self.check.take() {
                    Some(Check::Crc { expected, running }) => (running != expected).then(|| {
                        format!("CRC-32C of its bytes is {running:08x}, recorded {expected:08x}")
                    }),
                    Some(Check::Digest(h)) => {
                        let actual = h.finish();
                        (actual != self.digest).then(|| format!("its bytes hash to {actual}"))
                    }
                    None => None,
                };
                match mismatch {
                    None => Poll::Ready(None),
                    Some(detail) => {
                        tracing::error!(digest = %self.digest, %detail, "corrupt blob read");
                        Poll::Ready(Some(Err(CasError::Corrupt {
                            digest: self.digest.clone(),
                            detail,
                        })))
                    }
                }
            }
        }
    }
}
