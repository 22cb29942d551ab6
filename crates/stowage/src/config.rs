//! Daemon configuration: command-line flags, `STOWAGE_*` environment variables and a TOML file.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default. Every
//! option has all three forms: `--max-blob-size` / `STOWAGE_MAX_BLOB_SIZE` / `max_blob_size`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `stowage serve`. Every field is optional here so that the config file can fill
/// what the command line and environment leave unset.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file; its keys are the long option names with `_` for `-`.
    #[arg(long, env = "STOWAGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder for the index and (with the default file system backend) the blobs.
    /// Default: ./stowage-data
    #[arg(long, env = "STOWAGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the OCI Distribution HTTP API. Port 0 picks a free port (printed at start).
    /// Default: 127.0.0.1:5000
    #[arg(long, env = "STOWAGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin gRPC service (info, health). Default: 127.0.0.1:5001
    #[arg(long, env = "STOWAGE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// This site's name, recorded as the origin of every change. Default: the host name
    #[arg(long, env = "STOWAGE_SITE", value_name = "NAME")]
    pub site: Option<String>,
    /// Largest blob accepted, in bytes (suffixes K, M, G, T accepted: 10G). Default: 1T
    #[arg(long, env = "STOWAGE_MAX_BLOB_SIZE", value_name = "BYTES", value_parser = parse_size)]
    pub max_blob_size: Option<u64>,
    /// Check every whole-blob read (against the CRC-32C recorded at write, or the digest for
    /// blobs recorded without one) and fail the transfer on mismatch. Default: true
    #[arg(long, env = "STOWAGE_VERIFY_READS", value_name = "BOOL")]
    pub verify_reads: Option<bool>,
    /// Write uploaded bytes with O_DIRECT on the local file system (where it supports it),
    /// bypassing the page cache: less CPU per pushed byte, but a blob's first pull after its
    /// push reads from disk. Default: true
    #[arg(long, env = "STOWAGE_DIRECT_IO", value_name = "BOOL")]
    pub direct_io: Option<bool>,
    /// fsync the index write-ahead log on every change. Turning this off risks losing
    /// acknowledged pushes on power loss. Default: true
    #[arg(long, env = "STOWAGE_SYNC_INDEX", value_name = "BOOL")]
    pub sync_index: Option<bool>,
    /// How long in-flight requests may run after SIGTERM before the daemon exits anyway.
    /// Default: 30s
    #[arg(long, env = "STOWAGE_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Log format. Default: text
    #[arg(long, env = "STOWAGE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing env-filter syntax, e.g. `info,stowage_store=debug`; RUST_LOG wins).
    /// Default: info
    #[arg(long, env = "STOWAGE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The config file's shape: the same options as the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    site: Option<String>,
    max_blob_size: Option<toml::Value>,
    verify_reads: Option<bool>,
    direct_io: Option<bool>,
    sync_index: Option<bool>,
    shutdown_timeout: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub site: String,
    pub max_blob_size: u64,
    pub verify_reads: bool,
    pub direct_io: bool,
    pub sync_index: bool,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Parses sizes like `1024`, `512K`, `10G`, `1TiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512K, 10G)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parses durations like `30s`, `5m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (e.g. 30s, 5m): {e}"))
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

impl ServeArgs {
    /// Merges flags/env with the config file and defaults.
    pub fn resolve(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let max_blob_size = match (self.max_blob_size, file.max_blob_size) {
            (Some(v), _) => v,
            (None, Some(toml::Value::Integer(i))) => {
                u64::try_from(i).map_err(|_| format!("max_blob_size must be positive, got {i}"))?
            }
            (None, Some(toml::Value::String(s))) => parse_size(&s)?,
            (None, Some(other)) => return Err(format!("max_blob_size: unexpected {other}")),
            (None, None) => 1 << 40,
        };
        let shutdown_timeout = match (self.shutdown_timeout, file.shutdown_timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => parse_duration(&s)?,
            (None, None) => Duration::from_secs(30),
        };
        let site = self
            .site
            .or(file.site)
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "stowage".to_string());
        Ok(Settings {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("stowage-data")),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5001))),
            site,
            max_blob_size,
            verify_reads: self.verify_reads.or(file.verify_reads).unwrap_or(true),
            direct_io: self.direct_io.or(file.direct_io).unwrap_or(true),
            sync_index: self.sync_index.or(file.sync_index).unwrap_or(true),
            shutdown_timeout,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: self
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert!(parse_size("10Q").is_err());
        assert!(parse_size("G").is_err());
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:7000\"\nmax_blob_size = \"2G\"\nsite = \"dc1\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:9000".parse().unwrap()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.max_blob_size, 2 << 30);
        assert_eq!(s.site, "dc1");
        assert_eq!(s.admin_listen.port(), 5001);
        assert!(s.verify_reads && s.sync_index);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        std::fs::write(&path, "shutdown_timeout = \"whenever\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("whenever"), "{err}");
    }
}
