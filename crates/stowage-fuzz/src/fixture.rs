//! The fixture token service of the token targets: fixed keys (in `keys/`, public on
//! purpose), the verifiers under test, and signing of arbitrary header and payload bytes.
//!
//! The keys are fixed rather than generated so that the seed corpus can hold tokens these
//! verifiers get past the signature check with (all of them fail a claim check at [`NOW`]),
//! and so that a crash found today reproduces tomorrow.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use stowage_auth::token::{SigningKey, TokenIssuer, Verifier};

/// The time every token is verified at (2033-05-18), inside the certificates' validity.
pub const NOW: u64 = 2_000_000_000;
/// The fixture issuer (`iss`).
pub const ISSUER: &str = "stowage-fuzz-issuer";
/// The fixture service (`aud`).
pub const SERVICE: &str = "registry.fuzz.test";

const SERVICE_KEY: &str = include_str!("../keys/service.key");
const LEAF_KEY: &str = include_str!("../keys/leaf.key");
const LEAF_CERT: &str = include_str!("../keys/leaf.pem");
const ROOT_CERT: &str = include_str!("../keys/root.pem");

/// Which fixture key signs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The token service's key, trusted by its `kid`.
    Service,
    /// The end-entity key of `leaf.pem`, trusted through an `x5c` chain to `root.pem`.
    Leaf,
}

struct Fixture {
    service: Arc<SigningKey>,
    service_pair: EcdsaKeyPair,
    leaf_pair: EcdsaKeyPair,
    verifiers: Vec<(&'static str, Verifier)>,
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text)
        .expect("fixture PEM parses")
        .into_contents()
}

fn pair(pem_text: &str) -> EcdsaKeyPair {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der(pem_text))
        .expect("fixture key is a P-256 PKCS#8 key")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let service = Arc::new(
            SigningKey::from_pem(SERVICE_KEY.as_bytes(), "fixture service key")
                .expect("fixture service key loads"),
        );
        let issuer = TokenIssuer::new(
            Arc::clone(&service),
            ISSUER,
            SERVICE,
            Duration::from_secs(300),
        );
        // The built-in service's own verifier (ES256, its key only) and an external-issuer
        // verifier as an operator configures one (every default algorithm, the service key
        // by its libtrust kid, and a root bundle for x5c chains).
        let configured = Verifier::builder(ISSUER, SERVICE)
            .public_key_pem(
                service.public_key_pem().as_bytes(),
                None,
                "fixture public key",
            )
            .and_then(|b| b.root_bundle_pem(ROOT_CERT.as_bytes(), "fixture root"))
            .and_then(|b| b.build())
            .expect("fixture verifier builds");
        Fixture {
            service_pair: pair(SERVICE_KEY),
            leaf_pair: pair(LEAF_KEY),
            verifiers: vec![("own", issuer.verifier()), ("configured", configured)],
            service,
        }
    })
}

/// The verifiers under test, by name: `own` trusts the service key for ES256 only (no
/// roots); `configured` trusts the service key, the root's key and `x5c` chains to the root.
pub fn verifiers() -> &'static [(&'static str, Verifier)] {
    &fixture().verifiers
}

/// The service key's `kid` (its libtrust key ID).
pub fn service_kid() -> &'static str {
    fixture().service.kid()
}

/// Standard base64 of the leaf certificate's DER, as an `x5c` entry.
pub fn leaf_x5c() -> String {
    STANDARD.encode(der(LEAF_CERT))
}

/// Standard base64 of the root certificate's DER, as an `x5c` entry.
pub fn root_x5c() -> String {
    STANDARD.encode(der(ROOT_CERT))
}

/// An ES256 signature (`r || s`, 64 bytes) of `message`.
pub fn sign(signer: Signer, message: &[u8]) -> Vec<u8> {
    let f = fixture();
    let pair = match signer {
        Signer::Service => &f.service_pair,
        Signer::Leaf => &f.leaf_pair,
    };
    pair.sign(&SystemRandom::new(), message)
        .expect("ECDSA signing succeeds")
        .as_ref()
        .to_vec()
}

/// A compact JWS of exactly these header and payload bytes, signed with ES256.
pub fn compact(header: &[u8], payload: &[u8], signer: Signer) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = sign(signer, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Replaces the placeholders `@KID@`, `@LEAF@` and `@ROOT@` of a header template.
pub fn expand(header: &str) -> String {
    let mut out = header.replace("@KID@", service_kid());
    if out.contains("@LEAF@") {
        out = out.replace("@LEAF@", &leaf_x5c());
    }
    if out.contains("@ROOT@") {
        out = out.replace("@ROOT@", &root_x5c());
    }
    out
}
