//! Repository and tag filters: globs where `*` matches within one path segment, `**` matches
//! across segments, and `?` matches one character other than `/`.

/// Whether `text` matches glob `pattern`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches(&p, &t)
}

fn matches(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            // `**/` also matches nothing, so `team/**/app` matches `team/app`.
            let rest = &p[2..];
            if rest.first() == Some(&'/') && matches(&rest[1..], t) {
                return true;
            }
            (0..=t.len()).any(|i| matches(rest, &t[i..]))
        }
        Some('*') => {
            let rest = &p[1..];
            for i in 0..=t.len() {
                if matches(rest, &t[i..]) {
                    return true;
                }
                if t.get(i) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Some('?') => t.first().is_some_and(|c| *c != '/') && matches(&p[1..], &t[1..]),
        Some(c) => t.first() == Some(c) && matches(&p[1..], &t[1..]),
    }
}

/// Which repositories and tags a peer replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Repository globs; empty: every repository.
    pub repositories: Vec<String>,
    /// Tag globs; empty: every tag (and every manifest, tagged or not). With tag globs, only
    /// manifests that a matching tag reaches travel.
    pub tags: Vec<String>,
}

impl Filters {
    /// Whether `repo` is replicated.
    pub fn repo_ok(&self, repo: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|g| glob_match(g, repo))
    }

    /// Whether `tag` is replicated.
    pub fn tag_ok(&self, tag: &str) -> bool {
        self.tags.is_empty() || self.tags.iter().any(|g| glob_match(g, tag))
    }

    /// Every manifest travels (no tag filter).
    pub fn all_manifests(&self) -> bool {
        self.tags.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("team-a/**", "team-a/app"));
        assert!(glob_match("team-a/**", "team-a/x/y/z"));
        assert!(!glob_match("team-a/**", "team-b/app"));
        assert!(!glob_match("team-a/**", "team-ab/app"));
        assert!(glob_match("team-a/*", "team-a/app"));
        assert!(!glob_match("team-a/*", "team-a/x/app"));
        assert!(glob_match("*/base", "lib/base"));
        assert!(glob_match("team/**/app", "team/app"));
        assert!(glob_match("team/**/app", "team/a/b/app"));
        assert!(glob_match("v?.*", "v1.2"));
        assert!(!glob_match("v?.*", "v10.2"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("", ""));
    }

    #[test]
    fn filters() {
        let f = Filters {
            repositories: vec!["team-a/**".into(), "shared".into()],
            tags: vec!["v*".into()],
        };
        assert!(f.repo_ok("team-a/web"));
        assert!(f.repo_ok("shared"));
        assert!(!f.repo_ok("team-b/web"));
        assert!(f.tag_ok("v1.0"));
        assert!(!f.tag_ok("latest"));
        assert!(!f.all_manifests());
        let all = Filters::default();
        assert!(all.repo_ok("x/y") && all.tag_ok("latest") && all.all_manifests());
    }
}
