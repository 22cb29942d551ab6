//! Key material: libtrust key IDs, trusted public keys, and the ES256 signing key of the
//! built-in token service.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use super::KeyError;

/// Docker's libtrust key ID of a public key: the SHA-256 of its DER SubjectPublicKeyInfo,
/// truncated to 240 bits, base32 (standard alphabet, no padding: 48 characters), written as
/// twelve groups of four characters joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        // base32 output is ASCII, so every 4-byte chunk is valid UTF-8.
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    groups.join(":")
}

/// The type of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256: ES256.
    EcP256,
    /// ECDSA on P-384: ES384.
    EcP384,
    /// RSA: RS256/384/512 and PS256/384/512.
    Rsa,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type can verify signatures made with `alg`.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyType::EcP256, ES256)
                | (KeyType::EcP384, ES384)
                | (KeyType::Ed25519, EdDSA)
                | (KeyType::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
        )
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcP256 => "EC P-256",
            KeyType::EcP384 => "EC P-384",
            KeyType::Rsa => "RSA",
            KeyType::Ed25519 => "Ed25519",
        })
    }
}

/// A trusted public key, ready for `jsonwebtoken`'s verifier.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub(crate) typ: KeyType,
    pub(crate) key: DecodingKey,
    /// The one algorithm the key is restricted to (a JWKS key's `alg`), if any.
    pub(crate) alg: Option<Algorithm>,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("typ", &self.typ)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Builds a trusted key from a DER SubjectPublicKeyInfo (EC P-256/P-384, RSA, Ed25519).
pub(crate) fn key_from_spki(spki_der: &[u8], what: &str) -> Result<TrustedKey, KeyError> {
    let bad = |reason| KeyError::UnsupportedKey {
        what: what.to_owned(),
        reason,
    };
    let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| bad("not a DER SubjectPublicKeyInfo"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the SubjectPublicKeyInfo"));
    }
    let bits: &[u8] = &spki.subject_public_key.data;
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| bad("EC key without a named curve"))?;
        let (typ, len) = if curve == OID_EC_P256 {
            (KeyType::EcP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyType::EcP384, 97)
        } else {
            return Err(bad("EC curve is neither P-256 nor P-384"));
        };
        if bits.len() != len || bits.first() != Some(&0x04) {
            return Err(bad("EC point is not uncompressed or has the wrong length"));
        }
        Ok(TrustedKey {
            typ,
            key: DecodingKey::from_ec_der(bits),
            alg: None,
        })
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok(TrustedKey {
            typ: KeyType::Rsa,
            key: DecodingKey::from_rsa_der(bits),
            alg: None,
        })
    } else if *oid == OID_SIG_ED25519 {
        if bits.len() != 32 {
            return Err(bad("Ed25519 key is not 32 bytes"));
        }
        Ok(TrustedKey {
            typ: KeyType::Ed25519,
            key: DecodingKey::from_ed_der(bits),
            alg: None,
        })
    } else {
        Err(bad("key algorithm is not EC, RSA or Ed25519"))
    }
}

/// Builds a trusted key from one JWKS entry. Symmetric (`oct`) keys, encryption keys and
/// unsupported curves are refused.
pub(crate) fn key_from_jwk(jwk: &Jwk, what: &str) -> Result<TrustedKey, KeyError> {
    let bad = |reason| KeyError::UnsupportedKey {
        what: what.to_owned(),
        reason,
    };
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err(bad("JWK \"use\" is not \"sig\""));
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(
            Algorithm::try_from(ka).map_err(|_| bad("JWK \"alg\" is not a signature algorithm"))?,
        ),
    };
    let invalid = |_| bad("JWK key parameters are not valid base64url");
    let (typ, key) = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let typ = match p.curve {
                EllipticCurve::P256 => KeyType::EcP256,
                EllipticCurve::P384 => KeyType::EcP384,
                _ => return Err(bad("EC JWK curve is neither P-256 nor P-384")),
            };
            (
                typ,
                DecodingKey::from_ec_components(&p.x, &p.y).map_err(invalid)?,
            )
        }
        AlgorithmParameters::RSA(p) => (
            KeyType::Rsa,
            DecodingKey::from_rsa_components(&p.n, &p.e).map_err(invalid)?,
        ),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => (
            KeyType::Ed25519,
            DecodingKey::from_ed_components(&p.x).map_err(invalid)?,
        ),
        AlgorithmParameters::OctetKey(_) => {
            return Err(bad("symmetric (oct) keys are never trusted for tokens"))
        }
        _ => return Err(bad("JWK key type is not EC, RSA or Ed25519")),
    };
    if alg.is_some_and(|a| !typ.verifies(a)) {
        return Err(bad("JWK \"alg\" does not match its key type"));
    }
    Ok(TrustedKey { typ, key, alg })
}

/// Parses a JWKS document into `(kid, key)` pairs.
pub(crate) fn keys_from_jwks(
    json: &[u8],
    what: &str,
) -> Result<Vec<(String, TrustedKey)>, KeyError> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|source| KeyError::Jwks {
        what: what.to_owned(),
        source,
    })?;
    set.keys
        .iter()
        .enumerate()
        .map(|(index, jwk)| {
            let kid = jwk
                .common
                .key_id
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| KeyError::JwksMissingKid {
                    what: what.to_owned(),
                    index,
                })?;
            let key = key_from_jwk(jwk, &format!("{what}, key {kid:?}"))?;
            Ok((kid, key))
        })
        .collect()
}

/// The built-in token service's signing key: ECDSA P-256 (ES256).
pub struct SigningKey {
    encoding: EncodingKey,
    /// Uncompressed public point (0x04 || X || Y).
    point: Vec<u8>,
    spki_der: Vec<u8>,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &"ES256")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

impl SigningKey {
    /// Reads the PEM private key at `path` (PKCS#8, or SEC1 `EC PRIVATE KEY`), or, when the
    /// file does not exist, generates a P-256 key and writes it there as PKCS#8 PEM with
    /// mode 0600, atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
        match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                warn_if_readable_by_others(path);
                SigningKey::from_pem(&bytes, &path.display().to_string())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                key.write_new(path)?;
                tracing::info!(path = %path.display(), kid = %key.kid, "generated a new token signing key");
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Generates a fresh P-256 key (not written anywhere).
    pub fn generate() -> Result<SigningKey, KeyError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| KeyError::Generate)?;
        SigningKey::from_pair(&pair).map_err(|_| KeyError::Generate)
    }

    /// Reads a P-256 private key from PEM (PKCS#8 or SEC1). `what` names the source in errors.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<SigningKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoPem {
                what: what.to_owned(),
                expected: PRIVATE_KEY_LABEL,
            },
            source => KeyError::Pem {
                what: what.to_owned(),
                source,
            },
        })?;
        let invalid = || KeyError::InvalidPrivateKey {
            what: what.to_owned(),
        };
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der())
            }
            PrivateKeyDer::Sec1(k) => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                k.secret_sec1_der(),
            ),
            _ => return Err(invalid()),
        }
        .map_err(|_| invalid())?;
        SigningKey::from_pair(&pair).map_err(|_| invalid())
    }

    fn from_pair(pair: &EcdsaKeyPair) -> Result<SigningKey, aws_lc_rs::error::Unspecified> {
        let pkcs8 = pair.to_pkcs8v1()?;
        let spki_der = pair.public_key().as_der()?.as_ref().to_vec();
        let point = pair.public_key().as_ref().to_vec();
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            point,
            kid: libtrust_key_id(&spki_der),
            spki_der,
        })
    }

    /// The key ID put in the JWT header: the libtrust key ID of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm: always ES256.
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public key as PEM (`PUBLIC KEY`), for other registries to trust.
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub fn public_jwk(&self) -> Jwk {
        // The point is 0x04 || X || Y with X and Y of equal length (32 bytes for P-256).
        let coords = self.point.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(x),
                y: URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    /// A JWKS document (`{"keys":[...]}`) holding the public key.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk()],
        }
    }

    /// The public key as a trusted key, for a verifier of this service's own tokens.
    pub(crate) fn trusted_key(&self) -> TrustedKey {
        TrustedKey {
            typ: KeyType::EcP256,
            key: DecodingKey::from_ec_der(&self.point),
            alg: Some(Algorithm::ES256),
        }
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// Writes the private key to `path` as a new file: temporary sibling, fsync, rename,
    /// fsync of the directory.
    fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |p: &Path| {
            let p = p.to_owned();
            move |source| KeyError::Write { path: p, source }
        };
        let pem = Zeroizing::new(pem_encode(PRIVATE_KEY_LABEL, self.encoding.as_bytes()));
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "key".to_owned());
        let tmp = dir.join(format!(
            ".{file_name}.tmp-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut file = create_private_file(&tmp).map_err(write_err(&tmp))?;
            file.write_all(pem.as_bytes()).map_err(write_err(&tmp))?;
            file.sync_all().map_err(write_err(&tmp))?;
            drop(file);
            fs::rename(&tmp, path).map_err(write_err(path))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err(&dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "token signing key is accessible by group or others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// PEM with LF line endings and 64-character lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
