//! Bearer-token verification.

use serde_json::Value;
use stowage_auth::token::{Claims, TokenError, TokenType, Verifier, DEFAULT_LEEWAY};

use crate::fixture::{self, Signer, ISSUER, NOW, SERVICE};

/// Fuzz target: the input, as it stands, is a bearer token for both fixture verifiers.
///
/// The fuzzer cannot produce an ES256 signature, and every signed token of the seed corpus
/// fails a claim check at [`NOW`], so any `Ok` is a bug (a forged or mis-checked token).
/// Error messages never contain the token.
pub fn token_verify(data: &[u8]) {
    let token = crate::text(data);
    for (name, verifier) in fixture::verifiers() {
        let access = verifier.verify(&token, NOW).map(|_| ());
        // verify and verify_refresh share every check but the token type: only a token
        // refused for its type can get a different answer.
        let wrong_type = matches!(access, Err(TokenError::WrongTokenType { .. }));
        refuse(name, &token, access);
        if wrong_type {
            let refresh = verifier.verify_refresh(&token, NOW);
            refuse(name, &token, refresh.map(|_| ()));
        }
    }
}

fn refuse(verifier: &str, token: &str, result: Result<(), TokenError>) {
    match result {
        Ok(()) => {
            panic!("verifier {verifier} accepted a token the harness never issued: {token:?}")
        }
        Err(e) => {
            // No fixed message has a '.', so a token with one inside a message was echoed
            // (a dot-less token can be spelled with a fixed message's words; libFuzzer did).
            let message = e.to_string();
            assert!(
                token.len() < 16 || !token.contains('.') || !message.contains(token),
                "error message contains the token: {message}"
            );
        }
    }
}

/// Fuzz target: tokens the harness signs itself, so the fuzzer reaches the claim checks.
///
/// Input: `HEADER\nPAYLOAD`, the JOSE header and the claim set as raw bytes (`@KID@`, `@LEAF@`
/// and `@ROOT@` in the header become the service key's kid and the fixture certificates);
/// without a newline, the whole input is the payload under `{"alg":"ES256","kid":@KID@}`.
/// Headers with `x5c` are signed with the leaf key, others with the service key.
///
/// * `Ok` only for an ES256 header naming the service key (or, for the configured
///   verifier, an `x5c` chain) without `crit`/`b64`, with `iss`, `aud`, `exp`, `nbf`, `iat`
///   valid at [`NOW`] and the token type asked for; the claims returned are those signed.
/// * An accepted token with a changed payload or signature is refused.
pub fn token_claims(data: &[u8]) {
    let text = crate::text(data);
    let (header, payload) = match text.split_once('\n') {
        Some((h, p)) => (fixture::expand(h), p),
        None => (
            fixture::expand(r#"{"typ":"JWT","alg":"ES256","kid":"@KID@"}"#),
            text.as_ref(),
        ),
    };
    let signer = if header.contains("x5c") {
        Signer::Leaf
    } else {
        Signer::Service
    };
    let token = fixture::compact(header.as_bytes(), payload.as_bytes(), signer);
    for (name, verifier) in fixture::verifiers() {
        let mut accepted = false;
        match verifier.verify(&token, NOW) {
            Ok(claims) => {
                check_accepted(name, &header, payload, &claims, TokenType::Access);
                accepted = true;
            }
            Err(TokenError::WrongTokenType { .. }) => {
                if let Ok(claims) = verifier.verify_refresh(&token, NOW) {
                    check_accepted(name, &header, payload, &claims, TokenType::Refresh);
                    accepted = true;
                }
            }
            Err(_) => {}
        }
        if accepted {
            check_tampered(name, verifier, &token);
        }
    }
}

fn check_accepted(verifier: &str, header: &str, payload: &str, claims: &Claims, tt: TokenType) {
    let ctx = format!("verifier {verifier} accepted header {header:?} payload {payload:?}");
    let h: Value = serde_json::from_str(header).expect(&ctx);
    assert_eq!(h["alg"], "ES256", "{ctx}");
    assert!(h.get("crit").is_none() && h.get("b64").is_none(), "{ctx}");
    match h.get("x5c") {
        Some(_) => assert_eq!(verifier, "configured", "{ctx}: x5c without roots"),
        None => assert_eq!(h["kid"], fixture::service_kid(), "{ctx}"),
    }

    let leeway = DEFAULT_LEEWAY.as_secs();
    assert_eq!(claims.iss, ISSUER, "{ctx}");
    assert!(claims.aud.contains(SERVICE), "{ctx}");
    assert!(NOW <= claims.exp.saturating_add(leeway), "{ctx}: expired");
    assert!(
        claims.nbf.is_none_or(|nbf| nbf <= NOW + leeway),
        "{ctx}: nbf"
    );
    assert!(
        claims.iat.is_none_or(|iat| iat <= NOW + leeway),
        "{ctx}: iat"
    );
    assert_eq!(claims.token_type(), tt, "{ctx}");

    // The claims are those of the signed payload (a JSON object without duplicate claims,
    // or the verifier would have refused it).
    let p: Value = serde_json::from_str(payload).expect(&ctx);
    assert_eq!(p["iss"], ISSUER, "{ctx}");
    assert_eq!(p["exp"].as_u64(), Some(claims.exp), "{ctx}");
    for (key, value) in [
        ("nbf", claims.nbf),
        ("iat", claims.iat),
        ("gen", claims.gen),
    ] {
        assert_eq!(p.get(key).and_then(Value::as_u64), value, "{ctx}: {key}");
    }
    let aud = match &p["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        other => panic!("{ctx}: aud is {other}"),
    };
    assert_eq!(aud, claims.aud.0, "{ctx}");
    let access = p
        .get("access")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(access, claims.access.len(), "{ctx}");
}

fn check_tampered(verifier_name: &str, verifier: &Verifier, token: &str) {
    let (signed, signature) = token.rsplit_once('.').expect("a compact JWS");
    let (header, payload) = signed.split_once('.').expect("a compact JWS");
    // Another payload (a claim appended) under the same signature.
    let other = format!("{}A", payload);
    let variants = [
        format!("{header}.{other}.{signature}"),
        // The signature with its first character changed.
        format!("{signed}.{}{}", flip(&signature[..1]), &signature[1..]),
        format!("{signed}."),
    ];
    for variant in variants {
        for result in [
            verifier.verify(&variant, NOW).map(|_| ()),
            verifier.verify_refresh(&variant, NOW).map(|_| ()),
        ] {
            assert!(
                result.is_err(),
                "verifier {verifier_name} accepted a tampered token {variant:?}"
            );
        }
    }
}

/// A different base64url character.
fn flip(c: &str) -> &'static str {
    if c == "A" {
        "B"
    } else {
        "A"
    }
}
