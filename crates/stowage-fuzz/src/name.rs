//! Repository names, tags and references against the distribution-spec regexes.

use std::sync::OnceLock;

use stowage_core::name::{MAX_REPO_NAME_LEN, MAX_TAG_LEN};
use stowage_core::{Digest, NameError, Reference, RepoName, Tag};

/// `<name>` of the distribution spec.
const NAME: &str =
    r"\A[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\z";
/// `<reference>` as a tag, in the distribution spec.
const TAG: &str = r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\z";

/// Fuzz target: `RepoName::parse`, `Tag::parse` and `Reference::parse` on the same text.
///
/// * A name is accepted exactly when it matches the spec's regex and is at most 255 bytes; a
///   tag exactly when it matches the spec's regex.
/// * Accepted values print as their input and re-parse to themselves (also through serde).
/// * `project()` is the first `/`-separated component.
/// * `Reference::parse` is `Digest::parse` for text with `:`, `Tag::parse` otherwise.
pub fn name(data: &[u8]) {
    static N: OnceLock<regex::Regex> = OnceLock::new();
    static T: OnceLock<regex::Regex> = OnceLock::new();
    let s = crate::text(data);
    let s = s.as_ref();

    let name_ok = crate::regex(&N, NAME).is_match(s) && s.len() <= MAX_REPO_NAME_LEN;
    match RepoName::parse(s) {
        Ok(n) => {
            assert!(
                name_ok,
                "accepted a repository name outside the grammar: {s:?}"
            );
            assert_eq!(n.as_str(), s);
            let printed = n.to_string();
            assert_eq!(RepoName::parse(&printed).as_ref(), Ok(&n));
            let project = n.project();
            assert_eq!(Some(project), s.split('/').next());
            assert!(!project.is_empty() && !project.contains('/'));
            let json = serde_json::to_string(&n).expect("a name serializes");
            let back: RepoName = serde_json::from_str(&json).expect("a name deserializes");
            assert_eq!(back, n);
        }
        Err(NameError::InvalidRepo(_)) => {
            assert!(!name_ok, "refused a valid repository name: {s:?}");
        }
        Err(e @ NameError::InvalidTag(_)) => panic!("RepoName::parse returned {e:?}"),
    }

    let tag_ok = crate::regex(&T, TAG).is_match(s);
    let tag = Tag::parse(s);
    match &tag {
        Ok(t) => {
            assert!(tag_ok, "accepted a tag outside the grammar: {s:?}");
            assert!(t.as_str().len() <= MAX_TAG_LEN);
            assert_eq!(t.as_str(), s);
            let printed = t.to_string();
            assert_eq!(Tag::parse(&printed).as_ref(), Ok(t));
        }
        Err(NameError::InvalidTag(_)) => assert!(!tag_ok, "refused a valid tag: {s:?}"),
        Err(e @ NameError::InvalidRepo(_)) => panic!("Tag::parse returned {e:?}"),
    }

    let reference = Reference::parse(s);
    if s.contains(':') {
        match (&reference, Digest::parse(s)) {
            (Ok(Reference::Digest(r)), Ok(d)) => assert_eq!(r, &d),
            (Err(NameError::InvalidTag(msg)), Err(_)) => {
                assert!(msg.starts_with("invalid digest reference"), "{msg}");
            }
            (r, d) => panic!("Reference::parse({s:?}) = {r:?} but Digest::parse = {d:?}"),
        }
    } else {
        match (&reference, tag) {
            (Ok(Reference::Tag(r)), Ok(t)) => assert_eq!(r, &t),
            (Err(a), Err(b)) => assert_eq!(a, &b),
            (r, t) => panic!("Reference::parse({s:?}) = {r:?} but Tag::parse = {t:?}"),
        }
    }
    if let Ok(r) = &reference {
        assert_eq!(r.as_str(), s);
        assert_eq!(Reference::parse(r.as_str()).as_ref(), Ok(r));
        assert_eq!(r.as_tag().is_some(), r.as_digest().is_none());
    }
}
