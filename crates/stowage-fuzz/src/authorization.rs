//! `Authorization` header parsing.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderValue;
use stowage_auth::challenge::{parse_authorization, Credentials, MAX_AUTHORIZATION_LEN};

/// Fuzz target: `parse_authorization` on the input as a header value (inputs that `http`
/// itself refuses as a header value never reach the parser and are skipped).
///
/// * Accepted values are at most the length limit, visible ASCII, with a `Basic` or `Bearer`
///   scheme (any case) that the result agrees with.
/// * Basic: a non-empty user, no control characters, and `Basic base64(user:password)`
///   parses back to the same credentials. Bearer: a token68 that appears in the header and
///   `Bearer <token>` parses back to it.
/// * `Debug` never shows a password or a token.
pub fn authorization(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(creds) = parse_authorization(&value) else {
        return;
    };
    assert!(data.len() <= MAX_AUTHORIZATION_LEN);
    assert!(data.iter().all(|b| *b == b' ' || b.is_ascii_graphic()));
    let text = std::str::from_utf8(data).expect("ASCII");
    let scheme = text
        .trim_start_matches(' ')
        .split(' ')
        .next()
        .unwrap_or_default();
    let debug = format!("{creds:?}");
    match &creds {
        Credentials::Basic { user, password } => {
            assert!(scheme.eq_ignore_ascii_case("basic"), "Basic from {text:?}");
            assert!(!user.is_empty());
            assert!(!user.contains(':'), "the user ends at the first ':'");
            assert!(!user.chars().chain(password.chars()).any(char::is_control));
            let again = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
            let again = HeaderValue::from_str(&again).expect("base64 is a valid header value");
            assert_eq!(parse_authorization(&again).as_ref(), Ok(&creds));
            let redacted = format!("Basic {{ user: {user:?}, password: \"<redacted>\" }}");
            assert_eq!(debug, redacted, "Debug of Basic credentials");
        }
        Credentials::Bearer(token) => {
            assert!(
                scheme.eq_ignore_ascii_case("bearer"),
                "Bearer from {text:?}"
            );
            assert!(!token.is_empty() && text.contains(token.as_str()));
            let body = token.trim_end_matches('=');
            assert!(!body.is_empty());
            assert!(body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
            let again = HeaderValue::from_str(&format!("Bearer {token}")).expect("token68");
            assert_eq!(parse_authorization(&again).as_ref(), Ok(&creds));
            assert_eq!(debug, "Bearer(\"<redacted>\")", "Debug of a Bearer token");
        }
    }
}
