//! The seed corpora of the token targets, which need the fixture keys to write.
//!
//! `write_token_seeds` (ignored) regenerates them:
//! `cargo test -p stowage-fuzz --test token_seeds -- --ignored`. The other test checks, on
//! every run, that the signed seeds of `token_verify` still get past the signature check, so
//! they keep the fuzzer's starting points deep in the verifier.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use stowage_auth::token::TokenError;
use stowage_fuzz::fixture::{self, Signer, ISSUER, NOW, SERVICE};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Claim sets, each refused at `NOW` for the reason in its name.
fn refused_payloads() -> Vec<(&'static str, String)> {
    let (iss, aud) = (ISSUER, SERVICE);
    let access = r#"[{"type":"repository","name":"team/app","actions":["pull","push"]}]"#;
    let past = NOW - 3600;
    let future = NOW + 3600;
    vec![
        (
            "expired",
            format!(
                r#"{{"iss":"{iss}","aud":"{aud}","exp":{past},"nbf":{},"iat":{},"access":{access}}}"#,
                past - 300,
                past - 300
            ),
        ),
        (
            "not-yet-valid",
            format!(
                r#"{{"iss":"{iss}","aud":"{aud}","exp":{},"nbf":{future},"access":{access}}}"#,
                future + 300
            ),
        ),
        (
            "issued-in-future",
            format!(
                r#"{{"iss":"{iss}","aud":["other","{aud}"],"exp":{},"iat":{future}}}"#,
                future + 300
            ),
        ),
        (
            "wrong-issuer",
            format!(r#"{{"iss":"someone-else","aud":"{aud}","exp":{future},"access":null}}"#),
        ),
        (
            "wrong-audience",
            format!(r#"{{"iss":"{iss}","aud":["a","b"],"exp":{future},"sub":"alice","jti":"x"}}"#),
        ),
        (
            "no-audience",
            format!(r#"{{"iss":"{iss}","exp":{future}}}"#),
        ),
        ("no-exp", format!(r#"{{"iss":"{iss}","aud":"{aud}"}}"#)),
        ("no-iss", format!(r#"{{"aud":"{aud}","exp":{future}}}"#)),
        (
            "refresh-expired",
            format!(
                r#"{{"iss":"{iss}","aud":"{aud}","exp":{past},"tt":"refresh","gen":3,"sub":"alice"}}"#
            ),
        ),
    ]
}

/// Claim sets for `token_claims`: valid ones (accepted, so the properties run), and broken
/// ones.
fn claims_payloads() -> Vec<(&'static str, String)> {
    let (iss, aud) = (ISSUER, SERVICE);
    let exp = NOW + 300;
    let mut out = refused_payloads();
    out.extend([
        ("valid", format!(r#"{{"iss":"{iss}","sub":"alice","aud":"{aud}","exp":{exp},"nbf":{NOW},"iat":{NOW},"jti":"abc","access":[{{"type":"repository","name":"team/app","actions":["pull","push"]}},{{"type":"registry","name":"catalog","actions":["*"]}}]}}"#)),
        ("valid-refresh", format!(r#"{{"iss":"{iss}","sub":"alice","aud":["{aud}"],"exp":{exp},"tt":"refresh","gen":7}}"#)),
        ("valid-access-tt", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":{exp},"tt":"access","unknown":{{"x":[1,2.5]}}}}"#)),
        ("leeway-edge", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":{},"nbf":{},"iat":{}}}"#, NOW - 60, NOW + 60, NOW + 60)),
        ("exp-max", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":18446744073709551615,"nbf":0}}"#)),
        ("exp-string", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":"{exp}"}}"#)),
        ("exp-float", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":{exp}.5}}"#)),
        ("exp-negative", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":-1}}"#)),
        ("duplicate-iss", format!(r#"{{"iss":"{iss}","iss":"x","aud":"{aud}","exp":{exp}}}"#)),
        ("tt-bogus", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":{exp},"tt":"bogus"}}"#)),
        ("access-bad", format!(r#"{{"iss":"{iss}","aud":"{aud}","exp":{exp},"access":[{{"type":"repository"}}]}}"#)),
        ("aud-number", format!(r#"{{"iss":"{iss}","aud":5,"exp":{exp}}}"#)),
        ("not-object", "[1,2,3]".to_owned()),
        ("not-json", "\u{0}\u{1}not json".to_owned()),
    ]);
    out
}

/// Headers for `token_claims` (`@KID@`, `@LEAF@`, `@ROOT@` expanded by the harness).
fn claims_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("kid", r#"{"typ":"JWT","alg":"ES256","kid":"@KID@"}"#),
        ("x5c-chain", r#"{"alg":"ES256","x5c":["@LEAF@","@ROOT@"]}"#),
        ("x5c-leaf", r#"{"alg":"ES256","x5c":["@LEAF@"]}"#),
        ("x5c-root-only", r#"{"alg":"ES256","x5c":["@ROOT@"]}"#),
        ("es384", r#"{"alg":"ES384","kid":"@KID@"}"#),
        ("rs256", r#"{"alg":"RS256","kid":"@KID@"}"#),
        ("hs256", r#"{"alg":"HS256","kid":"@KID@"}"#),
        ("none", r#"{"alg":"none","kid":"@KID@"}"#),
        ("crit", r#"{"alg":"ES256","kid":"@KID@","crit":["exp"]}"#),
        ("b64", r#"{"alg":"ES256","kid":"@KID@","b64":false}"#),
        (
            "jwk-and-kid",
            r#"{"alg":"ES256","kid":"@KID@","jwk":{"kty":"EC"}}"#,
        ),
        (
            "jwk-only",
            r#"{"alg":"ES256","jwk":{"kty":"EC","crv":"P-256"}}"#,
        ),
        ("unknown-kid", r#"{"alg":"ES256","kid":"AAAA:BBBB"}"#),
        (
            "duplicate-alg",
            r#"{"alg":"ES256","alg":"none","kid":"@KID@"}"#,
        ),
        ("x5c-empty", r#"{"alg":"ES256","x5c":[]}"#),
        ("x5c-garbage", r#"{"alg":"ES256","x5c":["!!!","AAAA"]}"#),
    ]
}

/// Unsigned or badly signed strings for `token_verify`.
fn broken_tokens() -> Vec<(&'static str, String)> {
    let kid = fixture::service_kid();
    let payload = b64(&format!(
        r#"{{"iss":"{ISSUER}","aud":"{SERVICE}","exp":{}}}"#,
        NOW + 300
    ));
    let h = |header: &str| format!("{}.{payload}", b64(header));
    let sig = URL_SAFE_NO_PAD.encode([7u8; 64]);
    let x5c = format!(r#"{{"alg":"ES256","x5c":["{}"]}}"#, fixture::leaf_x5c());
    let nine = format!(r#"{{"alg":"ES256","x5c":[{}]}}"#, ["\"AAAA\""; 9].join(","));
    vec![
        ("empty", String::new()),
        ("one-part", "abc".to_owned()),
        ("two-parts", "abc.def".to_owned()),
        ("four-parts", "a.b.c.d".to_owned()),
        ("dots", "..".to_owned()),
        ("header-not-b64", format!("!!.{payload}.{sig}")),
        (
            "header-not-json",
            format!("{}.{payload}.{sig}", b64("not json")),
        ),
        (
            "alg-none",
            format!("{}.", h(&format!(r#"{{"alg":"none","kid":"{kid}"}}"#))),
        ),
        (
            "alg-hs256",
            format!(
                "{}.{sig}",
                h(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#))
            ),
        ),
        (
            "alg-rs256",
            format!(
                "{}.{sig}",
                h(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#))
            ),
        ),
        ("no-kid", format!("{}.{sig}", h(r#"{"alg":"ES256"}"#))),
        (
            "jwk-only",
            format!("{}.{sig}", h(r#"{"alg":"ES256","jwk":{"kty":"EC"}}"#)),
        ),
        (
            "unknown-kid",
            format!("{}.{sig}", h(r#"{"alg":"ES256","kid":"nope"}"#)),
        ),
        (
            "crit",
            format!(
                "{}.{sig}",
                h(&format!(r#"{{"alg":"ES256","kid":"{kid}","crit":[]}}"#))
            ),
        ),
        (
            "bad-signature",
            format!(
                "{}.{sig}",
                h(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#))
            ),
        ),
        (
            "short-signature",
            format!("{}.AAAA", h(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#))),
        ),
        (
            "empty-signature",
            format!("{}.", h(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#))),
        ),
        (
            "signature-not-b64",
            format!("{}.$$$", h(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#))),
        ),
        ("x5c-bad-signature", format!("{}.{sig}", h(&x5c))),
        ("x5c-nine", format!("{}.{sig}", h(&nine))),
        (
            "x5c-not-b64",
            format!("{}.{sig}", h(r#"{"alg":"ES256","x5c":["%%%"]}"#)),
        ),
    ]
}

#[test]
#[ignore = "writes the token seed corpora; run by hand after changing the fixture"]
fn write_token_seeds() {
    let verify = corpus("token_verify");
    fs::create_dir_all(&verify).unwrap();
    for (name, token) in broken_tokens() {
        fs::write(verify.join(format!("broken-{name}.jwt")), token).unwrap();
    }
    let kid = fixture::service_kid();
    let chain = format!(
        r#"{{"alg":"ES256","x5c":["{}","{}"]}}"#,
        fixture::leaf_x5c(),
        fixture::root_x5c()
    );
    for (name, payload) in refused_payloads() {
        let header = format!(r#"{{"typ":"JWT","alg":"ES256","kid":"{kid}"}}"#);
        let token = fixture::compact(header.as_bytes(), payload.as_bytes(), Signer::Service);
        fs::write(verify.join(format!("signed-kid-{name}.jwt")), token).unwrap();
        let token = fixture::compact(chain.as_bytes(), payload.as_bytes(), Signer::Leaf);
        fs::write(verify.join(format!("signed-x5c-{name}.jwt")), token).unwrap();
    }

    let claims = corpus("token_claims");
    fs::create_dir_all(&claims).unwrap();
    for (name, payload) in claims_payloads() {
        fs::write(claims.join(format!("payload-{name}.txt")), &payload).unwrap();
    }
    let valid = claims_payloads()
        .into_iter()
        .find(|(n, _)| *n == "valid")
        .unwrap()
        .1;
    for (name, header) in claims_headers() {
        fs::write(
            claims.join(format!("header-{name}.txt")),
            format!("{header}\n{valid}"),
        )
        .unwrap();
    }
}

/// The signed seeds fail a claim check, not the signature: the fuzzer starts past it.
#[test]
fn signed_token_seeds_reach_the_claim_checks() {
    let mut seen = 0;
    for entry in fs::read_dir(corpus("token_verify")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("signed-") {
            continue;
        }
        let token = fs::read_to_string(&path).unwrap();
        let (_, verifier) = fixture::verifiers()
            .iter()
            .find(|(n, _)| *n == "configured")
            .unwrap();
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Expired { .. }
                    | TokenError::NotYetValid { .. }
                    | TokenError::IssuedInFuture { .. }
                    | TokenError::WrongIssuer { .. }
                    | TokenError::WrongAudience { .. }
                    | TokenError::MissingClaim(_)
            ),
            "{name}: {err}"
        );
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} signed seeds");
}

/// The valid seeds of `token_claims` are accepted, so its properties run on them.
#[test]
fn valid_claims_seeds_are_accepted() {
    let dir = corpus("token_claims");
    for (file, signer, verifiers) in [
        ("payload-valid.txt", None, &["own", "configured"][..]),
        (
            "header-kid.txt",
            Some(Signer::Service),
            &["own", "configured"][..],
        ),
        (
            "header-x5c-chain.txt",
            Some(Signer::Leaf),
            &["configured"][..],
        ),
        (
            "header-x5c-leaf.txt",
            Some(Signer::Leaf),
            &["configured"][..],
        ),
    ] {
        let text = fs::read_to_string(dir.join(file)).unwrap();
        let (header, payload, signer) = match signer {
            None => (
                fixture::expand(r#"{"alg":"ES256","kid":"@KID@"}"#),
                text.as_str(),
                Signer::Service,
            ),
            Some(s) => {
                let (h, p) = text.split_once('\n').unwrap();
                (fixture::expand(h), p, s)
            }
        };
        let token = fixture::compact(header.as_bytes(), payload.as_bytes(), signer);
        for (name, verifier) in fixture::verifiers() {
            let result = verifier.verify(&token, NOW);
            assert_eq!(
                result.is_ok(),
                verifiers.contains(name),
                "{file} with {name}: {result:?}"
            );
        }
        stowage_fuzz::token_claims(text.as_bytes());
    }
}

/// The no-`Ok` property of `token_verify` is live: a token the fixture signed trips it.
#[test]
#[should_panic(expected = "accepted a token the harness never issued")]
fn token_verify_flags_an_accepted_token() {
    let header = fixture::expand(r#"{"alg":"ES256","kid":"@KID@"}"#);
    let payload = format!(
        r#"{{"iss":"{ISSUER}","aud":"{SERVICE}","exp":{}}}"#,
        NOW + 1
    );
    let token = fixture::compact(header.as_bytes(), payload.as_bytes(), Signer::Service);
    stowage_fuzz::token_verify(token.as_bytes());
}
