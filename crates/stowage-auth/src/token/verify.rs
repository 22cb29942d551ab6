//! Verification of bearer tokens, from the built-in token service or an external issuer.
//!
//! The order follows Distribution's token access controller, hardened where it was found
//! wanting:
//!
//! 1. Parse the header. Its `alg` must be in the allowed list, which can never hold an
//!    HMAC algorithm (a public key used as an HMAC secret is the classic key-confusion
//!    attack) and has no spelling for `none`.
//! 2. Choose the key. An `x5c` chain must verify (rustls-webpki, at the caller's time) to a
//!    root of the configured bundle and the leaf's key is used; otherwise `kid` must name a
//!    configured key. An embedded `jwk` is never trusted by itself, nor consulted when a
//!    `kid` is present (Distribution's CVE-2025-24976 was an embedded key being used
//!    because its claimed id matched a trusted one).
//! 3. The key's type must fit the algorithm family, then the signature must verify.
//! 4. Only then are the claims read: issuer, audience (string or array), `exp`, `nbf` and
//!    `iat`, each against the caller's `now` with the leeway, and the token type.

use std::collections::HashMap;

use sha2::Digest as _;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};

use super::claims::RawClaims;
use super::keys::{key_from_spki, keys_from_jwks, libtrust_key_id, TrustedKey};
use super::{clip, Claims, KeyError, Malformed, SigningKey, TokenError, TokenType};

/// Algorithms a verifier accepts unless configured otherwise.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// Clock skew tolerated on `exp`, `nbf` and `iat` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Longest token accepted, in bytes (room for an `x5c` chain of a few RSA certificates).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most certificates accepted in an `x5c` chain.
const MAX_X5C: usize = 8;

/// Signature algorithms accepted inside `x5c` certificate chains (aws-lc-rs, explicitly).
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::ED25519,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_3072_8192_SHA384,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Verifies bearer tokens for one issuer and one audience. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: HashMap<String, TrustedKey>,
    roots: Vec<TrustAnchor<'static>>,
    verified: VerifiedCache,
}

/// Most tokens remembered as verified.
const VERIFIED_CACHE: usize = 10_000;

/// Tokens whose signature checked out against a configured key, by the SHA-256 of the whole
/// token, with their claims: a client sends the same token on every request for minutes, and
/// the signature check (about 55 µs for ES256, the largest part of a small request's cost)
/// then runs once per token. The claim checks (issuer, audience, times) run on every use.
/// Tokens verified through an `x5c` chain are not remembered: the chain's validity depends
/// on the time.
#[derive(Default)]
struct VerifiedCache {
    map: std::sync::Mutex<HashMap<[u8; 32], Claims>>,
}

impl VerifiedCache {
    fn get(&self, key: &[u8; 32]) -> Option<Claims> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn insert(&self, key: [u8; 32], claims: Claims, now: u64, leeway: u64) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_CACHE {
            map.retain(|_, c| c.exp.saturating_add(leeway) >= now);
            if map.len() >= VERIFIED_CACHE {
                // Bounded: forgetting only costs a signature check.
                map.clear();
            }
        }
        map.insert(key, claims);
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.inner.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("algorithms", &self.inner.algorithms)
            .field("leeway", &self.inner.leeway)
            .field("kids", &kids)
            .field("roots", &self.inner.roots.len())
            .finish()
    }
}

/// Configures a [`Verifier`]: start with [`Verifier::builder`], add keys, then `build`.
pub struct VerifierBuilder {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    keys: HashMap<String, TrustedKey>,
    roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .field("keys", &self.keys.len())
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl VerifierBuilder {
    /// Replaces the allowed algorithms (default [`DEFAULT_ALGORITHMS`]). HMAC algorithms
    /// make [`build`](Self::build) fail.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms.to_vec();
        self
    }

    /// Replaces the clock-skew leeway (default [`DEFAULT_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Trusts a root certificate bundle (PEM, as Distribution's `rootcertbundle`): each
    /// certificate's key is trusted under its libtrust key ID, and the certificates anchor
    /// `x5c` chains. `what` names the source in errors.
    pub fn root_bundle_pem(mut self, pem: &[u8], what: &str) -> Result<Self, KeyError> {
        let mut found = 0usize;
        for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = item.map_err(|source| KeyError::Pem {
                what: what.to_owned(),
                source,
            })?;
            let invalid = |reason: String| KeyError::InvalidCertificate {
                what: what.to_owned(),
                index,
                reason,
            };
            webpki::anchor_from_trusted_cert(&der).map_err(|e| invalid(e.to_string()))?;
            let (_, cert) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| invalid(e.to_string()))?;
            found += 1;
            if self.roots.contains(&der) {
                // The same root listed twice (a sloppy concatenation): harmless.
                continue;
            }
            let spki = cert.public_key().raw;
            match key_from_spki(spki, &format!("{what}, certificate #{index}")) {
                Ok(key) => self.add_key(libtrust_key_id(spki), key, what)?,
                // Still an anchor for x5c chains; only its key cannot sign tokens directly.
                Err(e) => tracing::warn!(
                    error = %e,
                    "root certificate key is not usable by kid; trusted for x5c chains only"
                ),
            }
            self.roots.push(der);
        }
        if found == 0 {
            return Err(KeyError::NoPem {
                what: what.to_owned(),
                expected: "CERTIFICATE",
            });
        }
        Ok(self)
    }

    /// [`root_bundle_pem`](Self::root_bundle_pem) from a file.
    pub fn root_bundle_file(self, path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        self.root_bundle_pem(&pem, &path.display().to_string())
    }

    /// Trusts every key of a JWKS document under its `kid`. Symmetric keys are refused.
    pub fn jwks_json(mut self, json: &[u8], what: &str) -> Result<Self, KeyError> {
        for (kid, key) in keys_from_jwks(json, what)? {
            self.add_key(kid, key, what)?;
        }
        Ok(self)
    }

    /// [`jwks_json`](Self::jwks_json) from a file.
    pub fn jwks_file(self, path: &Path) -> Result<Self, KeyError> {
        let json = read(path)?;
        self.jwks_json(&json, &path.display().to_string())
    }

    /// Trusts one public key (PEM `PUBLIC KEY`) under `kid`, or under its libtrust key ID
    /// when `kid` is `None`.
    pub fn public_key_pem(
        mut self,
        pem: &[u8],
        kid: Option<&str>,
        what: &str,
    ) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoPem {
                what: what.to_owned(),
                expected: "PUBLIC KEY",
            },
            source => KeyError::Pem {
                what: what.to_owned(),
                source,
            },
        })?;
        let key = key_from_spki(spki.as_ref(), what)?;
        let kid = kid.map_or_else(|| libtrust_key_id(spki.as_ref()), str::to_owned);
        self.add_key(kid, key, what)?;
        Ok(self)
    }

    /// Trusts the public half of a signing key under its kid, restricted to ES256.
    pub fn signing_key(mut self, key: &SigningKey) -> Result<Self, KeyError> {
        self.add_key(
            key.kid().to_owned(),
            key.trusted_key(),
            "the service signing key",
        )?;
        Ok(self)
    }

    /// Checks the configuration and builds the verifier.
    pub fn build(self) -> Result<Verifier, KeyError> {
        if self.algorithms.is_empty() {
            return Err(KeyError::NoAlgorithms);
        }
        if let Some(alg) = self
            .algorithms
            .iter()
            .find(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(KeyError::ForbiddenAlgorithm(*alg));
        }
        if self.keys.is_empty() && self.roots.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let mut roots = Vec::with_capacity(self.roots.len());
        for (index, der) in self.roots.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der).map_err(|e| {
                KeyError::InvalidCertificate {
                    what: "root bundle".to_owned(),
                    index,
                    reason: e.to_string(),
                }
            })?;
            roots.push(anchor.to_owned());
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                issuer: self.issuer,
                audience: self.audience,
                algorithms: self.algorithms,
                leeway: self.leeway.as_secs(),
                keys: self.keys,
                roots,
                verified: VerifiedCache::default(),
            }),
        })
    }

    fn add_key(&mut self, kid: String, key: TrustedKey, what: &str) -> Result<(), KeyError> {
        if self.keys.contains_key(&kid) {
            return Err(KeyError::DuplicateKeyId {
                kid,
                what: what.to_owned(),
            });
        }
        self.keys.insert(kid, key);
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The header fields this verifier reads. Duplicate fields are a parse error (serde), so a
/// header cannot say one thing to us and another to a different parser.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
    #[serde(default)]
    jwk: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    b64: Option<serde::de::IgnoredAny>,
}

/// Accepts any extended key usage, as Distribution does (`ExtKeyUsageAny`), including
/// none at all; a malformed EKU extension is still refused.
struct AnyEku;

impl ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

impl Verifier {
    /// Starts configuring a verifier for tokens with `iss = issuer` and an `aud` holding
    /// `audience` (the registry's service name).
    pub fn builder(issuer: &str, audience: &str) -> VerifierBuilder {
        VerifierBuilder {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: DEFAULT_LEEWAY,
            keys: HashMap::new(),
            roots: Vec::new(),
        }
    }

    /// A verifier trusting exactly `key`, for ES256 only.
    pub(crate) fn for_own_key(issuer: &str, audience: &str, key: &SigningKey) -> Verifier {
        let mut keys = HashMap::new();
        keys.insert(key.kid().to_owned(), key.trusted_key());
        Verifier {
            inner: Arc::new(Inner {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                algorithms: vec![Algorithm::ES256],
                leeway: DEFAULT_LEEWAY.as_secs(),
                keys,
                roots: Vec::new(),
                verified: VerifiedCache::default(),
            }),
        }
    }

    /// The expected issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The expected audience (service name).
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// The ids of the trusted keys, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.inner.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Verifies an access token at `now_secs` (seconds since the Unix epoch) and returns its
    /// claims. Refresh tokens are refused.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_any(token, now_secs)?;
        match claims.token_type() {
            TokenType::Access => Ok(claims),
            found => Err(TokenError::WrongTokenType {
                expected: TokenType::Access,
                found,
            }),
        }
    }

    /// Verifies a refresh token (private claim `tt = refresh`) at `now_secs`.
    pub fn verify_refresh(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_any(token, now_secs)?;
        match claims.token_type() {
            TokenType::Refresh => Ok(claims),
            found => Err(TokenError::WrongTokenType {
                expected: TokenType::Refresh,
                found,
            }),
        }
    }

    fn verify_any(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let fingerprint: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.inner.verified.get(&fingerprint) {
            self.check_claims(&claims, now)?;
            return Ok(claims);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(Malformed::Structure));
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed(Malformed::Header))?;
        if header.crit.is_some() || header.b64.is_some() {
            return Err(TokenError::Malformed(Malformed::CriticalHeader));
        }

        // 1. Algorithm. `none` and unknown names do not parse; HS* parse but are never in
        //    the allowed list.
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| self.inner.algorithms.contains(a))
            .ok_or_else(|| TokenError::AlgorithmNotAllowed {
                alg: clip(&header.alg),
            })?;

        // 2. Key.
        let chain_key;
        let key: &TrustedKey = if let Some(x5c) = &header.x5c {
            chain_key = self.key_from_chain(x5c, now)?;
            &chain_key
        } else if let Some(kid) = &header.kid {
            self.inner
                .keys
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKey { kid: clip(kid) })?
        } else if header.jwk.is_some() {
            return Err(TokenError::EmbeddedKeyNotTrusted);
        } else {
            return Err(TokenError::MissingKeyId);
        };

        // 3. Key type, then signature.
        if !key.typ.verifies(alg) || key.alg.is_some_and(|a| a != alg) {
            return Err(TokenError::KeyMismatch { alg, key: key.typ });
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Malformed(Malformed::Signature))?;
        let verifier = (DEFAULT_PROVIDER.verifier_factory)(&alg, &key.key)
            .map_err(|_| TokenError::KeyMismatch { alg, key: key.typ })?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let message = token.as_bytes().get(..signed_len).unwrap_or_default();
        verifier
            .verify(message, &signature)
            .map_err(|_| TokenError::BadSignature)?;

        // 4. Claims, only now that they are known to come from a trusted key.
        let raw: RawClaims = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed(Malformed::Claims))?;
        let claims = raw.into_claims()?;
        self.check_claims(&claims, now)?;
        if header.x5c.is_none() {
            self.inner
                .verified
                .insert(fingerprint, claims.clone(), now, self.inner.leeway);
        }
        Ok(claims)
    }

    /// Verifies an `x5c` chain to a configured root at `now` and returns the leaf's key.
    fn key_from_chain(&self, x5c: &[String], now: u64) -> Result<TrustedKey, TokenError> {
        if x5c.is_empty() || x5c.len() > MAX_X5C {
            return Err(TokenError::Malformed(Malformed::X5cLength));
        }
        let mut ders = Vec::with_capacity(x5c.len());
        for (index, b64) in x5c.iter().enumerate() {
            let der = STANDARD
                .decode(b64)
                .map_err(|_| TokenError::InvalidCertificate {
                    index,
                    reason: "not standard base64".to_owned(),
                })?;
            ders.push(CertificateDer::from(der));
        }
        let (leaf, intermediates) = ders
            .split_first()
            .ok_or(TokenError::Malformed(Malformed::X5cLength))?;
        let end_entity =
            EndEntityCert::try_from(leaf).map_err(|e| TokenError::InvalidCertificate {
                index: 0,
                reason: e.to_string(),
            })?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now));
        end_entity
            .verify_for_usage(
                CHAIN_ALGORITHMS,
                &self.inner.roots,
                intermediates,
                time,
                AnyEku,
                None,
                None,
            )
            .map_err(TokenError::UntrustedChain)?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            TokenError::InvalidCertificate {
                index: 0,
                reason: e.to_string(),
            }
        })?;
        key_from_spki(cert.public_key().raw, "x5c leaf").map_err(|e| {
            TokenError::InvalidCertificate {
                index: 0,
                reason: e.to_string(),
            }
        })
    }

    fn check_claims(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        let leeway = self.inner.leeway;
        if claims.iss != self.inner.issuer {
            return Err(TokenError::WrongIssuer {
                found: clip(&claims.iss),
            });
        }
        if !claims.aud.contains(&self.inner.audience) {
            return Err(TokenError::WrongAudience {
                found: claims.aud.0.iter().take(8).map(|a| clip(a)).collect(),
            });
        }
        if now > claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if let Some(nbf) = claims.nbf {
            if now.saturating_add(leeway) < nbf {
                return Err(TokenError::NotYetValid { nbf, now });
            }
        }
        if let Some(iat) = claims.iat {
            if iat > now.saturating_add(leeway) {
                return Err(TokenError::IssuedInFuture { iat, now });
            }
        }
        Ok(())
    }
}
