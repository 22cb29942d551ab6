//! Repository and tag filters: globs where `*` matches within one path segment, `**` matches
//! across segments, and `?` matches one character other than `/`.

/// Longest glob accepted in a filter (patterns also come from peers over the network).
pub const MAX_PATTERN: usize = 256;
/// Most globs in one filter list.
pub const MAX_PATTERNS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: anything.
    Globstar,
    /// `**/`: nothing, or anything that ends with `/`.
    GlobstarSlash,
}

fn tokens(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' if p.get(i + 1) == Some(&'*') => {
                if p.get(i + 2) == Some(&'/') {
                    out.push(Token::GlobstarSlash);
                    i += 3;
                } else {
                    out.push(Token::Globstar);
                    i += 2;
                }
            }
            '*' => {
                out.push(Token::Star);
                i += 1;
            }
            '?' => {
                out.push(Token::One);
                i += 1;
            }
            c => {
                out.push(Token::Lit(c));
                i += 1;
            }
        }
    }
    out
}

/// Whether `text` matches glob `pattern`. Dynamic programming over (pattern position, text
/// position): time is proportional to their product whatever the pattern, so a pattern sent
/// by a peer cannot make it backtrack exponentially.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let toks = tokens(pattern);
    let t: Vec<char> = text.chars().collect();
    let m = t.len();
    // `next[j]`: the tokens after the current one match `t[j..]`.
    let mut next = vec![false; m + 1];
    next[m] = true;
    let mut cur = vec![false; m + 1];
    for tok in toks.iter().rev() {
        match tok {
            Token::Lit(c) => {
                for j in 0..=m {
                    cur[j] = j < m && t[j] == *c && next[j + 1];
                }
            }
            Token::One => {
                for j in 0..=m {
                    cur[j] = j < m && t[j] != '/' && next[j + 1];
                }
            }
            Token::Star => {
                cur[m] = next[m];
                for j in (0..m).rev() {
                    cur[j] = next[j] || (t[j] != '/' && cur[j + 1]);
                }
            }
            Token::Globstar => {
                cur[m] = next[m];
                for j in (0..m).rev() {
                    cur[j] = next[j] || cur[j + 1];
                }
            }
            Token::GlobstarSlash => {
                // `ends[j]`: some `t[j..k]` ending with '/' is followed by a match at `k`.
                let mut ends = false;
                cur[m] = next[m];
                for j in (0..m).rev() {
                    ends = (t[j] == '/' && next[j + 1]) || ends;
                    cur[j] = next[j] || ends;
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    next[0]
}

/// Checks a filter list received from a peer or read from a config.
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "{} patterns; at most {MAX_PATTERNS}",
            patterns.len()
        ));
    }
    if let Some(p) = patterns.iter().find(|p| p.len() > MAX_PATTERN) {
        return Err(format!(
            "pattern of {} bytes; at most {MAX_PATTERN}",
            p.len()
        ));
    }
    Ok(())
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
        assert!(!glob_match("", "x"));
        assert!(glob_match("team/**/app/*", "team/x/app/web"));
        assert!(!glob_match("team/**/app/*", "team/x/app/web/deep"));
        assert!(glob_match("**/base", "base"));
        assert!(glob_match("**/base", "a/b/base"));
        assert!(!glob_match("**/base", "abase"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axx/byyc"));
    }

    #[test]
    fn hostile_patterns_stay_cheap() {
        // Exponential for a backtracking matcher; quadratic here.
        let pattern = "**a".repeat(40) + "b";
        let text = "a".repeat(200);
        assert!(!glob_match(&pattern, &text));
        assert!(check_patterns(&[pattern]).is_ok());
        assert!(check_patterns(&["x".repeat(MAX_PATTERN + 1)]).is_err());
        assert!(check_patterns(&vec!["x".to_string(); MAX_PATTERNS + 1]).is_err());
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
