//! What a peer may do at this site, enforced by [`crate::Local`] on every call it makes and on
//! every change this site applies from it.
//!
//! A peer gets rights only from configuration entries that grant them:
//! * `receive`: the peer pushes to this site. It may write (blobs, manifests, tags, and deletes
//!   when `replicate_deletes`) in the repositories and tags its filters select, and read the
//!   state a pusher compares against (tags, manifests, hashes) there.
//! * `serve`: the peer pulls from this site. It may read the feed, blobs and manifests of the
//!   repositories its filters select.
//!
//! Entries that make this site the initiator (`push`, `pull`) give the peer nothing when it
//! connects here; a `pull` entry's filters, origins and deletes setting bound what this site
//! applies from it. Every change a peer applies must have originated at its own site or at a
//! site its configuration lists, and a tag version may not be further ahead of this site's
//! clock than the configured skew.

use stowage_core::RepoName;

use crate::glob::Filters;

/// One grant of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// What it selects.
    pub filters: Filters,
    /// Whether deletes (tag and manifest) are accepted under this grant.
    pub deletes: bool,
}

/// The rights of one peer (all its configuration entries together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The peer's name in this site's configuration.
    pub name: String,
    /// Sites whose changes it may apply here: its own site, and the ones listed for it.
    pub origins: Vec<String>,
    /// What it may read (`serve` entries).
    pub read: Vec<Grant>,
    /// What it may write (`receive` entries, or the filters of a `pull` entry).
    pub write: Vec<Grant>,
    /// How far ahead of this site's clock a tag version may be (ms).
    pub max_skew_ms: u64,
}

impl PeerPolicy {
    /// Whether it may read `repo`'s content (feed entries, blobs, manifests).
    pub fn reads(&self, repo: &str) -> bool {
        self.read.iter().any(|g| g.filters.repo_ok(repo))
    }

    /// Whether it may write in `repo`.
    pub fn writes(&self, repo: &str) -> bool {
        self.write.iter().any(|g| g.filters.repo_ok(repo))
    }

    /// Whether it may read `repo`'s state (what a reader or a writer compares against).
    pub fn sees(&self, repo: &str) -> bool {
        self.reads(repo) || self.writes(repo)
    }

    /// Whether it may set (or, with `delete`, delete) `tag` of `repo`.
    pub fn writes_tag(&self, repo: &RepoName, tag: &str, delete: bool) -> bool {
        self.write.iter().any(|g| {
            g.filters.repo_ok(repo.as_str()) && g.filters.tag_ok(tag) && (!delete || g.deletes)
        })
    }

    /// Whether it may delete manifests in `repo`: under a grant with deletes and without a
    /// tag filter (a manifest is not bound to the tags a filter selects, so a tag-filtered
    /// grant deletes tags only).
    pub fn deletes(&self, repo: &RepoName) -> bool {
        self.write
            .iter()
            .any(|g| g.deletes && g.filters.tags.is_empty() && g.filters.repo_ok(repo.as_str()))
    }

    /// Whether it may apply a change that originated at `origin`.
    pub fn relays(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn filters(repos: &[&str], tags: &[&str]) -> Filters {
        Filters {
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn grants_bound_what_a_peer_may_do() {
        let p = PeerPolicy {
            name: "cloud".into(),
            origins: vec!["cloud".into()],
            read: vec![Grant {
                filters: filters(&["pub/**"], &[]),
                deletes: false,
            }],
            write: vec![Grant {
                filters: filters(&["cloud-builds/**"], &["v*"]),
                deletes: false,
            }],
            max_skew_ms: 1000,
        };
        let r = |s: &str| RepoName::parse(s).unwrap();
        assert!(p.reads("pub/app") && !p.reads("prod/app") && !p.reads("cloud-builds/x"));
        assert!(p.writes("cloud-builds/x") && !p.writes("prod/app"));
        assert!(p.sees("cloud-builds/x") && p.sees("pub/app") && !p.sees("hr/payroll"));
        assert!(p.writes_tag(&r("cloud-builds/x"), "v1", false));
        assert!(!p.writes_tag(&r("cloud-builds/x"), "latest", false));
        assert!(!p.writes_tag(&r("cloud-builds/x"), "v1", true));
        assert!(!p.deletes(&r("cloud-builds/x")));
        // Deletes under a tag filter reach tags, never manifests.
        let tagged = PeerPolicy {
            write: vec![Grant {
                filters: filters(&["cloud-builds/**"], &["v*"]),
                deletes: true,
            }],
            ..p.clone()
        };
        assert!(tagged.writes_tag(&r("cloud-builds/x"), "v1", true));
        assert!(!tagged.deletes(&r("cloud-builds/x")));
        let untagged = PeerPolicy {
            write: vec![Grant {
                filters: filters(&["cloud-builds/**"], &[]),
                deletes: true,
            }],
            ..p.clone()
        };
        assert!(untagged.deletes(&r("cloud-builds/x")) && !untagged.deletes(&r("prod/x")));
        assert!(p.relays("cloud") && !p.relays("private-dc"));
    }
}
