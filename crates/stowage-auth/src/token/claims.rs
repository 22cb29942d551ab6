//! The claim set of a registry bearer token (Distribution token specification).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Scope, TokenError};

/// One `access` entry: the actions granted on a typed, named resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// Resource type, e.g. `repository`.
    #[serde(rename = "type")]
    pub typ: String,
    /// Optional resource class (Distribution's `repository(plugin)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Resource name, e.g. `team/app`.
    pub name: String,
    /// Granted actions; `*` grants every action.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub actions: Vec<String>,
}

impl AccessEntry {
    /// An entry granting `actions` on `typ`/`name`.
    pub fn new(typ: &str, name: &str, actions: &[&str]) -> AccessEntry {
        AccessEntry {
            typ: typ.to_owned(),
            class: None,
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl From<Scope> for AccessEntry {
    fn from(s: Scope) -> AccessEntry {
        AccessEntry {
            typ: s.typ,
            class: s.class,
            name: s.name,
            actions: s.actions,
        }
    }
}

/// The `aud` claim: one or more audiences. Serialized as a plain string when there is
/// exactly one (Distribution 2.x reads `aud` as a string), as an array otherwise; both
/// forms are accepted when reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    /// A single audience.
    pub fn single(aud: &str) -> Audience {
        Audience(vec![aud.to_owned()])
    }

    /// Whether `aud` is one of the audiences.
    pub fn contains(&self, aud: &str) -> bool {
        self.0.iter().any(|a| a == aud)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(a) => Audience(vec![a]),
            OneOrMany::Many(v) => Audience(v),
        })
    }
}

/// The kind of token (private claim `tt`): refresh tokens are only accepted by the token
/// endpoint, access tokens only by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Grants the `access` entries to the registry API.
    Access,
    /// Lets the token endpoint mint access tokens for `sub` without a password.
    Refresh,
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        })
    }
}

/// The claim set of a bearer token. Unknown claims are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the account name (empty for anonymous tokens).
    pub sub: String,
    /// Audience: the registry service name.
    pub aud: Audience,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Unique token id.
    pub jti: String,
    /// Granted access.
    pub access: Vec<AccessEntry>,
    /// Private claim: the subject's credential generation when the token was minted (lets
    /// a password change or robot rotation revoke refresh tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gen: Option<u64>,
    /// Private claim: the token type; absent means an access token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tt: Option<TokenType>,
}

impl Claims {
    /// Whether the token grants `action` on `typ`/`name` (`*` grants every action).
    pub fn allows(&self, typ: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|e| {
            e.typ == typ && e.name == name && e.actions.iter().any(|a| a == action || a == "*")
        })
    }

    /// The token type, `Access` when the claim is absent.
    pub fn token_type(&self) -> TokenType {
        self.tt.unwrap_or(TokenType::Access)
    }
}

/// The claim set as read from an untrusted token: everything optional so a missing claim
/// is reported by name instead of as a parse error.
#[derive(Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    access: Vec<AccessEntry>,
    #[serde(default)]
    gen: Option<u64>,
    #[serde(default)]
    tt: Option<TokenType>,
}

impl RawClaims {
    /// Converts into [`Claims`]; `iss` and `exp` are required (a missing `aud` fails the
    /// audience check instead).
    pub(crate) fn into_claims(self) -> Result<Claims, TokenError> {
        Ok(Claims {
            iss: self.iss.ok_or(TokenError::MissingClaim("iss"))?,
            sub: self.sub.unwrap_or_default(),
            aud: self.aud.unwrap_or_default(),
            exp: self.exp.ok_or(TokenError::MissingClaim("exp"))?,
            nbf: self.nbf,
            iat: self.iat,
            jti: self.jti.unwrap_or_default(),
            access: self.access,
            gen: self.gen,
            tt: self.tt,
        })
    }
}

/// Reads `null` (as Go encoders write a nil slice) as an empty list.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn audience_serializes_as_a_string_and_reads_both_forms() {
        assert_eq!(
            serde_json::to_string(&Audience::single("reg")).unwrap(),
            r#""reg""#
        );
        let two = Audience(vec!["a".into(), "b".into()]);
        assert_eq!(serde_json::to_string(&two).unwrap(), r#"["a","b"]"#);
        let a: Audience = serde_json::from_str(r#""reg""#).unwrap();
        assert!(a.contains("reg"));
        let b: Audience = serde_json::from_str(r#"["x","reg"]"#).unwrap();
        assert!(b.contains("reg") && !b.contains("y"));
    }

    #[test]
    fn access_entry_wire_form_matches_the_spec() {
        let e = AccessEntry::new("repository", "team/app", &["pull", "push"]);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type": "repository", "name": "team/app", "actions": ["pull", "push"]})
        );
        let nil: AccessEntry =
            serde_json::from_str(r#"{"type":"repository","name":"a","actions":null}"#).unwrap();
        assert!(nil.actions.is_empty());
    }

    #[test]
    fn allows_matches_type_name_and_action() {
        let c = Claims {
            iss: "i".into(),
            sub: "alice".into(),
            aud: Audience::single("reg"),
            exp: 10,
            nbf: None,
            iat: None,
            jti: String::new(),
            access: vec![
                AccessEntry::new("repository", "team/app", &["pull"]),
                AccessEntry::new("repository", "team/all", &["*"]),
            ],
            gen: None,
            tt: None,
        };
        assert!(c.allows("repository", "team/app", "pull"));
        assert!(!c.allows("repository", "team/app", "push"));
        assert!(!c.allows("repository", "team/other", "pull"));
        assert!(!c.allows("registry", "team/app", "pull"));
        assert!(c.allows("repository", "team/all", "delete"));
        assert_eq!(c.token_type(), TokenType::Access);
    }

    #[test]
    fn raw_claims_report_missing_claims_and_ignore_unknown_ones() {
        let raw: RawClaims =
            serde_json::from_str(r#"{"iss":"i","aud":"reg","unknown":{"x":1}}"#).unwrap();
        assert!(matches!(
            raw.into_claims(),
            Err(TokenError::MissingClaim("exp"))
        ));
        let raw: RawClaims = serde_json::from_str(r#"{"iss":"i","exp":5,"access":null}"#).unwrap();
        let c = raw.into_claims().unwrap();
        assert!(c.access.is_empty() && c.aud.0.is_empty());
    }
}
