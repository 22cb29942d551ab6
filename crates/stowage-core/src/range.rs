//! The byte-range headers of the OCI API, parsed from text: `Range` on blob reads and
//! `Content-Range` on upload chunks. Pure functions (fuzzed by `stowage-fuzz`).
//!
//! Hand-written rather than `http-range-header` (1.0): on the fuzz seeds and the tests below
//! that crate agrees except that it takes an end past `u64::MAX` (`bytes=0-18446744073709551616`),
//! drops or refuses the parts of a multi-range request that lie past the end where we serve
//! the whole blob, and has no `Content-Range` parser (uploads would keep this code anyway).

use std::ops::Range;

/// A header that does not parse or cannot be satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid or unsatisfiable range")]
pub struct BadRange;

/// A decimal number of the headers: ASCII digits only (no sign, no spaces, as RFC 9110's
/// grammar says; `u64::from_str` alone would take a leading `+`).
fn number(s: &str) -> Result<u64, BadRange> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRange);
    }
    s.parse().map_err(|_| BadRange)
}

/// `Range: bytes=a-b` (or `a-`, or `-n`) against a blob of `size` bytes, as a half-open
/// range. `Ok(None)` for a multi-range request (served whole, as the spec allows).
pub fn blob_range(text: &str, size: u64) -> Result<Option<Range<u64>>, BadRange> {
    let spec = text.trim().strip_prefix("bytes=").ok_or(BadRange)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(BadRange)?;
    let (start, end_incl) = match (a, b) {
        ("", suffix) => {
            let n = number(suffix)?;
            if n == 0 || size == 0 {
                return Err(BadRange);
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (number(s)?, size.saturating_sub(1)),
        (s, e) => {
            let (s, e) = (number(s)?, number(e)?);
            if e < s {
                return Err(BadRange);
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start >= size || end_incl < start {
        return Err(BadRange);
    }
    Ok(Some(start..end_incl + 1))
}

/// An upload chunk's `Content-Range: a-b` (inclusive; `bytes ` or `bytes=` and a `/total`
/// suffix, a number or `*`, are tolerated) as `(a, b)` with `a <= b`.
pub fn content_range(text: &str) -> Result<(u64, u64), BadRange> {
    let s = text.trim();
    let s = s.strip_prefix("bytes").map(str::trim_start).unwrap_or(s);
    let s = s.strip_prefix('=').unwrap_or(s);
    let s = match s.split_once('/') {
        Some((range, total)) => {
            if total != "*" {
                number(total)?;
            }
            range
        }
        None => s,
    };
    let (a, b) = s.split_once('-').ok_or(BadRange)?;
    let (a, b) = (number(a)?, number(b)?);
    if b < a {
        return Err(BadRange);
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blob_ranges() {
        assert_eq!(blob_range("bytes=0-4", 10), Ok(Some(0..5)));
        assert_eq!(blob_range("bytes=5-", 10), Ok(Some(5..10)));
        assert_eq!(blob_range("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(blob_range("bytes=8-100", 10), Ok(Some(8..10)));
        assert_eq!(blob_range("bytes=0-1,3-4", 10), Ok(None));
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=x-1",
            "items=0-1",
            "bytes=-0",
            "bytes=0-18446744073709551615x",
            // Signs and spaces inside the numbers are not the grammar.
            "bytes=+1-+2",
            "bytes= 0 - 1",
            "bytes=0 -1",
        ] {
            assert_eq!(blob_range(bad, 10), Err(BadRange), "{bad}");
        }
        // The largest values neither panic nor wrap.
        assert_eq!(
            blob_range("bytes=0-18446744073709551615", 10),
            Ok(Some(0..10))
        );
        assert_eq!(
            blob_range("bytes=-18446744073709551615", 10),
            Ok(Some(0..10))
        );
        assert_eq!(blob_range("bytes=0-0", 0), Err(BadRange));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("0-9"), Ok((0, 9)));
        assert_eq!(content_range("bytes 10-19/100"), Ok((10, 19)));
        assert_eq!(content_range("bytes=10-19"), Ok((10, 19)));
        assert_eq!(content_range("0-18446744073709551615"), Ok((0, u64::MAX)));
        assert_eq!(content_range("bytes 10-19/*"), Ok((10, 19)));
        for bad in [
            "", "9-0", "a-b", "-5", "5", "1-2-3", "+1-2", "1 - 2", "0-1/x", "0-1/+5",
        ] {
            assert_eq!(content_range(bad), Err(BadRange), "{bad}");
        }
    }
}
