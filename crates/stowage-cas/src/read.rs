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

use crate::CasError;

/// Read size for local files. `object_store`'s own file stream reads 8 KiB per blocking call,
/// which caps pulls far below disk and loopback speed; 1 MiB reads do not.
const FILE_CHUNK: u64 = 1024 * 1024;
/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 4;

/// Opens `path`, whole or a range, as a stream of chunks.
pub(crate) async fn open(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    range: Option<Range<u64>>,
) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
    let opts = GetOptions {
        range: range.map(GetRange::Bounded),
        ..Default::default()
    };
    let result = store.get_opts(path, opts).await?;
    match result.payload {
        GetResultPayload::File(file, local) => Ok(file_stream(file, local, result.range)),
        GetResultPayload::Stream(s) => Ok(s),
    }
}

fn file_stream(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
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

/// A blob's bytes as a stream. When verifying, the final poll checks the digest and yields
/// [`CasError::Corrupt`] instead of ending cleanly if the bytes do not match.
pub struct BlobStream {
    inner: BoxStream<'static, Result<Bytes, object_store::Error>>,
    digest: Digest,
    hasher: Option<Hasher>,
    done: bool,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("verify", &self.hasher.is_some())
            .finish()
    }
}

pub(crate) fn wrap(
    inner: BoxStream<'static, Result<Bytes, object_store::Error>>,
    digest: Digest,
    verify: bool,
) -> BlobStream {
    let hasher = verify.then(|| Hasher::new(digest.algorithm()));
    BlobStream {
        inner,
        digest,
        hasher,
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
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&chunk);
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
                match self.hasher.take() {
                    Some(h) => {
                        let actual = h.finish();
                        if actual == self.digest {
                            Poll::Ready(None)
                        } else {
                            tracing::error!(expected = %self.digest, %actual, "corrupt blob read");
                            Poll::Ready(Some(Err(CasError::Corrupt {
                                expected: self.digest.clone(),
                                actual,
                            })))
                        }
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }
}
