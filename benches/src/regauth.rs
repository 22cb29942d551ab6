//! Registry authentication as a client such as docker performs it.
//!
//! A session starts with `GET /v2/`: `200` means no authentication; `401` carries a
//! `WWW-Authenticate` challenge. `Basic` sends the credentials on every request. `Bearer`
//! sends them once to the challenge's `realm` (`GET realm?service=S&scope=repository:R:A`,
//! Distribution's token specification) and then the token it gets on every request, until the
//! token is about to expire (`expires_in`, default 60 s as the specification says) or a request
//! is refused with a new `401`: then it fetches a new one.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What the client is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Send no credentials and do not ask `/v2/`.
    None,
    /// Whatever the registry's `/v2/` challenge asks for.
    Auto,
    /// Expect a `Basic` challenge.
    Basic,
    /// Expect a `Bearer` challenge (token flow).
    Token,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AuthMode::None),
            "auto" => Ok(AuthMode::Auto),
            "basic" => Ok(AuthMode::Basic),
            "token" => Ok(AuthMode::Token),
            other => Err(format!(
                "unknown auth mode {other:?} (none, auto, basic, token)"
            )),
        }
    }
}

/// Authentication settings of a run.
#[derive(Clone)]
pub struct AuthConfig {
    /// What to do.
    pub mode: AuthMode,
    /// Account name.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl AuthConfig {
    /// No authentication.
    pub fn none() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::None,
            user: None,
            password: None,
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lower case).
    pub scheme: String,
    /// Its parameters, names in lower case.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one challenge (`Scheme k="v", k2=v2`), as registries send it.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = match value.find(char::is_whitespace) {
        Some(i) => (&value[..i], value[i..].trim_start()),
        None => (value, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            params.push((name, String::new()));
            continue;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
            val = val.trim().to_string();
        }
        params.push((name, val));
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// Counters of one client's authentication work, summed over a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthStats {
    /// Scheme in use: `none`, `basic` or `bearer`.
    pub scheme: String,
    /// `GET /v2/` requests (one per client and phase).
    pub pings: u64,
    /// Tokens fetched from the realm.
    pub token_fetches: u64,
    /// Of these, fetched because the token was about to expire.
    pub token_refreshes: u64,
    /// Requests refused with `401` while holding credentials, then sent again.
    pub reauth_retries: u64,
    /// Seconds spent in `/v2/` pings and token fetches, summed over clients.
    pub handshake_s: f64,
    /// Slowest single handshake (ping plus first token), ms.
    pub handshake_max_ms: f64,
}

impl AuthStats {
    /// Adds `o`'s counters to these.
    pub fn merge(&mut self, o: &AuthStats) {
        if self.scheme.is_empty() {
            self.scheme = o.scheme.clone();
        }
        self.pings += o.pings;
        self.token_fetches += o.token_fetches;
        self.token_refreshes += o.token_refreshes;
        self.reauth_retries += o.reauth_retries;
        self.handshake_s += o.handshake_s;
        self.handshake_max_ms = self.handshake_max_ms.max(o.handshake_max_ms);
    }
}

#[derive(Debug)]
enum Scheme {
    Unknown,
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        token: Option<(HeaderValue, Instant)>,
    },
}

/// One client's authentication state for one repository scope (`pull` or `pull,push`).
#[derive(Debug)]
pub struct Session {
    cfg: AuthConfig,
    base: String,
    scope: String,
    scheme: Scheme,
    /// Counters.
    pub stats: AuthStats,
}

/// What a token endpoint answers.
#[derive(Debug, serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Session {
    /// A session against `base` (the registry URL) for `scope`
    /// (e.g. `repository:bench/x:pull,push`).
    pub fn new(cfg: &AuthConfig, base: &str, scope: String) -> Session {
        Session {
            cfg: cfg.clone(),
            base: base.trim_end_matches('/').to_string(),
            scope,
            scheme: if cfg.mode == AuthMode::None {
                Scheme::None
            } else {
                Scheme::Unknown
            },
            stats: AuthStats::default(),
        }
    }

    fn user_password(&self) -> Result<(&str, &str)> {
        match (&self.cfg.user, &self.cfg.password) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => bail!("the registry asks for credentials: give --user and a password"),
        }
    }

    /// Pings `/v2/` and sets up what its challenge asks for (once per session).
    async fn handshake(&mut self, client: &Client) -> Result<()> {
        let t = Instant::now();
        let url = format!("{}/v2/", self.base);
        self.stats.pings += 1;
        let resp = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let _ = resp.bytes().await;
        self.scheme = match (status, challenge) {
            (s, _) if s.is_success() => {
                if matches!(self.cfg.mode, AuthMode::Basic | AuthMode::Token) {
                    bail!("GET {url} answered {s} without a challenge, but --auth asks for one");
                }
                Scheme::None
            }
            (StatusCode::UNAUTHORIZED, Some(c)) if c.scheme == "basic" => {
                if self.cfg.mode == AuthMode::Token {
                    bail!("GET {url}: the registry asks for Basic, not a bearer token");
                }
                self.user_password()?;
                Scheme::Basic
            }
            (StatusCode::UNAUTHORIZED, Some(c)) if c.scheme == "bearer" => {
                if self.cfg.mode == AuthMode::Basic {
                    bail!("GET {url}: the registry asks for a bearer token, not Basic");
                }
                let realm = c
                    .param("realm")
                    .with_context(|| format!("GET {url}: Bearer challenge without a realm"))?
                    .to_string();
                Scheme::Bearer {
                    realm,
                    service: c.param("service").map(str::to_string),
                    token: None,
                }
            }
            (s, c) => bail!("GET {url}: unexpected answer {s} with challenge {c:?}"),
        };
        self.stats.scheme = match self.scheme {
            Scheme::Basic => "basic",
            Scheme::Bearer { .. } => "bearer",
            _ => "none",
        }
        .to_string();
        if matches!(self.scheme, Scheme::Bearer { .. }) {
            self.fetch_token(client).await?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.stats.handshake_s += ms / 1e3;
        self.stats.handshake_max_ms = self.stats.handshake_max_ms.max(ms);
        Ok(())
    }

    /// Asks the realm for a token for this session's scope, with Basic credentials.
    async fn fetch_token(&mut self, client: &Client) -> Result<()> {
        let Scheme::Bearer { realm, service, .. } = &self.scheme else {
            return Ok(());
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        if !self.scope.is_empty() {
            query.push(("scope", &self.scope));
        }
        let mut req = client.get(realm.as_str()).query(&query);
        if let (Some(u), Some(p)) = (&self.cfg.user, &self.cfg.password) {
            req = req.basic_auth(u, Some(p));
        }
        let t = Instant::now();
        let resp = req.send().await.with_context(|| format!("GET {realm}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("token request to {realm}: HTTP {status}: {}", body.trim());
        }
        let answer: TokenAnswer = resp
            .json()
            .await
            .with_context(|| format!("token answer from {realm}"))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("token answer from {realm} has no token"))?;
        // Refresh a little before the end (a tenth of the lifetime, at most 10 s), so a
        // request does not start with a token that expires on its way.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(60).max(1));
        let margin = (life / 10).min(Duration::from_secs(10));
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("token is not a valid header value")?;
        let realm = realm.clone();
        let service = service.clone();
        self.scheme = Scheme::Bearer {
            realm,
            service,
            token: Some((value, t + life - margin)),
        };
        self.stats.token_fetches += 1;
        Ok(())
    }

    /// Makes sure credentials are ready: the handshake on first use, a new token when the
    /// current one is about to expire.
    pub async fn ready(&mut self, client: &Client) -> Result<()> {
        match &self.scheme {
            Scheme::Unknown => self.handshake(client).await,
            Scheme::Bearer {
                token: Some((_, refresh_at)),
                ..
            } if Instant::now() >= *refresh_at => {
                let t = Instant::now();
                self.stats.token_refreshes += 1;
                self.fetch_token(client).await?;
                self.stats.handshake_s += t.elapsed().as_secs_f64();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Adds this session's credentials to `req` (call [`Session::ready`] first).
    pub fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match &self.scheme {
            Scheme::Basic => match (&self.cfg.user, &self.cfg.password) {
                (Some(u), Some(p)) => req.basic_auth(u, Some(p)),
                _ => req,
            },
            Scheme::Bearer {
                token: Some((v, _)),
                ..
            } => req.header(AUTHORIZATION, v.clone()),
            _ => req,
        }
    }

    /// Whether a request answered with `status` may succeed with new credentials: a `401`
    /// while holding a token (expired or revoked). Then call [`Session::reauth`] and send the
    /// request once more.
    pub fn should_reauth(&self, status: StatusCode) -> bool {
        status == StatusCode::UNAUTHORIZED && matches!(self.scheme, Scheme::Bearer { .. })
    }

    /// Fetches a new token after a refusal.
    pub async fn reauth(&mut self, client: &Client) -> Result<()> {
        self.stats.reauth_retries += 1;
        let t = Instant::now();
        self.fetch_token(client).await?;
        self.stats.handshake_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Sends the request `make` builds with this session's credentials; when it is refused
    /// with a `401` that a new token may cure, fetches one and sends it once more.
    pub async fn send(
        &mut self,
        client: &Client,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let resp = self.apply(make()).send().await?;
        if !self.should_reauth(resp.status()) {
            return Ok(resp);
        }
        // Drain so the connection goes back to the pool.
        let _ = resp.bytes().await;
        self.reauth(client).await?;
        Ok(self.apply(make()).send().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5000/token",service="stowage",scope="repository:a/b:pull,push",error="invalid_token""#,
        )
        .expect("parses");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:5000/token"));
        assert_eq!(c.param("service"), Some("stowage"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("error"), Some("invalid_token"));

        let c = parse_challenge(r#"Basic realm="basic-realm""#).expect("parses");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("basic-realm"));

        let c = parse_challenge(r#"Bearer realm = "a\"b" , service=svc"#).expect("parses");
        assert_eq!(c.param("realm"), Some("a\"b"));
        assert_eq!(c.param("service"), Some("svc"));
        assert!(parse_challenge("").is_none());
    }
}
