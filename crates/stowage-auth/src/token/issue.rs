//! The built-in token service's issuer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;

use super::{AccessEntry, Audience, Claims, SigningKey, TokenError, TokenType, Verifier};

/// A token handed to a client, with the fields of the token endpoint's response.
#[derive(Clone)]
pub struct Issued {
    /// The compact JWS.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// When it was issued, RFC 3339 (UTC, whole seconds).
    pub issued_at: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

/// Mints access and refresh tokens signed by the service's [`SigningKey`].
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    key: Arc<SigningKey>,
    issuer: String,
    service: String,
    ttl: Duration,
}

#[derive(Serialize)]
struct JwsHeader<'a> {
    typ: &'static str,
    alg: Algorithm,
    kid: &'a str,
}

impl TokenIssuer {
    /// An issuer writing `iss = issuer`, `aud = service`, access tokens valid for `ttl`.
    pub fn new(key: Arc<SigningKey>, issuer: &str, service: &str, ttl: Duration) -> TokenIssuer {
        TokenIssuer {
            key,
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            ttl,
        }
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// The issuer name (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The service name (`aud`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Signs an arbitrary claim set with the service key (header `alg` ES256, `kid`).
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = JwsHeader {
            typ: "JWT",
            alg: Algorithm::ES256,
            kid: self.key.kid(),
        };
        sign_compact(&header, claims, Algorithm::ES256, self.key.encoding_key()).map_err(
            |e| match e {
                TokenError::Signing { .. } => TokenError::Signing {
                    kid: self.key.kid().to_owned(),
                },
                other => other,
            },
        )
    }

    /// An access token for `sub` granting `access`, valid from `now_secs` for the
    /// issuer's TTL, with a random `jti`.
    pub fn access_token(
        &self,
        sub: &str,
        access: Vec<AccessEntry>,
        now_secs: u64,
    ) -> Result<Issued, TokenError> {
        self.mint(sub, access, None, TokenType::Access, now_secs, self.ttl)
    }

    /// A refresh token for `sub` (no access), carrying the subject's credential
    /// `generation`, valid for `ttl`.
    pub fn refresh_token(
        &self,
        sub: &str,
        generation: u64,
        now_secs: u64,
        ttl: Duration,
    ) -> Result<Issued, TokenError> {
        self.mint(
            sub,
            Vec::new(),
            Some(generation),
            TokenType::Refresh,
            now_secs,
            ttl,
        )
    }

    /// A verifier that trusts exactly this issuer's key, for this issuer and service.
    pub fn verifier(&self) -> Verifier {
        Verifier::for_own_key(&self.issuer, &self.service, &self.key)
    }

    fn mint(
        &self,
        sub: &str,
        access: Vec<AccessEntry>,
        gen: Option<u64>,
        tt: TokenType,
        now_secs: u64,
        ttl: Duration,
    ) -> Result<Issued, TokenError> {
        let ttl_secs = ttl.as_secs().max(1);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: Audience::single(&self.service),
            exp: now_secs.saturating_add(ttl_secs),
            nbf: Some(now_secs),
            iat: Some(now_secs),
            jti: random_jti()?,
            access,
            gen,
            tt: match tt {
                TokenType::Access => None,
                TokenType::Refresh => Some(TokenType::Refresh),
            },
        };
        let token = self.issue(&claims)?;
        let issued_at =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now_secs))
                .to_string();
        Ok(Issued {
            token,
            expires_in: ttl_secs,
            issued_at,
        })
    }
}

/// 16 random bytes from the OS, base64url.
fn random_jti() -> Result<String, TokenError> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Serializes `header` and `claims`, signs them with `key` using aws-lc-rs (chosen
/// explicitly, never the process default) and returns the compact JWS.
pub(crate) fn sign_compact<H: Serialize, C: Serialize>(
    header: &H,
    claims: &C,
    alg: Algorithm,
    key: &EncodingKey,
) -> Result<String, TokenError> {
    let header = serde_json::to_vec(header).map_err(|source| TokenError::Serialize {
        part: "header",
        source,
    })?;
    let claims = serde_json::to_vec(claims).map_err(|source| TokenError::Serialize {
        part: "claims",
        source,
    })?;
    let mut message = URL_SAFE_NO_PAD.encode(header);
    message.push('.');
    message.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let signing_failed = || TokenError::Signing { kid: String::new() };
    let signer = (DEFAULT_PROVIDER.signer_factory)(&alg, key).map_err(|_| signing_failed())?;
    let signature = signer
        .try_sign(message.as_bytes())
        .map_err(|_| signing_failed())?;
    message.push('.');
    message.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(message)
}
