//! `Authorization` header parsing and `WWW-Authenticate` challenges (RFC 7235, RFC 6750,
//! and Distribution's `Bearer realm=...,service=...,scope=...` form).

use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::HeaderValue;

/// Longest accepted `Authorization` header value, in bytes (room for a bearer token with an
/// `x5c` chain; see [`crate::token::MAX_TOKEN_LEN`]).
pub const MAX_AUTHORIZATION_LEN: usize = 16 * 1024 + 64;

/// Standard base64, padding optional (some clients omit it).
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials presented in an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user (or robot) name.
        user: String,
        /// The password or secret.
        password: String,
    },
    /// `Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

/// Why an `Authorization` header was refused. Never contains the credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The header value is empty.
    #[error("Authorization header is empty")]
    Empty,
    /// The header value is longer than [`MAX_AUTHORIZATION_LEN`].
    #[error("Authorization header is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header value has bytes other than visible ASCII and spaces.
    #[error("Authorization header has non-ASCII or control bytes")]
    NotAscii,
    /// The header names a scheme but carries no credentials.
    #[error("Authorization header has a scheme but no credentials")]
    MissingCredentials,
    /// The scheme is neither Basic nor Bearer.
    #[error("unsupported authorization scheme {0:?}")]
    UnsupportedScheme(String),
    /// Basic credentials are not valid base64.
    #[error("Basic credentials are not valid base64")]
    InvalidBase64,
    /// Basic credentials are not UTF-8.
    #[error("Basic credentials are not UTF-8")]
    NotUtf8,
    /// Basic credentials have no `:` between user and password.
    #[error("Basic credentials have no ':' separating user and password")]
    MissingColon,
    /// The user name is empty.
    #[error("Basic credentials have an empty user name")]
    EmptyUser,
    /// The user name or password contains a control character.
    #[error("Basic credentials contain a control character")]
    ControlCharacter,
    /// The bearer token has characters outside the token68 alphabet.
    #[error("Bearer token has characters outside the token68 alphabet")]
    InvalidBearerToken,
}

/// Parses an `Authorization` header: the scheme is case-insensitive; Basic credentials are
/// standard base64 of UTF-8 `user:password`, split at the first `:`; a Bearer token must be
/// token68.
pub fn parse_authorization(value: &HeaderValue) -> Result<Credentials, CredentialsError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(CredentialsError::Empty);
    }
    if bytes.len() > MAX_AUTHORIZATION_LEN {
        return Err(CredentialsError::TooLong {
            len: bytes.len(),
            max: MAX_AUTHORIZATION_LEN,
        });
    }
    let text = value.to_str().map_err(|_| CredentialsError::NotAscii)?;
    if text.bytes().any(|b| b.is_ascii_control()) {
        return Err(CredentialsError::NotAscii);
    }
    let text = text.trim_matches(' ');
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim_matches(' ');
    if scheme.is_empty() {
        return Err(CredentialsError::Empty);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if rest.is_empty() {
            return Err(CredentialsError::MissingCredentials);
        }
        let decoded = BASIC_B64
            .decode(rest)
            .map_err(|_| CredentialsError::InvalidBase64)?;
        let decoded = zeroize::Zeroizing::new(decoded);
        let text = std::str::from_utf8(&decoded).map_err(|_| CredentialsError::NotUtf8)?;
        let (user, password) = text.split_once(':').ok_or(CredentialsError::MissingColon)?;
        if user.is_empty() {
            return Err(CredentialsError::EmptyUser);
        }
        if user.chars().any(char::is_control) || password.chars().any(char::is_control) {
            return Err(CredentialsError::ControlCharacter);
        }
        Ok(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(CredentialsError::MissingCredentials);
        }
        if !is_token68(rest) {
            return Err(CredentialsError::InvalidBearerToken);
        }
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(CredentialsError::UnsupportedScheme(
            scheme.chars().take(32).collect(),
        ))
    }
}

/// RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The `error` parameter of a Bearer challenge (RFC 6750 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    /// The token is expired, revoked, malformed or otherwise invalid.
    InvalidToken,
    /// The token is valid but does not grant the requested access.
    InsufficientScope,
}

impl ChallengeError {
    /// The wire string: `invalid_token` or `insufficient_scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeError::InvalidToken => "invalid_token",
            ChallengeError::InsufficientScope => "insufficient_scope",
        }
    }
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Bearer realm="...",service="..."[,scope="a b"][,error="..."]`, as Distribution writes
/// it. Values are quoted strings (`"` and `\` escaped); characters a header cannot carry
/// (control characters, non-ASCII) are replaced by `?`.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[String],
    error: Option<ChallengeError>,
) -> HeaderValue {
    let mut s = String::from("Bearer ");
    push_param(&mut s, "realm", realm);
    s.push(',');
    push_param(&mut s, "service", service);
    if !scopes.is_empty() {
        s.push(',');
        push_param(&mut s, "scope", &scopes.join(" "));
    }
    if let Some(e) = error {
        s.push(',');
        push_param(&mut s, "error", e.as_str());
    }
    header_value(s, "Bearer")
}

/// `Basic realm="..."`.
pub fn basic_challenge(realm: &str) -> HeaderValue {
    let mut s = String::from("Basic ");
    push_param(&mut s, "realm", realm);
    header_value(s, "Basic")
}

fn push_param(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '\t' => out.push(c),
            c if c.is_ascii_graphic() => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Every byte pushed is visible ASCII, space or tab, which `HeaderValue` accepts; the
/// fallback is unreachable but keeps this free of panics.
fn header_value(s: String, fallback: &'static str) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(fallback))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn basic(raw: &str) -> HeaderValue {
        hv(&format!("Basic {}", STANDARD.encode(raw)))
    }

    #[test]
    fn basic_round_trip_and_first_colon_split() {
        assert_eq!(
            parse_authorization(&basic("alice:s3cret:with:colons")).unwrap(),
            Credentials::Basic {
                user: "alice".into(),
                password: "s3cret:with:colons".into()
            }
        );
        // Case-insensitive scheme, extra spaces, missing padding, UTF-8.
        let unpadded = STANDARD.encode("bob:pä").trim_end_matches('=').to_owned();
        assert_eq!(
            parse_authorization(&hv(&format!("bASIC   {unpadded} "))).unwrap(),
            Credentials::Basic {
                user: "bob".into(),
                password: "pä".into()
            }
        );
        // Empty password is parsed (and will simply fail verification).
        assert!(matches!(
            parse_authorization(&basic("robot$ci:")).unwrap(),
            Credentials::Basic { password, .. } if password.is_empty()
        ));
    }

    #[test]
    fn bearer_round_trip() {
        assert_eq!(
            parse_authorization(&hv("bearer eyJhbGc.eyJpc3M.c2ln-_")).unwrap(),
            Credentials::Bearer("eyJhbGc.eyJpc3M.c2ln-_".into())
        );
        assert_eq!(
            parse_authorization(&hv("Bearer abc+/==")).unwrap(),
            Credentials::Bearer("abc+/==".into())
        );
    }

    #[test]
    fn malformed_headers() {
        use CredentialsError::*;
        let cases: Vec<(HeaderValue, CredentialsError)> = vec![
            (hv(""), Empty),
            (hv("   "), Empty),
            (hv("Basic"), MissingCredentials),
            (hv("Bearer "), MissingCredentials),
            (hv("Digest abc"), UnsupportedScheme("Digest".into())),
            (hv("Basic !!!notbase64"), InvalidBase64),
            (
                hv(&format!("Basic {}", STANDARD.encode([0xff, 0x3a, 0x61]))),
                NotUtf8,
            ),
            (basic("no-colon"), MissingColon),
            (basic(":pw"), EmptyUser),
            (basic("al\nice:pw"), ControlCharacter),
            (basic("alice:p\u{0}w"), ControlCharacter),
            (hv("Bearer a b"), InvalidBearerToken),
            (hv("Bearer a=b"), InvalidBearerToken),
            (hv("Bearer ==="), InvalidBearerToken),
            (hv("Bearer\ttoken"), NotAscii),
            (HeaderValue::from_bytes(b"Basic \xe9").unwrap(), NotAscii),
        ];
        for (value, want) in cases {
            assert_eq!(parse_authorization(&value), Err(want), "{value:?}");
        }
        let long = hv(&format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN)));
        assert!(matches!(parse_authorization(&long), Err(TooLong { .. })));
    }

    #[test]
    fn secrets_never_leak_into_errors_or_debug() {
        let creds = parse_authorization(&basic("alice:hunter22")).unwrap();
        let debug = format!("{creds:?}");
        assert!(
            debug.contains("alice") && !debug.contains("hunter22"),
            "{debug}"
        );
        let bearer = parse_authorization(&hv("Bearer topsecrettoken")).unwrap();
        assert!(!format!("{bearer:?}").contains("topsecrettoken"));
        let err = parse_authorization(&basic("alice:pass\u{1}word")).unwrap_err();
        assert!(!err.to_string().contains("pass"));
        let err = parse_authorization(&hv("Bearer secret^token")).unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn bearer_challenge_forms() {
        let scopes = vec![
            "repository:team/app:pull,push".to_owned(),
            "registry:catalog:*".to_owned(),
        ];
        assert_eq!(
            bearer_challenge(
                "https://auth.example/token",
                "registry.example",
                &scopes,
                Some(ChallengeError::InsufficientScope)
            ),
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push registry:catalog:*",error="insufficient_scope""#
        );
        assert_eq!(
            bearer_challenge("https://r/token", "svc", &[], None),
            r#"Bearer realm="https://r/token",service="svc""#
        );
        assert_eq!(
            bearer_challenge(
                "https://r/token",
                "svc",
                &[],
                Some(ChallengeError::InvalidToken)
            ),
            r#"Bearer realm="https://r/token",service="svc",error="invalid_token""#
        );
        assert_eq!(ChallengeError::InvalidToken.to_string(), "invalid_token");
    }

    #[test]
    fn challenge_quoting_and_escaping() {
        assert_eq!(
            bearer_challenge(r#"a"b\c"#, "s\u{7}é", &[], None),
            r#"Bearer realm="a\"b\\c",service="s??""#
        );
        assert_eq!(basic_challenge("Stowage"), r#"Basic realm="Stowage""#);
        assert_eq!(
            basic_challenge("my \"quoted\" realm"),
            r#"Basic realm="my \"quoted\" realm""#
        );
    }
}
