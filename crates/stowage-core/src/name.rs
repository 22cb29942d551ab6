//! Repository names, tags and references (OCI distribution-spec).
//!
//! Repository name grammar:
//!
//! ```text
//! name       ::= component ("/" component)*
//! component  ::= [a-z0-9]+ (separator [a-z0-9]+)*
//! separator  ::= "." | "_" | "__" | "-"+
//! ```
//!
//! with a total length of at most 255 bytes. Tag grammar:
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Both are matched by hand.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{truncate_for_error, Digest, DigestError};

/// Maximum length of a repository name in bytes.
pub const MAX_REPO_NAME_LEN: usize = 255;
/// Maximum length of a tag in bytes.
pub const MAX_TAG_LEN: usize = 128;

/// Errors produced when parsing names, tags and references.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name violates the grammar; the message says which rule.
    #[error("invalid repository name: {0}")]
    InvalidRepo(String),
    /// The tag violates the grammar; the message says which rule.
    #[error("invalid tag: {0}")]
    InvalidTag(String),
}

fn repo_err(input: &str, why: impl fmt::Display) -> NameError {
    NameError::InvalidRepo(format!("{why} (in {:?})", truncate_for_error(input)))
}

fn tag_err(input: &str, why: impl fmt::Display) -> NameError {
    NameError::InvalidTag(format!("{why} (in {:?})", truncate_for_error(input)))
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Validate one path component; returns a description of the violated rule.
fn check_component(c: &str) -> Result<(), String> {
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err("empty path component (leading, trailing or double '/')".into());
    };
    if !is_lower_alnum(first) {
        return Err(format!(
            "component {c:?} must start with a lowercase letter or digit"
        ));
    }
    if !is_lower_alnum(last) {
        return Err(format!(
            "component {c:?} must end with a lowercase letter or digit"
        ));
    }
    // Walk maximal runs of non-alphanumeric bytes; each must be a valid
    // separator. Start/end were checked above, so every run sits between
    // alphanumeric runs.
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_lower_alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_lower_alnum(bytes[i]) {
            i += 1;
        }
        let run = &c[start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
        if !ok {
            if let Some(bad) = run.chars().find(|ch| !matches!(ch, '.' | '_' | '-')) {
                return Err(if bad.is_ascii_uppercase() {
                    format!("uppercase character {bad:?} not allowed")
                } else {
                    format!("character {bad:?} not allowed")
                });
            }
            return Err(format!(
                "invalid separator {run:?} in component {c:?} (allowed: '.', '_', '__', or dashes)"
            ));
        }
    }
    Ok(())
}

/// A validated repository name such as `library/ubuntu`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Parse and validate a repository name.
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(repo_err(s, "name must not be empty"));
        }
        if s.len() > MAX_REPO_NAME_LEN {
            return Err(repo_err(
                s,
                format_args!(
                    "name is {} bytes, longer than the maximum of {MAX_REPO_NAME_LEN}",
                    s.len()
                ),
            ));
        }
        for component in s.split('/') {
            check_component(component).map_err(|why| repo_err(s, why))?;
        }
        Ok(RepoName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component (e.g. `library` for `library/ubuntu`).
    pub fn project(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

/// A validated tag such as `latest` or `v1.2.3`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parse and validate a tag.
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let Some(&first) = s.as_bytes().first() else {
            return Err(tag_err(s, "tag must not be empty"));
        };
        if s.len() > MAX_TAG_LEN {
            return Err(tag_err(
                s,
                format_args!(
                    "tag is {} bytes, longer than the maximum of {MAX_TAG_LEN}",
                    s.len()
                ),
            ));
        }
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(tag_err(s, "tag must start with a letter, digit or '_'"));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(tag_err(
                s,
                format_args!(
                    "character {bad:?} not allowed (allowed: letters, digits, '.', '_', '-')"
                ),
            ));
        }
        Ok(Tag(s.to_owned()))
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A manifest reference: either a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// Reference by tag.
    Tag(Tag),
    /// Reference by content digest.
    Digest(Digest),
}

impl Reference {
    /// Parse a reference: a string containing `:` must be a digest, anything
    /// else must be a tag.
    ///
    /// A malformed or unsupported digest is reported as
    /// [`NameError::InvalidTag`] whose message starts with `"invalid digest
    /// reference"` and carries the [`DigestError`] text. Callers that need to
    /// distinguish digest failures (e.g. unsupported algorithm) should check
    /// for `':'` and call [`Digest::parse`] directly.
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|e: DigestError| {
                    NameError::InvalidTag(format!("invalid digest reference: {e}"))
                })
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    /// The reference as a string.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }

    /// The tag, if this is a tag reference.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    /// The digest, if this is a digest reference.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Tag(_) => None,
            Reference::Digest(d) => Some(d),
        }
    }
}

macro_rules! string_newtype_impls {
    ($ty:ident, $err:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::parse(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                $ty::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(RepoName, NameError);
string_newtype_impls!(Tag, NameError);
string_newtype_impls!(Reference, NameError);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_name_table() {
        let long_ok = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        assert_eq!(long_ok.len(), 255);
        let valid = [
            "a",
            "0",
            "library/ubuntu",
            "a-b__c.d/e",
            "a--b",
            "a---b/c_d/e.f",
            "foo/bar/baz/qux",
            "9ab/c0",
            long_ok.as_str(),
        ];
        for s in valid {
            let n = RepoName::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(n.as_str(), s);
        }
        let too_long = "a".repeat(256);
        let invalid = [
            "",
            "A",
            "library/Ubuntu",
            "a/../b",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "a_.b",
            "a.-b",
            "-a",
            "a-",
            "_a",
            "a.",
            "a b",
            "a:b",
            "a@b",
            "é",
            ".",
            too_long.as_str(),
        ];
        for s in invalid {
            match RepoName::parse(s) {
                Err(NameError::InvalidRepo(_)) => {}
                other => panic!("{s:?}: expected InvalidRepo, got {other:?}"),
            }
        }
    }

    #[test]
    fn repo_error_messages_name_the_rule() {
        let msg = |s: &str| RepoName::parse(s).unwrap_err().to_string();
        assert!(msg("").contains("empty"));
        assert!(msg("a//b").contains("empty path component"));
        assert!(msg("Abc").contains("start"));
        assert!(msg("aBc").contains("uppercase"));
        assert!(msg("a___b").contains("separator"));
        assert!(msg(&"a".repeat(300)).contains("maximum"));
    }

    #[test]
    fn project_and_serde() {
        let n = RepoName::parse("library/ubuntu").unwrap();
        assert_eq!(n.project(), "library");
        assert_eq!(RepoName::parse("solo").unwrap().project(), "solo");
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"library/ubuntu\"");
        assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), n);
        assert!(serde_json::from_str::<RepoName>("\"Bad\"").is_err());
        assert_eq!("library/ubuntu".parse::<RepoName>().unwrap(), n);
        assert_eq!(n.to_string(), "library/ubuntu");
    }

    #[test]
    fn tag_table() {
        let t128 = "a".repeat(128);
        let t129 = "a".repeat(129);
        for s in ["latest", "v1.2.3", "_x", "A-b_c.D", "0", t128.as_str()] {
            assert_eq!(Tag::parse(s).unwrap().as_str(), s);
        }
        for s in ["", ".x", "-x", "a/b", "a:b", "a b", "a+b", t129.as_str()] {
            match Tag::parse(s) {
                Err(NameError::InvalidTag(_)) => {}
                other => panic!("{s:?}: expected InvalidTag, got {other:?}"),
            }
        }
        let t = Tag::parse("v1").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"v1\"");
        assert_eq!("v1".parse::<Tag>().unwrap(), t);
    }

    #[test]
    fn reference_parse() {
        let d = Digest::sha256(b"x");
        match Reference::parse(d.as_str()).unwrap() {
            Reference::Digest(got) => assert_eq!(got, d),
            other => panic!("{other:?}"),
        }
        match Reference::parse("latest").unwrap() {
            Reference::Tag(t) => assert_eq!(t.as_str(), "latest"),
            other => panic!("{other:?}"),
        }
        let err = Reference::parse("sha256:abc").unwrap_err();
        assert!(matches!(&err, NameError::InvalidTag(m) if m.contains("invalid digest reference")));
        assert!(err.to_string().contains("sha256:abc"));
        let err = Reference::parse("md5:abc").unwrap_err();
        assert!(err.to_string().contains("unsupported"));
        assert!(Reference::parse("v1:2").is_err());
        assert!(matches!(
            Reference::parse(".bad"),
            Err(NameError::InvalidTag(m)) if m.contains("start")
        ));
        let r = Reference::parse("v2").unwrap();
        assert_eq!(r.to_string(), "v2");
        assert_eq!(r.as_tag().unwrap().as_str(), "v2");
        assert!(r.as_digest().is_none());
        let r = Reference::Digest(d.clone());
        assert_eq!(r.to_string(), d.to_string());
    }

    fn component_strategy() -> impl Strategy<Value = String> {
        let alnum = "[a-z0-9]{1,6}";
        let sep = prop_oneof![
            Just(".".to_string()),
            Just("_".to_string()),
            Just("__".to_string()),
            "-{1,3}",
        ];
        (alnum, proptest::collection::vec((sep, alnum), 0..3)).prop_map(|(head, rest)| {
            let mut s = head;
            for (sep, part) in rest {
                s.push_str(&sep);
                s.push_str(&part);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn generated_valid_names_are_accepted(
            parts in proptest::collection::vec(component_strategy(), 1..5)
        ) {
            let s = parts.join("/");
            let n = RepoName::parse(&s).unwrap();
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert_eq!(n.project(), parts[0].as_str());
        }

        #[test]
        fn accepted_names_round_trip(s in "[a-z0-9._/-]{0,20}|\\PC{0,20}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert_eq!(n.to_string(), s.clone());
                let json = serde_json::to_string(&n).unwrap();
                prop_assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), n.clone());
                prop_assert_eq!(RepoName::parse(n.as_str()).unwrap(), n);
                // Spot-check invariants implied by the grammar.
                prop_assert!(!s.starts_with('/') && !s.ends_with('/'));
                prop_assert!(!s.contains("//") && !s.contains("..") && !s.contains("___"));
            }
        }

        #[test]
        fn accepted_tags_round_trip(s in "[a-zA-Z0-9._-]{0,130}") {
            if let Ok(t) = Tag::parse(&s) {
                prop_assert!(s.len() <= 128);
                prop_assert_eq!(t.to_string(), s.clone());
                prop_assert_eq!(Tag::parse(t.as_str()).unwrap(), t);
            } else {
                prop_assert!(s.is_empty() || s.len() > 128 || s.starts_with(['.', '-']));
            }
        }
    }
}
