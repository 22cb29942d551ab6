//! The `[feed]` table: how much of the change feed is kept, and for how long deleted tags and
//! manifests are remembered (see `crate::feed_trim`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::parse_duration;

/// The config file's `[feed]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedFile {
    keep_entries: Option<u64>,
    keep_for: Option<String>,
    tombstone_horizon: Option<String>,
    trim_interval: Option<String>,
}

/// Resolved `[feed]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedConfig {
    /// The newest entries always kept, whatever the readers' positions.
    pub keep_entries: u64,
    /// Entries younger than this are always kept.
    pub keep_for: Duration,
    /// Tombstones younger than this (or than the oldest push peer's lag, if longer) are kept.
    pub tombstone_horizon: Duration,
    /// How often the trim runs; `None` turns trimming and tombstone expiry off.
    pub trim_interval: Option<Duration>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            keep_entries: 1_000_000,
            keep_for: Duration::from_secs(7 * 24 * 3600),
            tombstone_horizon: Duration::from_secs(30 * 24 * 3600),
            trim_interval: Some(Duration::from_secs(10 * 60)),
        }
    }
}

impl FeedFile {
    /// The settings, with the defaults for what the file leaves out.
    pub(super) fn resolve(self, file: &Path) -> Result<FeedConfig, String> {
        let d = FeedConfig::default();
        let dur = |key: &str, text: Option<String>| -> Result<Option<Duration>, String> {
            text.map(|t| {
                parse_duration(&t)
                    .map_err(|e| format!("config file {}: [feed] {key}: {e}", file.display()))
            })
            .transpose()
        };
        Ok(FeedConfig {
            keep_entries: self.keep_entries.unwrap_or(d.keep_entries),
            keep_for: dur("keep_for", self.keep_for)?.unwrap_or(d.keep_for),
            tombstone_horizon: dur("tombstone_horizon", self.tombstone_horizon)?
                .unwrap_or(d.tombstone_horizon),
            trim_interval: match dur("trim_interval", self.trim_interval)? {
                Some(z) if z.is_zero() => None,
                Some(i) => Some(i),
                None => d.trim_interval,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("x.toml");
        assert_eq!(
            FeedFile::default().resolve(p).unwrap(),
            FeedConfig::default()
        );
        let f: FeedFile = toml::from_str(
            "keep_entries = 10\nkeep_for = \"1h\"\ntombstone_horizon = \"2d\"\ntrim_interval = \"0s\"\n",
        )
        .unwrap();
        let c = f.resolve(p).unwrap();
        assert_eq!(c.keep_entries, 10);
        assert_eq!(c.keep_for, Duration::from_secs(3600));
        assert_eq!(c.tombstone_horizon, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(c.trim_interval, None);
        let bad: FeedFile = toml::from_str("keep_for = \"soon\"\n").unwrap();
        assert!(bad.resolve(p).unwrap_err().contains("[feed] keep_for"));
    }
}
