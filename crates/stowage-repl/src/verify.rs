//! What a site sends of a blob is checked before the peer can complete it.
//!
//! The sender always reads the whole blob, whatever offset the transfer starts at, and checks
//! it: against the CRC-32C recorded when the bytes were written and their digest verified
//! (hardware CRC-32C costs a small fraction of SHA-256, so checking is close to free next to
//! the network), or against the digest itself for records older than the checksum. A resumed
//! transfer reads (and checks) the prefix the peer already holds without sending it: checking
//! only the part sent would pass a blob whose damage lies in the prefix. Hashing the sent part
//! alone cannot tell anything either, since the verdict needs the whole blob.
//!
//! The last chunk is held back until the check passes, so the peer never receives the final
//! byte of bad content: its transfer stays incomplete (it keeps what arrived, and a later
//! transfer resumes or, if that prefix was bad, starts again), and the sender's verdict, not
//! the peer's digest mismatch, says what went wrong. On a failed check `on_bad` decides the
//! error (the caller has the store check the bytes again and quarantine them).

use std::future::Future;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use stowage_cas::CasError;
use stowage_core::{Digest, Hasher};

use crate::error::ReplError;
use crate::local::ByteStream;

/// What the bytes must be.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size as recorded.
    pub size: u64,
    /// The CRC-32C recorded with it, if any.
    pub crc32c: Option<u32>,
}

/// A running check.
enum Sum {
    Crc { running: u32, expected: u32 },
    Digest(Box<Hasher>),
}

impl Sum {
    fn update(&mut self, b: &[u8]) {
        match self {
            Sum::Crc { running, .. } => *running = crc32c::crc32c_append(*running, b),
            Sum::Digest(h) => h.update(b),
        }
    }

    /// What does not match, or `None`.
    fn verdict(self, digest: &Digest) -> Option<String> {
        match self {
            Sum::Crc { running, expected } => (running != expected)
                .then(|| format!("CRC-32C of its bytes is {running:08x}, recorded {expected:08x}")),
            Sum::Digest(h) => {
                let actual = h.finish();
                (&actual != digest).then(|| format!("its bytes hash to {actual}"))
            }
        }
    }
}

struct State<F> {
    inner: BoxStream<'static, Result<Bytes, CasError>>,
    expected: Expected,
    sum: Option<Sum>,
    /// Bytes still to read before sending starts.
    skip: u64,
    /// Bytes read so far.
    seen: u64,
    /// The chunk held back until the next one (or the verdict) arrives.
    held: Option<Bytes>,
    on_bad: Option<F>,
    done: bool,
}

/// The bytes of a whole read of a blob from `offset` on, checked as described above. `whole`
/// must be the blob from its first byte.
pub(crate) fn verified<F, Fut>(
    whole: BoxStream<'static, Result<Bytes, CasError>>,
    expected: Expected,
    offset: u64,
    on_bad: F,
) -> ByteStream
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ReplError> + Send,
{
    let sum = match expected.crc32c {
        Some(crc) => Sum::Crc {
            running: 0,
            expected: crc,
        },
        None => Sum::Digest(Box::new(Hasher::new(expected.digest.algorithm()))),
    };
    let state = State {
        inner: whole,
        expected,
        sum: Some(sum),
        skip: offset,
        seen: 0,
        held: None,
        on_bad: Some(on_bad),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let bad = loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.seen += chunk.len() as u64;
                    if st.seen > st.expected.size {
                        break format!(
                            "more than the {} bytes its record says are stored",
                            st.expected.size
                        );
                    }
                    if let Some(s) = st.sum.as_mut() {
                        s.update(&chunk);
                    }
                    let part = if st.skip >= chunk.len() as u64 {
                        st.skip -= chunk.len() as u64;
                        continue;
                    } else {
                        let from = st.skip as usize;
                        st.skip = 0;
                        chunk.slice(from..)
                    };
                    if let Some(prev) = st.held.replace(part) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(CasError::Corrupt { detail, .. })) => break detail,
                Some(Err(e)) => {
                    st.done = true;
                    let digest = &st.expected.digest;
                    return Some((
                        Err(ReplError::Storage(format!("reading blob {digest}: {e}"))),
                        st,
                    ));
                }
                None => {
                    let verdict = if st.seen != st.expected.size {
                        Some(format!(
                            "{} bytes are stored, its record says {}",
                            st.seen, st.expected.size
                        ))
                    } else {
                        st.sum.take().and_then(|s| s.verdict(&st.expected.digest))
                    };
                    match verdict {
                        Some(detail) => break detail,
                        None => {
                            st.done = true;
                            return st.held.take().map(|b| (Ok(b), st));
                        }
                    }
                }
            }
        };
        st.done = true;
        st.held = None;
        let err = match st.on_bad.take() {
            Some(f) => f(bad).await,
            None => ReplError::Storage(format!(
                "blob {} failed verification twice",
                st.expected.digest
            )),
        };
        Some((Err(err), st))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::TryStreamExt;

    fn source(data: &[u8], chunk: usize) -> BoxStream<'static, Result<Bytes, CasError>> {
        let v: Vec<Result<Bytes, CasError>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v).boxed()
    }

    fn expect(data: &[u8], crc: bool) -> Expected {
        Expected {
            digest: Digest::sha256(data),
            size: data.len() as u64,
            crc32c: crc.then(|| crc32c::crc32c(data)),
        }
    }

    async fn reported(detail: String) -> ReplError {
        ReplError::SourceCorrupt {
            digest: Digest::sha256(b"x"),
            message: detail,
        }
    }

    #[tokio::test]
    async fn good_bytes_pass_whole_and_from_an_offset() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for crc in [true, false] {
            for offset in [0usize, 1, 2999, 3000, 9999, 10_000] {
                let out: Vec<Bytes> = verified(
                    source(&data, 3000),
                    expect(&data, crc),
                    offset as u64,
                    reported,
                )
                .try_collect()
                .await
                .unwrap();
                assert_eq!(out.concat(), &data[offset..], "crc {crc}, offset {offset}");
            }
        }
    }

    #[tokio::test]
    async fn bad_bytes_anywhere_withhold_the_last_chunk_and_report() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for crc in [true, false] {
            // Damage in the prefix a resumed transfer does not send is found too.
            for (flip, offset) in [(10usize, 5000u64), (9999, 0), (4000, 4000)] {
                let mut bad = data.clone();
                bad[flip] ^= 0x40;
                let items: Vec<Result<Bytes, ReplError>> =
                    verified(source(&bad, 3000), expect(&data, crc), offset, reported)
                        .collect()
                        .await;
                let (last, sent) = items.split_last().unwrap();
                assert!(
                    matches!(last, Err(ReplError::SourceCorrupt { .. })),
                    "{last:?}"
                );
                let sent: Vec<u8> = sent
                    .iter()
                    .map(|r| r.as_ref().unwrap().to_vec())
                    .collect::<Vec<_>>()
                    .concat();
                // Everything but the last chunk went out: the peer cannot complete the blob.
                assert_eq!(sent.len() as u64, 9000 - offset.min(9000), "flip {flip}");
            }
            // Short and long files are caught by their length.
            let short: Vec<Result<Bytes, ReplError>> =
                verified(source(&data[..9000], 3000), expect(&data, crc), 0, reported)
                    .collect()
                    .await;
            assert!(matches!(
                short.last(),
                Some(Err(ReplError::SourceCorrupt { .. }))
            ));
            let mut long = data.clone();
            long.push(1);
            let long: Vec<Result<Bytes, ReplError>> =
                verified(source(&long, 3000), expect(&data, crc), 0, reported)
                    .collect()
                    .await;
            assert!(matches!(
                long.last(),
                Some(Err(ReplError::SourceCorrupt { .. }))
            ));
        }
    }
}
