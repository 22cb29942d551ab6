//! `[scrub]`: the integrity scrub's schedule and read budget, as flags, environment variables
//! and the config file's table (`interval`, `bytes_per_second`).

use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use stowage_store::scrub::ScrubConfig;

use super::{parse_duration, parse_size};

/// The scrub's options of `stowage serve`.
#[derive(Args, Debug, Default, Clone)]
pub struct ScrubArgs {
    /// Time from the end of one integrity scrub run to the start of the next (file: `interval`
    /// in `[scrub]`); 0s turns the schedule off (runs only on `stowage scrub run`).
    /// Default: 7d
    #[arg(long, env = "STOWAGE_SCRUB_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub scrub_interval: Option<Duration>,
    /// Bytes per second the scrub may read (suffixes K, M, G: 50M; file: `bytes_per_second` in
    /// `[scrub]`); 0 reads as fast as the disk goes. Default: 50M
    #[arg(long, env = "STOWAGE_SCRUB_BYTES_PER_SECOND", value_name = "BYTES", value_parser = parse_size)]
    pub scrub_bytes_per_second: Option<u64>,
}

/// The config file's `[scrub]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubFile {
    interval: Option<String>,
    /// A number or a size with a suffix ("50M").
    bytes_per_second: Option<toml::Value>,
}

/// Flags and environment over the file over the defaults.
pub fn resolve(
    args: &ScrubArgs,
    file: Option<ScrubFile>,
    path: &Path,
) -> Result<ScrubConfig, String> {
    let file = file.unwrap_or_default();
    let at = |key: &str, e: String| format!("config file {}: [scrub] {key}: {e}", path.display());
    let defaults = ScrubConfig::default();
    let interval = match (args.scrub_interval, file.interval) {
        (Some(d), _) => Some(d),
        (None, Some(t)) => Some(parse_duration(&t).map_err(|e| at("interval", e))?),
        (None, None) => defaults.interval,
    }
    .filter(|d| !d.is_zero());
    let bytes_per_second = match (args.scrub_bytes_per_second, file.bytes_per_second) {
        (Some(n), _) => n,
        (None, Some(toml::Value::Integer(i))) => u64::try_from(i)
            .map_err(|_| at("bytes_per_second", format!("must not be negative, got {i}")))?,
        (None, Some(toml::Value::String(s))) => {
            parse_size(&s).map_err(|e| at("bytes_per_second", e))?
        }
        (None, Some(other)) => {
            return Err(at(
                "bytes_per_second",
                format!("expected a number or a size like \"50M\", got {other}"),
            ))
        }
        (None, None) => defaults.bytes_per_second,
    };
    Ok(ScrubConfig {
        interval,
        bytes_per_second,
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(text: &str) -> ScrubFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_file_and_flags() {
        let p = Path::new("stowage.toml");
        let d = resolve(&ScrubArgs::default(), None, p).unwrap();
        assert_eq!(d.interval, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(d.bytes_per_second, 50 << 20);
        let f = resolve(
            &ScrubArgs::default(),
            Some(file("interval = \"0s\"\nbytes_per_second = \"10M\"")),
            p,
        )
        .unwrap();
        assert_eq!((f.interval, f.bytes_per_second), (None, 10 << 20));
        let flags = ScrubArgs {
            scrub_interval: Some(Duration::from_secs(60)),
            scrub_bytes_per_second: Some(0),
        };
        let f = resolve(
            &flags,
            Some(file("interval = \"1d\"\nbytes_per_second = 5")),
            p,
        )
        .unwrap();
        assert_eq!(
            (f.interval, f.bytes_per_second),
            (Some(Duration::from_secs(60)), 0)
        );
        assert!(resolve(
            &ScrubArgs::default(),
            Some(file("bytes_per_second = -1")),
            p
        )
        .is_err());
        assert!(toml::from_str::<ScrubFile>("rate = 1").is_err());
    }
}
