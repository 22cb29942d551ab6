//! `Digest::parse` against the image-spec grammar.

use std::sync::OnceLock;

use stowage_core::{Algorithm, Digest, DigestError};

/// The grammar of `descriptor.md`: `algorithm ":" encoded`.
const GRAMMAR: &str = r"\A[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\z";
/// What Stowage accepts: the two registered algorithms, lowercase hex of their length.
const SUPPORTED: &str = r"\A(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\z";

/// Fuzz target: `Digest::parse(text)`.
///
/// * `Ok` exactly when the text is `sha256:` + 64 or `sha512:` + 128 lowercase hex digits;
///   `Unsupported` exactly when the text fits the grammar with another algorithm;
///   `Invalid` otherwise.
/// * A parsed digest prints as its input, re-parses to itself, and its raw bytes rebuild it.
pub fn digest(data: &[u8]) {
    static G: OnceLock<regex::Regex> = OnceLock::new();
    static S: OnceLock<regex::Regex> = OnceLock::new();
    let s = crate::text(data);
    let s = s.as_ref();
    let grammar = crate::regex(&G, GRAMMAR).is_match(s);
    let supported = crate::regex(&S, SUPPORTED).is_match(s);
    let algorithm = s.split(':').next().unwrap_or_default();

    match Digest::parse(s) {
        Ok(d) => {
            assert!(supported, "accepted a digest outside the grammar: {s:?}");
            assert_eq!(d.to_string(), s, "Display does not round-trip");
            assert_eq!(d.as_str(), s);
            assert_eq!(d.algorithm().as_str(), algorithm);
            assert_eq!(d.hex().len(), d.algorithm().hex_len());
            let printed = d.to_string();
            assert_eq!(Digest::parse(&printed).as_ref(), Ok(&d));
            let raw = d.raw_bytes();
            assert_eq!(raw.len() * 2, d.algorithm().hex_len());
            assert_eq!(Digest::from_raw(d.algorithm(), &raw).as_ref(), Ok(&d));
            let json = serde_json::to_string(&d).expect("a digest serializes");
            let back: Digest = serde_json::from_str(&json).expect("a digest deserializes");
            assert_eq!(back, d);
        }
        Err(DigestError::Unsupported(_)) => {
            assert!(
                grammar && !matches!(algorithm, "sha256" | "sha512"),
                "Unsupported for {s:?}, which is malformed or a supported algorithm"
            );
        }
        Err(DigestError::Invalid(_)) => {
            assert!(!supported, "refused a valid digest: {s:?}");
            assert!(
                !grammar || matches!(algorithm, "sha256" | "sha512"),
                "Invalid for {s:?}, which fits the grammar with an unsupported algorithm"
            );
        }
    }

    // Computed digests print in the form the parser accepts.
    for algo in [Algorithm::Sha256, Algorithm::Sha512] {
        let d = Digest::compute(algo, data);
        assert_eq!(Digest::parse(d.as_str()).as_ref(), Ok(&d));
    }
}
