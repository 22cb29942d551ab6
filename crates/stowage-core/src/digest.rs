//! Content digests (`algorithm:hex`) as used throughout OCI.
//!
//! Parsing follows the grammar of the OCI image-spec (`descriptor.md`):
//!
//! ```text
//! digest     ::= algorithm ":" encoded
//! algorithm  ::= component (separator component)*
//! component  ::= [a-z0-9]+
//! separator  ::= [+._-]
//! encoded    ::= [a-zA-Z0-9=_-]+
//! ```
//!
//! Strings that fail the grammar are [`DigestError::Invalid`]. Strings that
//! match the grammar but name an algorithm other than `sha256`/`sha512` are
//! [`DigestError::Unsupported`]. For supported algorithms the encoded part must
//! be lowercase hex of exactly the algorithm's length.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// Maximum number of characters of offending input quoted in error messages.
const MAX_ERR_INPUT: usize = 200;

/// A supported digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256 (the OCI default).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm identifier as it appears in a digest string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex characters in the encoded part of a digest.
    pub fn hex_len(&self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Number of raw bytes produced by the hash function.
    fn raw_len(&self) -> usize {
        self.hex_len() / 2
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors produced when parsing or constructing a [`Digest`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The input is not a well-formed digest.
    #[error("invalid digest: {0}")]
    Invalid(String),
    /// The input is well-formed but uses an algorithm we do not support.
    #[error("unsupported digest algorithm: {0}")]
    Unsupported(String),
}

/// Truncate untrusted input for inclusion in an error message.
pub(crate) fn truncate_for_error(s: &str) -> String {
    if s.len() <= MAX_ERR_INPUT {
        return s.to_owned();
    }
    let mut end = MAX_ERR_INPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn invalid(input: &str, why: &str) -> DigestError {
    DigestError::Invalid(format!("{why}: {:?}", truncate_for_error(input)))
}

/// A validated content digest such as `sha256:e3b0c442...`.
///
/// The full string form is stored, so [`Digest::as_str`] is free. Ordering and
/// hashing are by that string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    full: String,
    algo: Algorithm,
}

impl Digest {
    /// Parse and validate a digest string.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((algo_part, encoded)) = s.split_once(':') else {
            return Err(invalid(s, "missing ':' separator"));
        };
        if !valid_algorithm_grammar(algo_part) {
            return Err(invalid(s, "malformed algorithm component"));
        }
        if encoded.is_empty()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        {
            return Err(invalid(s, "malformed encoded part"));
        }
        let Some(algo) = Algorithm::from_name(algo_part) else {
            return Err(DigestError::Unsupported(format!(
                "{:?}",
                truncate_for_error(s)
            )));
        };
        if encoded.len() != algo.hex_len() {
            return Err(invalid(
                s,
                &format!(
                    "{} digest must have {} hex characters, got {}",
                    algo,
                    algo.hex_len(),
                    encoded.len()
                ),
            ));
        }
        if !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid(s, "encoded part must be lowercase hex"));
        }
        Ok(Digest {
            full: s.to_owned(),
            algo,
        })
    }

    /// The digest algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// The lowercase hex encoded hash (the part after `:`).
    pub fn hex(&self) -> &str {
        &self.full[self.algo.as_str().len() + 1..]
    }

    /// The full `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Compute the SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::compute(Algorithm::Sha256, bytes)
    }

    /// Compute the digest of `bytes` with the given algorithm.
    pub fn compute(algo: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algo);
        h.update(bytes);
        h.finish()
    }

    /// Build a digest from the binary output of a hash function.
    ///
    /// Fails with [`DigestError::Invalid`] if `raw` has the wrong length.
    pub fn from_raw(algo: Algorithm, raw: &[u8]) -> Result<Digest, DigestError> {
        if raw.len() != algo.raw_len() {
            return Err(DigestError::Invalid(format!(
                "{} digest needs {} raw bytes, got {}",
                algo,
                algo.raw_len(),
                raw.len()
            )));
        }
        Ok(Digest {
            full: format!("{}:{}", algo.as_str(), hex::encode(raw)),
            algo,
        })
    }

    /// The raw (hex-decoded) hash bytes.
    pub fn raw_bytes(&self) -> Vec<u8> {
        // Validated as lowercase hex of even length at construction, so
        // decoding cannot fail; fall back to empty just in case.
        hex::decode(self.hex()).unwrap_or_default()
    }
}

/// `algorithm ::= component (separator component)*` with
/// `component ::= [a-z0-9]+` and `separator ::= [+._-]`.
fn valid_algorithm_grammar(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    // Every separator must be preceded and followed by a component character.
    let mut prev_was_component = false;
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_was_component = true,
            b'+' | b'.' | b'_' | b'-' => {
                if !prev_was_component {
                    return false;
                }
                prev_was_component = false;
            }
            _ => return false,
        }
    }
    prev_was_component
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

enum HashState {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// Incremental digest computation.
pub struct Hasher {
    state: HashState,
    bytes: u64,
    /// CRC-32C of the same bytes: stored with a blob so that reads can check the bytes at a
    /// fraction of the cost of hashing them again.
    crc: u32,
}

impl Hasher {
    /// Start hashing with the given algorithm.
    pub fn new(algo: Algorithm) -> Hasher {
        let state = match algo {
            Algorithm::Sha256 => HashState::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => HashState::Sha512(sha2::Sha512::new()),
        };
        Hasher {
            state,
            bytes: 0,
            crc: 0,
        }
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            HashState::Sha256(_) => Algorithm::Sha256,
            HashState::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            HashState::Sha256(h) => h.update(data),
            HashState::Sha512(h) => h.update(data),
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.bytes += data.len() as u64;
    }

    /// CRC-32C (Castagnoli) of the bytes fed so far.
    pub fn checksum(&self) -> u32 {
        self.crc
    }

    /// Number of bytes fed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes
    }

    /// Finish hashing and return the digest.
    pub fn finish(self) -> Digest {
        let (algo, hex) = match self.state {
            HashState::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            HashState::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            full: format!("{}:{}", algo.as_str(), hex),
            algo,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm())
            .field("bytes_hashed", &self.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let h64 = "a".repeat(64);
        let h128 = "0".repeat(128);
        let ok = [
            EMPTY_SHA256.to_string(),
            format!("sha512:{h128}"),
            format!("sha256:{}", "0123456789abcdef".repeat(4)),
        ];
        for s in &ok {
            let d = Digest::parse(s).unwrap();
            assert_eq!(d.as_str(), s);
        }
        let invalid = [
            String::new(),
            "sha256".to_string(),
            h64.clone(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha512:{h64}"),
            format!("sha256:{}g", "a".repeat(63)),
            "sha256:".to_string(),
            format!(":{h64}"),
            format!("SHA256:{h64}"),
            format!("sha256+:{h64}"),
            format!("+sha256:{h64}"),
            format!("sha..256:{h64}"),
            format!("sha256:{h64}:x"),
            format!("sha256:{}+", "a".repeat(63)),
        ];
        for s in &invalid {
            match Digest::parse(s) {
                Err(DigestError::Invalid(_)) => {}
                other => panic!("{s:?}: expected Invalid, got {other:?}"),
            }
        }
        let unsupported = [
            format!("md5:{h64}"),
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".to_string(),
            format!("sha384:{h64}"),
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564".to_string(),
        ];
        for s in &unsupported {
            match Digest::parse(s) {
                Err(DigestError::Unsupported(msg)) => assert!(msg.contains(&s[..4])),
                other => panic!("{s:?}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_includes_truncated_input() {
        let long = format!("sha256:{}", "Z".repeat(1000));
        let msg = Digest::parse(&long).unwrap_err().to_string();
        assert!(msg.contains("sha256:ZZZ"));
        assert!(msg.len() < 400, "{}", msg.len());
    }

    #[test]
    fn accessors() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), &EMPTY_SHA256[7..]);
        assert_eq!(d.raw_bytes().len(), 32);
        assert_eq!(
            Digest::from_raw(Algorithm::Sha256, &d.raw_bytes()).unwrap(),
            d
        );
        assert!(Digest::from_raw(Algorithm::Sha256, &[0; 31]).is_err());
        assert!(Digest::from_raw(Algorithm::Sha512, &[0; 32]).is_err());
        assert_eq!(Algorithm::Sha512.hex_len(), 128);
        assert_eq!(Algorithm::Sha512.as_str(), "sha512");
    }

    #[test]
    fn compute_known_values() {
        assert_eq!(Digest::sha256(b"").as_str(), EMPTY_SHA256);
        assert_eq!(
            Digest::compute(Algorithm::Sha512, b"abc").as_str(),
            "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn hasher_matches_one_shot_for_splits() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for algo in [Algorithm::Sha256, Algorithm::Sha512] {
            let expected = Digest::compute(algo, &data);
            for split in [0, 1, 63, 64, 65, 127, 128, 2500, 4999, 5000] {
                let mut h = Hasher::new(algo);
                h.update(&data[..split]);
                h.update(&[]);
                h.update(&data[split..]);
                assert_eq!(h.bytes_hashed(), data.len() as u64);
                assert_eq!(h.finish(), expected, "{algo} split {split}");
            }
            let mut h = Hasher::new(algo);
            for chunk in data.chunks(7) {
                h.update(chunk);
            }
            assert_eq!(h.finish(), expected);
        }
        let h = Hasher::new(Algorithm::Sha256);
        assert!(format!("{h:?}").contains("Sha256"));
    }

    #[test]
    fn display_fromstr_serde_round_trip() {
        let d = Digest::sha256(b"hello");
        let s = d.to_string();
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    proptest::proptest! {
        #[test]
        fn from_raw_round_trips(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 32)) {
            let d = Digest::from_raw(Algorithm::Sha256, &raw).unwrap();
            proptest::prop_assert_eq!(d.raw_bytes(), raw);
            proptest::prop_assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Digest::parse(&s);
        }
    }
}
