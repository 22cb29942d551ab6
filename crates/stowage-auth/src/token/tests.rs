#![allow(clippy::unwrap_used)]

//! Token issuing and verification, with real keys, against the attacks a registry token
//! verifier must refuse.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::EncodingKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    PublicKeyData as _,
};
use serde_json::{json, Value};

use super::issue::sign_compact;
use super::*;

const ISS: &str = "stowage-test";
const SVC: &str = "registry.test";
const NOW: u64 = 1_700_000_000;
const TTL: u64 = 300;

fn issuer() -> TokenIssuer {
    TokenIssuer::new(
        Arc::new(SigningKey::generate().unwrap()),
        ISS,
        SVC,
        Duration::from_secs(TTL),
    )
}

fn pull_app() -> Vec<AccessEntry> {
    vec![AccessEntry::new("repository", "team/app", &["pull"])]
}

fn claims_at(now: u64) -> Value {
    json!({
        "iss": ISS, "sub": "alice", "aud": SVC,
        "exp": now + TTL, "nbf": now, "iat": now, "jti": "j",
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    })
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn es256(key: &SigningKey) -> EncodingKey {
    // The test module may reach the crate-private key; a real attacker has their own.
    key.encoding_key().clone()
}

fn forge(header: Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    sign_compact(&header, claims, alg, key).unwrap()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn ec_encoding(kp: &KeyPair) -> EncodingKey {
    EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap()
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

fn leaf_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

#[test]
fn issued_token_verifies_and_yields_its_claims() {
    let iss = issuer();
    let issued = iss.access_token("alice", pull_app(), NOW).unwrap();
    assert_eq!(issued.expires_in, TTL);
    assert_eq!(issued.issued_at, "2023-11-14T22:13:20Z");
    assert!(!format!("{issued:?}").contains(&issued.token));

    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(issued.token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], iss.key().kid());

    let claims = iss.verifier().verify(&issued.token, NOW + 10).unwrap();
    assert_eq!(claims.iss, ISS);
    assert_eq!(claims.sub, "alice");
    assert!(claims.aud.contains(SVC));
    assert_eq!(
        (claims.exp, claims.nbf, claims.iat),
        (NOW + TTL, Some(NOW), Some(NOW))
    );
    assert_eq!(claims.jti.len(), 22);
    assert_eq!(claims.access, pull_app());
    assert_eq!(claims.token_type(), TokenType::Access);

    // jti is random.
    let again = iss.access_token("alice", pull_app(), NOW).unwrap();
    let again = iss.verifier().verify(&again.token, NOW).unwrap();
    assert_ne!(claims.jti, again.jti);
}

#[test]
fn claims_allows_only_what_was_granted() {
    let iss = issuer();
    let token = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    let claims = iss.verifier().verify(&token, NOW).unwrap();
    assert!(claims.allows("repository", "team/app", "pull"));
    assert!(!claims.allows("repository", "team/other", "pull"));
    assert!(!claims.allows("repository", "team/app", "push"));
}

#[test]
fn refresh_tokens_are_not_access_tokens() {
    let iss = issuer();
    let refresh = iss
        .refresh_token("alice", 7, NOW, Duration::from_secs(86_400))
        .unwrap();
    assert_eq!(refresh.expires_in, 86_400);
    let v = iss.verifier();
    let claims = v.verify_refresh(&refresh.token, NOW).unwrap();
    assert_eq!((claims.gen, claims.tt), (Some(7), Some(TokenType::Refresh)));
    assert!(claims.access.is_empty());
    assert!(matches!(
        v.verify(&refresh.token, NOW),
        Err(TokenError::WrongTokenType {
            expected: TokenType::Access,
            found: TokenType::Refresh
        })
    ));
    let access = iss.access_token("alice", pull_app(), NOW).unwrap();
    assert!(matches!(
        v.verify_refresh(&access.token, NOW),
        Err(TokenError::WrongTokenType { .. })
    ));
}

#[test]
fn times_are_checked_with_leeway() {
    let iss = issuer();
    let v = iss.verifier();
    let token = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    // exp + 60 s leeway is still fine; one second later it is not.
    assert!(v.verify(&token, NOW + TTL + 60).is_ok());
    assert!(matches!(
        v.verify(&token, NOW + TTL + 61),
        Err(TokenError::Expired { exp, now }) if exp == NOW + TTL && now == NOW + TTL + 61
    ));
    // Issued for a time 1000 s from now.
    let future = iss
        .access_token("alice", pull_app(), NOW + 1000)
        .unwrap()
        .token;
    assert!(matches!(
        v.verify(&future, NOW),
        Err(TokenError::NotYetValid { nbf, .. }) if nbf == NOW + 1000
    ));
    assert!(v.verify(&future, NOW + 1000 - 60).is_ok());
    // iat in the future beyond the leeway (no nbf).
    let claims = Claims {
        iss: ISS.into(),
        sub: "alice".into(),
        aud: Audience::single(SVC),
        exp: NOW + TTL,
        nbf: None,
        iat: Some(NOW + 500),
        jti: "j".into(),
        access: pull_app(),
        gen: None,
        tt: None,
    };
    let t = iss.issue(&claims).unwrap();
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::IssuedInFuture { iat, .. }) if iat == NOW + 500
    ));
}

#[test]
fn wrong_audience_and_issuer_are_refused() {
    let iss = issuer();
    let token = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    let other_service = Verifier::builder(ISS, "other.registry")
        .signing_key(iss.key())
        .unwrap()
        .build()
        .unwrap();
    assert!(matches!(
        other_service.verify(&token, NOW),
        Err(TokenError::WrongAudience { found }) if found == vec![SVC.to_owned()]
    ));
    let other_issuer = Verifier::builder("someone-else", SVC)
        .signing_key(iss.key())
        .unwrap()
        .build()
        .unwrap();
    assert!(matches!(
        other_issuer.verify(&token, NOW),
        Err(TokenError::WrongIssuer { found }) if found == ISS
    ));
    // aud as an array containing the service is accepted; without it, refused.
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": iss.key().kid()});
    let mut c = claims_at(NOW);
    c["aud"] = json!(["x", SVC]);
    let t = forge(header.clone(), &c, Algorithm::ES256, &es256(iss.key()));
    assert!(iss.verifier().verify(&t, NOW).is_ok());
    c["aud"] = json!(["x", "y"]);
    let t = forge(header.clone(), &c, Algorithm::ES256, &es256(iss.key()));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::WrongAudience { .. })
    ));
    c.as_object_mut().unwrap().remove("aud");
    let t = forge(header.clone(), &c, Algorithm::ES256, &es256(iss.key()));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::WrongAudience { .. })
    ));
    c = claims_at(NOW);
    c.as_object_mut().unwrap().remove("exp");
    let t = forge(header, &c, Algorithm::ES256, &es256(iss.key()));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::MissingClaim("exp"))
    ));
}

#[test]
fn alg_none_is_refused() {
    let iss = issuer();
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "typ": "JWT", "kid": iss.key().kid()}),
        json!({"alg": "None", "kid": iss.key().kid()}),
    ] {
        let token = format!("{}.{}.", b64(&header), b64(&claims_at(NOW)));
        assert!(
            matches!(
                iss.verifier().verify(&token, NOW),
                Err(TokenError::AlgorithmNotAllowed { .. })
            ),
            "{header}"
        );
    }
    // Even with an allowed alg, an empty signature is refused.
    let header = json!({"alg": "ES256", "kid": iss.key().kid()});
    let token = format!("{}.{}.", b64(&header), b64(&claims_at(NOW)));
    assert!(matches!(
        iss.verifier().verify(&token, NOW),
        Err(TokenError::Malformed(Malformed::Signature))
    ));
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let iss = issuer();
    let pem = iss.key().public_key_pem();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": iss.key().kid()});
    let token = forge(
        header,
        &claims_at(NOW),
        Algorithm::HS256,
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    );
    assert!(matches!(
        iss.verifier().verify(&token, NOW),
        Err(TokenError::AlgorithmNotAllowed { alg }) if alg == "HS256"
    ));
    // Same through a verifier built from the public key PEM.
    let v = Verifier::builder(ISS, SVC)
        .public_key_pem(pem.as_bytes(), None, "test")
        .unwrap()
        .build()
        .unwrap();
    let token = forge(
        json!({"alg": "HS256", "kid": iss.key().kid()}),
        &claims_at(NOW),
        Algorithm::HS256,
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    );
    assert!(matches!(
        v.verify(&token, NOW),
        Err(TokenError::AlgorithmNotAllowed { .. })
    ));
    // And no verifier can be configured to accept HMAC at all.
    let err = Verifier::builder(ISS, SVC)
        .algorithms(&[Algorithm::ES256, Algorithm::HS256])
        .public_key_pem(pem.as_bytes(), None, "test")
        .unwrap()
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        KeyError::ForbiddenAlgorithm(Algorithm::HS256)
    ));
}

#[test]
fn embedded_jwk_is_never_trusted() {
    let iss = issuer();
    let attacker = SigningKey::generate().unwrap();
    let mut evil_jwk = serde_json::to_value(attacker.public_jwk()).unwrap();
    // The attacker even claims the trusted key's id inside the JWK.
    evil_jwk["kid"] = json!(iss.key().kid());
    let mut c = claims_at(NOW);
    c["access"] = json!([{"type": "repository", "name": "team/app", "actions": ["*"]}]);

    // Trusted kid + attacker's jwk + attacker's signature: the configured key is used, so
    // the attacker's signature fails.
    let header = json!({"alg": "ES256", "kid": iss.key().kid(), "jwk": evil_jwk});
    let t = forge(header, &c, Algorithm::ES256, &es256(&attacker));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::BadSignature)
    ));

    // Only an embedded jwk.
    let header = json!({"alg": "ES256", "jwk": evil_jwk});
    let t = forge(header, &c, Algorithm::ES256, &es256(&attacker));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::EmbeddedKeyNotTrusted)
    ));

    // An unknown kid is refused even with a jwk alongside.
    let header = json!({"alg": "ES256", "kid": attacker.kid(), "jwk": evil_jwk});
    let t = forge(header, &c, Algorithm::ES256, &es256(&attacker));
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::UnknownKey { kid }) if kid == attacker.kid()
    ));

    // No key reference at all.
    let t = forge(
        json!({"alg": "ES256"}),
        &c,
        Algorithm::ES256,
        &es256(&attacker),
    );
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::MissingKeyId)
    ));
}

#[test]
fn a_signature_over_other_claims_is_refused() {
    let iss = issuer();
    let token = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut more = claims_at(NOW);
    more["access"] =
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push", "delete"]}]);
    let forged_payload = b64(&more);
    parts[1] = &forged_payload;
    let forged = parts.join(".");
    assert!(matches!(
        iss.verifier().verify(&forged, NOW),
        Err(TokenError::BadSignature)
    ));
    // A flipped signature byte also fails.
    let mut sig = URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap())
        .unwrap();
    sig[5] ^= 1;
    let flipped = format!(
        "{}.{}",
        token.rsplit_once('.').unwrap().0,
        URL_SAFE_NO_PAD.encode(&sig)
    );
    assert!(matches!(
        iss.verifier().verify(&flipped, NOW),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn malformed_tokens_are_refused_without_echoing_them() {
    let iss = issuer();
    let v = iss.verifier();
    let good = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    let (h, rest) = good.split_once('.').unwrap();
    let crit = json!({"alg": "ES256", "kid": iss.key().kid(), "crit": ["exp"], "exp": 1});
    let cases: Vec<(String, Malformed)> = vec![
        ("abc".into(), Malformed::Structure),
        ("a.b".into(), Malformed::Structure),
        (format!("{good}.extra"), Malformed::Structure),
        (format!("!!!.{rest}"), Malformed::Header),
        (
            format!("{}.{rest}", URL_SAFE_NO_PAD.encode("not json")),
            Malformed::Header,
        ),
        (format!("{h}=.{rest}"), Malformed::Header),
        (format!("{}.{rest}", b64(&crit)), Malformed::CriticalHeader),
    ];
    for (token, want) in cases {
        match v.verify(&token, NOW) {
            Err(e @ TokenError::Malformed(m)) => {
                assert_eq!(m, want, "{token}");
                assert!(!e.to_string().contains(&token));
            }
            other => panic!("{token}: {other:?}"),
        }
    }
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        v.verify(&long, NOW),
        Err(TokenError::TooLong { .. })
    ));
    // Duplicate header fields are refused (no parser differential on "kid" or "alg").
    let dup = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"ES256","kid":"{}","kid":"other"}}"#,
            iss.key().kid()
        ))
    );
    assert!(matches!(
        v.verify(&dup, NOW),
        Err(TokenError::Malformed(Malformed::Header))
    ));
}

#[test]
fn x5c_chain_to_a_bundle_root_is_accepted_and_others_refused() {
    let root_key = p256();
    let root_params = ca_params("Stowage Test Root");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);

    let inter_key = p256();
    let inter_params = ca_params("Stowage Test Intermediate");
    let inter_cert = inter_params.signed_by(&inter_key, &root).unwrap();
    let inter = Issuer::new(inter_params, inter_key);

    let leaf_key = p256();
    let leaf_cert = leaf_params("token signer")
        .signed_by(&leaf_key, &inter)
        .unwrap();

    let v = Verifier::builder(ISS, SVC)
        .root_bundle_pem(root_cert.pem().as_bytes(), "test bundle")
        .unwrap()
        .build()
        .unwrap();

    let x5c = json!([
        STANDARD.encode(leaf_cert.der()),
        STANDARD.encode(inter_cert.der())
    ]);
    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": x5c});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&leaf_key),
    );
    let claims = v.verify(&t, NOW).unwrap();
    assert_eq!(claims.sub, "alice");

    // Signed by another key than the leaf's: the chain is fine, the signature is not.
    let header = json!({"alg": "ES256", "x5c": x5c});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&p256()),
    );
    assert!(matches!(v.verify(&t, NOW), Err(TokenError::BadSignature)));

    // A chain to a root that is not in the bundle.
    let rogue_key = p256();
    let rogue_params = ca_params("Stowage Test Root");
    let rogue = Issuer::new(rogue_params, rogue_key);
    let evil_leaf_key = p256();
    let evil_leaf = leaf_params("token signer")
        .signed_by(&evil_leaf_key, &rogue)
        .unwrap();
    let header = json!({"alg": "ES256", "x5c": [STANDARD.encode(evil_leaf.der())]});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&evil_leaf_key),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::UntrustedChain(_))
    ));

    // The leaf alone (intermediate missing) does not chain either.
    let header = json!({"alg": "ES256", "x5c": [STANDARD.encode(leaf_cert.der())]});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&leaf_key),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::UntrustedChain(_))
    ));

    // x5c must be standard base64 DER certificates.
    let header = json!({"alg": "ES256", "x5c": ["***"]});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&leaf_key),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::InvalidCertificate { index: 0, .. })
    ));
    let header = json!({"alg": "ES256", "x5c": []});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&leaf_key),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::Malformed(Malformed::X5cLength))
    ));
}

#[test]
fn root_bundle_key_is_trusted_under_its_libtrust_kid() {
    let root_key = p256();
    let root_cert = ca_params("Token Root").self_signed(&root_key).unwrap();
    let kid = libtrust_key_id(&root_key.subject_public_key_info());
    let v = Verifier::builder(ISS, SVC)
        .root_bundle_pem(root_cert.pem().as_bytes(), "bundle")
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(v.key_ids(), vec![kid.as_str()]);
    // The same root twice in a bundle is tolerated.
    let twice = format!("{}{}", root_cert.pem(), root_cert.pem());
    let v2 = Verifier::builder(ISS, SVC)
        .root_bundle_pem(twice.as_bytes(), "bundle")
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(v2.key_ids(), vec![kid.as_str()]);
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let t = forge(
        header,
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&root_key),
    );
    assert_eq!(v.verify(&t, NOW).unwrap().sub, "alice");
}

#[test]
fn jwks_keys_are_trusted_by_kid() {
    let external = issuer();
    let jwks = serde_json::to_vec(&external.key().jwks()).unwrap();
    let v = Verifier::builder(ISS, SVC)
        .jwks_json(&jwks, "jwks")
        .unwrap()
        .build()
        .unwrap();
    let token = external.access_token("bob", pull_app(), NOW).unwrap().token;
    assert_eq!(v.verify(&token, NOW).unwrap().sub, "bob");

    // A symmetric key in a JWKS is refused at configuration time.
    let oct = br#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
    assert!(matches!(
        Verifier::builder(ISS, SVC).jwks_json(oct, "jwks"),
        Err(KeyError::UnsupportedKey { .. })
    ));
    let no_kid = serde_json::to_value(external.key().jwks()).unwrap();
    let mut no_kid = no_kid;
    no_kid["keys"][0].as_object_mut().unwrap().remove("kid");
    assert!(matches!(
        Verifier::builder(ISS, SVC).jwks_json(&serde_json::to_vec(&no_kid).unwrap(), "jwks"),
        Err(KeyError::JwksMissingKid { index: 0, .. })
    ));
}

#[test]
fn key_type_must_match_the_algorithm_family() {
    // An Ed25519 key published in a JWKS under kid "ed".
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let spki = ed.subject_public_key_info();
    let x = URL_SAFE_NO_PAD.encode(&spki[spki.len() - 32..]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"}]});
    let v = Verifier::builder(ISS, SVC)
        .jwks_json(&serde_json::to_vec(&jwks).unwrap(), "jwks")
        .unwrap()
        .build()
        .unwrap();
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let t = forge(
        json!({"alg": "EdDSA", "kid": "ed"}),
        &claims_at(NOW),
        Algorithm::EdDSA,
        &ed_key,
    );
    assert!(v.verify(&t, NOW).is_ok());
    // An ES256 token naming the Ed25519 key.
    let t = forge(
        json!({"alg": "ES256", "kid": "ed"}),
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&p256()),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::KeyMismatch {
            alg: Algorithm::ES256,
            key: KeyType::Ed25519
        })
    ));
}

#[test]
fn curve_must_match_the_algorithm() {
    // A P-256 key named by an ES384 token (both ES384 and ES256 allowed): refused as a
    // mismatch before any signature check.
    let key = SigningKey::generate().unwrap();
    let v = Verifier::builder(ISS, SVC)
        .public_key_pem(key.public_key_pem().as_bytes(), None, "pem")
        .unwrap()
        .build()
        .unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let t = forge(
        json!({"alg": "ES384", "kid": key.kid()}),
        &claims_at(NOW),
        Algorithm::ES384,
        &ec_encoding(&p384),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::KeyMismatch {
            alg: Algorithm::ES384,
            key: KeyType::EcP256
        })
    ));
}

#[test]
fn rsa_public_key_pem_verifies_rs256_and_refuses_an_ec_alg() {
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let v = Verifier::builder(ISS, SVC)
        .public_key_pem(rsa.public_key_pem().as_bytes(), Some("rsa-1"), "rsa")
        .unwrap()
        .build()
        .unwrap();
    let rsa_key = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap();
    let t = forge(
        json!({"alg": "RS256", "kid": "rsa-1"}),
        &claims_at(NOW),
        Algorithm::RS256,
        &rsa_key,
    );
    assert!(v.verify(&t, NOW).is_ok());
    let t = forge(
        json!({"alg": "PS256", "kid": "rsa-1"}),
        &claims_at(NOW),
        Algorithm::PS256,
        &rsa_key,
    );
    assert!(v.verify(&t, NOW).is_ok());
    let t = forge(
        json!({"alg": "ES256", "kid": "rsa-1"}),
        &claims_at(NOW),
        Algorithm::ES256,
        &ec_encoding(&p256()),
    );
    assert!(matches!(
        v.verify(&t, NOW),
        Err(TokenError::KeyMismatch {
            key: KeyType::Rsa,
            ..
        })
    ));
    // The service's own verifier accepts ES256 only.
    let iss = issuer();
    let t = forge(
        json!({"alg": "RS256", "kid": iss.key().kid()}),
        &claims_at(NOW),
        Algorithm::RS256,
        &rsa_key,
    );
    assert!(matches!(
        iss.verifier().verify(&t, NOW),
        Err(TokenError::AlgorithmNotAllowed { .. })
    ));
}

#[test]
fn libtrust_key_id_matches_the_reference_definition() {
    // Vector computed independently (Python: base32 of SHA-256(SPKI)[:30], grouped by 4)
    // for this P-256 public key.
    let pem = b"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcrgRtyjI1dFJwrIZVQf5P6ezUF6y
4zmMdSkn7gigTKkZOH/10RGHiNNwwMiscCTV777ls2X48U/PjuZsgJFYAA==
-----END PUBLIC KEY-----
";
    use rustls_pki_types::pem::PemObject;
    let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem).unwrap();
    let kid = libtrust_key_id(spki.as_ref());
    assert_eq!(
        kid,
        "SZU5:4B34:3TSE:F46V:H6GD:233B:ANFP:GQ5K:HMMS:ZBUA:EUXV:KMDV"
    );
    // A verifier given the PEM without a kid trusts it under the same id.
    let v = Verifier::builder(ISS, SVC)
        .public_key_pem(pem, None, "pem")
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(v.key_ids(), vec![kid.as_str()]);

    // Format and determinism for generated keys.
    let key = SigningKey::generate().unwrap();
    let kid = key.kid();
    assert_eq!(kid.len(), 59);
    let groups: Vec<&str> = kid.split(':').collect();
    assert_eq!(groups.len(), 12);
    assert!(groups.iter().all(|g| g.len() == 4
        && g.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))));
    assert_eq!(kid, libtrust_key_id(key.public_key_der()));
}

#[test]
fn signing_key_is_generated_once_with_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/token.pem");
    let first = SigningKey::load_or_generate(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let second = SigningKey::load_or_generate(&path).unwrap();
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.public_key_pem(), second.public_key_pem());

    // Tokens from one verify with the other.
    let a = TokenIssuer::new(Arc::new(first), ISS, SVC, Duration::from_secs(TTL));
    let b = TokenIssuer::new(Arc::new(second), ISS, SVC, Duration::from_secs(TTL));
    let token = a.access_token("alice", pull_app(), NOW).unwrap().token;
    assert!(b.verifier().verify(&token, NOW).is_ok());

    // Debug shows the kid, never key material.
    let debug = format!("{:?}", a.key());
    assert!(debug.contains(a.key().kid()));
    assert!(!debug.contains("PRIVATE"));

    // Garbage is an error that names the file.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let err = SigningKey::load_or_generate(&bad).unwrap_err();
    assert!(err.to_string().contains("bad.pem"), "{err}");
}

#[test]
fn sec1_and_foreign_private_keys() {
    // A SEC1 ("EC PRIVATE KEY", as `openssl ecparam -genkey` writes) P-256 key loads.
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let sec1: EcPrivateKeyRfc5915Der<'_> = pair.private_key().as_der().unwrap();
    let pem = super::keys::pem_encode("EC PRIVATE KEY", sec1.as_ref());
    let key = SigningKey::from_pem(pem.as_bytes(), "sec1").unwrap();
    use aws_lc_rs::signature::KeyPair as _;
    assert_eq!(
        key.public_key_der(),
        AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(pair.public_key())
            .unwrap()
            .as_ref()
    );
    // A PKCS#8 P-256 key from another tool loads; its public key matches.
    let kp = p256();
    let key = SigningKey::from_pem(kp.serialize_pem().as_bytes(), "rcgen").unwrap();
    assert_eq!(
        key.public_key_der(),
        kp.subject_public_key_info().as_slice()
    );
    // A P-384 key is refused.
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert!(matches!(
        SigningKey::from_pem(p384.serialize_pem().as_bytes(), "p384"),
        Err(KeyError::InvalidPrivateKey { .. })
    ));
}

#[test]
fn verifier_configuration_errors() {
    assert!(matches!(
        Verifier::builder(ISS, SVC).build(),
        Err(KeyError::NoKeys)
    ));
    let key = SigningKey::generate().unwrap();
    assert!(matches!(
        Verifier::builder(ISS, SVC)
            .signing_key(&key)
            .unwrap()
            .algorithms(&[])
            .build(),
        Err(KeyError::NoAlgorithms)
    ));
    assert!(matches!(
        Verifier::builder(ISS, SVC)
            .signing_key(&key)
            .unwrap()
            .public_key_pem(key.public_key_pem().as_bytes(), None, "again"),
        Err(KeyError::DuplicateKeyId { .. })
    ));
    assert!(matches!(
        Verifier::builder(ISS, SVC).root_bundle_pem(b"nothing here", "empty"),
        Err(KeyError::NoPem { .. })
    ));
    let v = Verifier::builder(ISS, SVC)
        .signing_key(&key)
        .unwrap()
        .build()
        .unwrap();
    let debug = format!("{v:?}");
    assert!(debug.contains(key.kid()) && debug.contains(ISS));
}

#[test]
fn a_remembered_token_is_still_checked_on_every_use() {
    let iss = issuer();
    let v = iss.verifier();
    let token = iss.access_token("alice", pull_app(), NOW).unwrap().token;
    // Verified once (and remembered), then again from memory.
    assert_eq!(v.verify(&token, NOW).unwrap().sub, "alice");
    assert_eq!(v.verify(&token, NOW + 10).unwrap().sub, "alice");
    // Another signature over the same header and claims is not the remembered token.
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[5] ^= 1;
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert!(matches!(
        v.verify(&tampered, NOW),
        Err(TokenError::BadSignature)
    ));
    // Its times are checked on each use: expired is expired, remembered or not.
    assert!(matches!(
        v.verify(&token, NOW + TTL + 61),
        Err(TokenError::Expired { .. })
    ));
    // A refresh token verified (and remembered) as one is still no access token.
    let refresh = iss
        .refresh_token("alice", 7, NOW, Duration::from_secs(3600))
        .unwrap()
        .token;
    assert!(v.verify_refresh(&refresh, NOW).is_ok());
    assert!(matches!(
        v.verify(&refresh, NOW),
        Err(TokenError::WrongTokenType { .. })
    ));
    // A verifier of another issuer (its own memory) refuses it.
    let other = issuer().verifier();
    assert!(other.verify(&token, NOW).is_err());
}
