//! `Range` and `Content-Range` headers.

use std::ops::Range;

use stowage_core::range::{blob_range, content_range, BadRange};

/// Blob sizes every header is tried against, besides the one an input may name.
const SIZES: &[u64] = &[0, 1, 2, 10, 4096, u64::MAX - 1, u64::MAX];

/// Fuzz target: `blob_range` and `content_range`.
///
/// Input: `SIZE\nHEADER` (the first line a decimal blob size) or just `HEADER`. The header is
/// tried against that size and against [`SIZES`]; `content_range` gets the header too.
///
/// * Never panics; a returned range is non-empty and inside `0..size`; `Ok(None)` (served
///   whole) only for a header with `,`; `content_range` returns `a <= b`.
/// * Model check: with the input's first 24 bytes read as three integers `a`, `b`, `size`,
///   the canonical headers `bytes=a-b`, `bytes=a-`, `bytes=-b` and `a-b` give exactly what
///   RFC 9110 says.
pub fn range(data: &[u8]) {
    let s = crate::text(data);
    let (size, header) = match s.split_once('\n') {
        Some((first, rest)) => (first.trim().parse::<u64>().ok(), rest),
        None => (None, s.as_ref()),
    };
    for &size in size.iter().chain(SIZES) {
        check_blob_range(header, size);
        check_blob_range(&s, size);
    }
    check_content_range(header);
    check_content_range(&s);

    if let Some(bytes) = data.get(..24) {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        model(word(0), word(1), word(2));
        // Small values as well, where the interesting boundaries are.
        model(word(0) % 32, word(1) % 32, word(2) % 32);
    }
}

fn check_blob_range(text: &str, size: u64) {
    match blob_range(text, size) {
        Ok(Some(r)) => {
            assert!(
                r.start < r.end,
                "empty range {r:?} for {text:?} (size {size})"
            );
            assert!(
                r.end <= size,
                "range {r:?} past the end for {text:?} (size {size})"
            );
        }
        Ok(None) => assert!(text.contains(','), "Ok(None) without ',' for {text:?}"),
        Err(BadRange) => {}
    }
}

fn check_content_range(text: &str) {
    if let Ok((a, b)) = content_range(text) {
        assert!(a <= b, "content_range({text:?}) = ({a}, {b})");
    }
}

/// The headers a client writes, checked against the RFC's arithmetic.
fn model(a: u64, b: u64, size: u64) {
    let last = size.checked_sub(1);
    // bytes=a-b: satisfiable when a <= b and a < size; the end is clamped to the blob.
    let want: Result<Option<Range<u64>>, BadRange> = match last {
        Some(last) if a <= b && a <= last => Ok(Some(a..b.min(last) + 1)),
        _ => Err(BadRange),
    };
    assert_eq!(
        blob_range(&format!("bytes={a}-{b}"), size),
        want,
        "bytes={a}-{b} of {size}"
    );
    // bytes=a-: from a to the end.
    let want = match last {
        Some(last) if a <= last => Ok(Some(a..size)),
        _ => Err(BadRange),
    };
    assert_eq!(
        blob_range(&format!("bytes={a}-"), size),
        want,
        "bytes={a}- of {size}"
    );
    // bytes=-b: the last b bytes (all of them when b >= size); -0 is unsatisfiable.
    let want = if b == 0 || size == 0 {
        Err(BadRange)
    } else {
        Ok(Some(size - b.min(size)..size))
    };
    assert_eq!(
        blob_range(&format!("bytes=-{b}"), size),
        want,
        "bytes=-{b} of {size}"
    );
    // A multi-range request is served whole.
    assert_eq!(blob_range(&format!("bytes={a}-{b},{b}-"), size), Ok(None));

    let want = if a <= b { Ok((a, b)) } else { Err(BadRange) };
    assert_eq!(content_range(&format!("{a}-{b}")), want, "{a}-{b}");
    assert_eq!(content_range(&format!("bytes {a}-{b}/{size}")), want);
    assert_eq!(content_range(&format!("bytes={a}-{b}")), want);
}
