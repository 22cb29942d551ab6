//! Bearer tokens as the Distribution token specification defines them.
//!
//! * [`scope`]: the `type(class):name:actions` grammar of a requested scope.
//! * [`claims`]: the JWT claim set (`access` entries, audience, times).
//! * [`keys`]: libtrust key IDs, trusted public keys, and the ES256 signing key of the
//!   built-in token service.
//! * [`issue`]: the built-in token service's issuer (access and refresh tokens).
//! * [`verify`]: verification of tokens from the built-in service or an external issuer.
//!
//! Cryptography comes from `jsonwebtoken` (aws-lc-rs provider, chosen explicitly, never the
//! process default), `rustls-webpki` for `x5c` chains and `aws-lc-rs` for key generation.
//! No error or `Debug` output ever contains a token, a signature or private key material.

pub mod claims;
pub mod issue;
pub mod keys;
pub mod scope;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use claims::{AccessEntry, Audience, Claims, TokenType};
pub use issue::{Issued, TokenIssuer};
pub use jsonwebtoken::Algorithm;
pub use keys::{libtrust_key_id, KeyType, SigningKey};
pub use scope::{parse_scope_params, Scope, ScopeError, MAX_SCOPES, MAX_SCOPE_LEN};
pub use verify::{Verifier, VerifierBuilder, DEFAULT_ALGORITHMS, DEFAULT_LEEWAY, MAX_TOKEN_LEN};

/// Why a token could not be issued or was refused.
///
/// Messages name the failed check and never contain the token. Values taken from an
/// untrusted header or claim set (`alg`, `kid`, `iss`, `aud`) are clipped and stripped of
/// control characters before they are stored here.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Length of the presented token.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not a well-formed compact JWS.
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    /// The header's `alg` is not in the verifier's allowed list (`none` and `HS*` never are).
    #[error("signing algorithm {alg:?} is not allowed")]
    AlgorithmNotAllowed {
        /// The header's `alg`, clipped.
        alg: String,
    },
    /// The header names no key: no `x5c`, no `kid`.
    #[error("token header names no signing key (no x5c and no kid)")]
    MissingKeyId,
    /// The header carries only an embedded `jwk`, which is never trusted by itself.
    #[error("token header carries only an embedded jwk, which is never trusted")]
    EmbeddedKeyNotTrusted,
    /// The header's `kid` names no configured key.
    #[error("token signed by unknown key id {kid:?}")]
    UnknownKey {
        /// The header's `kid`, clipped.
        kid: String,
    },
    /// A certificate of the `x5c` chain could not be decoded or parsed.
    #[error("x5c certificate #{index} is invalid: {reason}")]
    InvalidCertificate {
        /// Position in the `x5c` array (0 is the leaf).
        index: usize,
        /// What was wrong with it.
        reason: String,
    },
    /// The `x5c` chain does not lead to a root of the configured bundle.
    #[error("x5c chain is not trusted: {0}")]
    UntrustedChain(webpki::Error),
    /// The key's type cannot verify the header's algorithm (e.g. an EC key and RS256).
    #[error("a {key} key cannot verify a {alg:?} signature")]
    KeyMismatch {
        /// The header's algorithm.
        alg: Algorithm,
        /// The selected key's type.
        key: KeyType,
    },
    /// The signature does not verify with the selected key.
    #[error("token signature does not verify")]
    BadSignature,
    /// A required claim is absent.
    #[error("token has no {0:?} claim")]
    MissingClaim(&'static str),
    /// The `iss` claim is not the expected issuer.
    #[error("token issuer {found:?} is not trusted")]
    WrongIssuer {
        /// The token's `iss`, clipped.
        found: String,
    },
    /// The `aud` claim does not contain the expected service.
    #[error("token audience {found:?} does not include this service")]
    WrongAudience {
        /// The token's audiences, clipped.
        found: Vec<String>,
    },
    /// `exp` plus the leeway is in the past.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The verification time.
        now: u64,
    },
    /// `nbf` minus the leeway is in the future.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The verification time.
        now: u64,
    },
    /// `iat` is in the future beyond the leeway.
    #[error("token issued in the future at {iat} (now {now})")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: u64,
        /// The verification time.
        now: u64,
    },
    /// An access token was presented where a refresh token is required, or the reverse.
    #[error("expected a {expected} token, got a {found} token")]
    WrongTokenType {
        /// The type the caller asked for.
        expected: TokenType,
        /// The type the token declares.
        found: TokenType,
    },
    /// Serializing the header or claims of a token to issue failed.
    #[error("cannot serialize token {part}: {source}")]
    Serialize {
        /// `header` or `claims`.
        part: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The signing key could not produce a signature.
    #[error("signing the token with key {kid} failed")]
    Signing {
        /// The signing key's id.
        kid: String,
    },
    /// Random bytes for a token id could not be drawn from the OS.
    #[error("cannot draw random bytes for the token id from the OS")]
    Random,
}

/// Which part of a compact JWS is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not three dot-separated parts.
    #[error("not three dot-separated parts")]
    Structure,
    /// The header is not base64url JSON of the expected shape.
    #[error("header is not valid base64url JSON")]
    Header,
    /// The header lists `crit` extensions, none of which are supported.
    #[error("header has critical extensions (crit/b64), which are not supported")]
    CriticalHeader,
    /// The header's `x5c` is present but empty or too long.
    #[error("header x5c is empty or has too many certificates")]
    X5cLength,
    /// The signature is not base64url, or is empty.
    #[error("signature is not valid base64url")]
    Signature,
    /// The claim set is not base64url JSON of the expected shape.
    #[error("claims are not valid base64url JSON")]
    Claims,
}

/// A key, certificate or verifier configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key, certificate or JWKS file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a generated key failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input holds no PEM section of the expected kind.
    #[error("{what}: no PEM {expected} section found")]
    NoPem {
        /// What was being read (a path or a description).
        what: String,
        /// The expected PEM label.
        expected: &'static str,
    },
    /// The PEM text is damaged.
    #[error("{what}: invalid PEM: {source}")]
    Pem {
        /// What was being read.
        what: String,
        /// The PEM parser's error.
        source: rustls_pki_types::pem::Error,
    },
    /// The private key is not an ECDSA P-256 key in PKCS#8 or SEC1 form.
    #[error("{what}: not an ECDSA P-256 private key (PKCS#8 or SEC1)")]
    InvalidPrivateKey {
        /// What was being read.
        what: String,
    },
    /// A public key is of an unsupported type or damaged.
    #[error("{what}: unsupported or invalid public key: {reason}")]
    UnsupportedKey {
        /// What was being read.
        what: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A certificate of a root bundle could not be parsed or used as a trust anchor.
    #[error("{what}: certificate #{index} is invalid: {reason}")]
    InvalidCertificate {
        /// What was being read.
        what: String,
        /// Position in the bundle.
        index: usize,
        /// Why it was refused.
        reason: String,
    },
    /// A JWKS document is not valid JSON of the expected shape.
    #[error("{what}: invalid JWKS document: {source}")]
    Jwks {
        /// What was being read.
        what: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A JWKS key has no `kid`, so no token could name it.
    #[error("{what}: JWKS key #{index} has no kid")]
    JwksMissingKid {
        /// What was being read.
        what: String,
        /// Position in the `keys` array.
        index: usize,
    },
    /// Two configured keys share a key id.
    #[error("key id {kid:?} is configured twice (second time from {what})")]
    DuplicateKeyId {
        /// The shared id.
        kid: String,
        /// Where the second one came from.
        what: String,
    },
    /// A verifier was configured with a symmetric algorithm.
    #[error(
        "algorithm {0:?} is not allowed for token verification (symmetric algorithms never are)"
    )]
    ForbiddenAlgorithm(Algorithm),
    /// A verifier was configured with no algorithms.
    #[error("a token verifier needs at least one allowed algorithm")]
    NoAlgorithms,
    /// A verifier was configured with no keys and no root certificates.
    #[error("a token verifier needs at least one trusted key or root certificate")]
    NoKeys,
    /// Generating a new signing key failed.
    #[error("cannot generate an ECDSA P-256 key")]
    Generate,
}

/// Clips an untrusted string for an error message: at most 64 characters, control
/// characters replaced by `?`.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}
