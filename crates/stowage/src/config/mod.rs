//! Daemon configuration: command-line flags, `STOWAGE_*` environment variables and a TOML file.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in default. Every
//! option has all three forms: `--max-blob-size` / `STOWAGE_MAX_BLOB_SIZE` / `max_blob_size`.
//! Security settings (TLS, authentication, audit, limits) are in [`security`].

pub mod feed;
pub mod scrub;
pub mod security;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use stowage_gc::GcConfig;

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
    /// Address of the admin gRPC service (info, GC, accounts, audit, health).
    /// Default: 127.0.0.1:5001
    #[arg(long, env = "STOWAGE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Address of the replication gRPC service that peers connect to (`listen` in
    /// `[replication]`). Default: 127.0.0.1:5002
    #[arg(long, env = "STOWAGE_REPL_LISTEN", value_name = "ADDR")]
    pub repl_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) of the OCI API (`[tls] cert`).
    #[arg(long, env = "STOWAGE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the OCI API (`[tls] key`).
    #[arg(long, env = "STOWAGE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle client certificates of the OCI API are checked against (`[tls] client_ca`).
    #[arg(long, env = "STOWAGE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Client certificates on the OCI API: none, optional or required (`[tls] client_auth`).
    #[arg(long, env = "STOWAGE_TLS_CLIENT_AUTH", value_name = "MODE")]
    pub tls_client_auth: Option<String>,
    /// Accept plain HTTP on non-loopback addresses (`allow_insecure`). Default: false
    #[arg(long, env = "STOWAGE_ALLOW_INSECURE", value_name = "BOOL")]
    pub allow_insecure: Option<bool>,
    /// Authentication of the OCI API: none, basic, token or external (`[auth] mode`).
    /// Default: none, which is only accepted on loopback addresses
    #[arg(long, env = "STOWAGE_AUTH_MODE", value_name = "MODE")]
    pub auth_mode: Option<String>,
    /// An htpasswd file (bcrypt) whose users may log in (`[auth] htpasswd`).
    #[arg(long, env = "STOWAGE_AUTH_HTPASSWD", value_name = "FILE")]
    pub auth_htpasswd: Option<PathBuf>,
    /// The token realm clients are sent to (`[auth] realm`). Default: this server's token
    /// path, at the host and scheme the client used
    #[arg(long, env = "STOWAGE_AUTH_REALM", value_name = "URL")]
    pub auth_realm: Option<String>,
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
    /// Block cache of the index, shared by all its column families (suffixes K, M, G
    /// accepted). Default: 256M
    #[arg(long, env = "STOWAGE_INDEX_CACHE", value_name = "BYTES", value_parser = parse_size)]
    pub index_cache: Option<u64>,
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
    /// How often the daemon runs garbage collection on its own (file: `interval` in `[gc]`);
    /// 0s turns the schedule off. Default: off
    #[arg(long, env = "STOWAGE_GC_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_interval: Option<Duration>,
    /// Garbage collection keeps unreachable content younger than this (file: `grace` in
    /// `[gc]`). Default: 1h
    #[arg(long, env = "STOWAGE_GC_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_grace: Option<Duration>,
    /// How long garbage collection keeps the bytes of blobs it took out of service before
    /// removing them for good (file: `quarantine` in `[gc]`); 0s removes them in the same run.
    /// Default: 24h
    #[arg(long, env = "STOWAGE_GC_QUARANTINE", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_quarantine: Option<Duration>,
    /// Garbage collection removes upload sessions idle for longer than this, with their staged
    /// bytes (file: `upload_expiry` in `[gc]`). Default: 24h
    #[arg(long, env = "STOWAGE_GC_UPLOAD_EXPIRY", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_upload_expiry: Option<Duration>,
    /// Garbage collection removes manifests no tag, index or live subject reaches (file:
    /// `delete_untagged` in `[gc]`); false keeps every manifest and collects only unreferenced
    /// blobs. Default: false
    #[arg(long, env = "STOWAGE_GC_DELETE_UNTAGGED", value_name = "BOOL")]
    pub gc_delete_untagged: Option<bool>,
    /// A blob or manifest a client has just found (HEAD/GET) or stored is kept from garbage
    /// collection for between one and two of these, so that a push that skipped an existing
    /// layer finds it at its manifest put (file: `seen_window` in `[gc]`; "0s" turns it off).
    /// Default: 10m
    #[arg(long, env = "STOWAGE_GC_SEEN_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_seen_window: Option<Duration>,
    /// Where blobs live: filesystem (default), s3, gcs, azure or memory (`[storage] backend`).
    #[arg(long, env = "STOWAGE_STORAGE_BACKEND", value_name = "KIND")]
    pub storage_backend: Option<String>,
    /// Bucket (S3, GCS) or container (Azure) (`[storage] bucket`).
    #[arg(long, env = "STOWAGE_STORAGE_BUCKET", value_name = "NAME")]
    pub storage_bucket: Option<String>,
    /// Key prefix in the bucket (`[storage] prefix`).
    #[arg(long, env = "STOWAGE_STORAGE_PREFIX", value_name = "PREFIX")]
    pub storage_prefix: Option<String>,
    /// Endpoint URL of an S3-compatible server or an Azure emulator (`[storage] endpoint`).
    #[arg(long, env = "STOWAGE_STORAGE_ENDPOINT", value_name = "URL")]
    pub storage_endpoint: Option<String>,
    /// S3 region (`[storage] region`).
    #[arg(long, env = "STOWAGE_STORAGE_REGION", value_name = "REGION")]
    pub storage_region: Option<String>,
    /// S3 path-style requests (`[storage] path_style`).
    #[arg(long, env = "STOWAGE_STORAGE_PATH_STYLE", value_name = "BOOL")]
    pub storage_path_style: Option<bool>,
    /// Allow a plain-HTTP endpoint (`[storage] allow_http`; test servers).
    #[arg(long, env = "STOWAGE_STORAGE_ALLOW_HTTP", value_name = "BOOL")]
    pub storage_allow_http: Option<bool>,
    /// Size of the parts large blobs are written in (`[storage] part_size`).
    #[arg(long, env = "STOWAGE_STORAGE_PART_SIZE", value_name = "BYTES", value_parser = parse_size)]
    pub storage_part_size: Option<u64>,
    /// S3 only: how the store offers create-if-absent copies: `multipart` (Amazon S3), or
    /// `header:NAME:VALUE` (`[storage] copy_if_not_exists`).
    #[arg(long, env = "STOWAGE_STORAGE_COPY_IF_NOT_EXISTS", value_name = "MODE")]
    pub storage_copy_if_not_exists: Option<String>,
    /// Space kept free on the data dir's file system: below it new blob bytes are refused with
    /// 507 and `Retry-After`, so the index always has room (`[storage] min_free_space`; "0"
    /// turns the check off). Default: 1G
    #[arg(long, env = "STOWAGE_STORAGE_MIN_FREE_SPACE", value_name = "BYTES", value_parser = parse_size)]
    pub storage_min_free_space: Option<u64>,
    #[command(flatten)]
    pub scrub: scrub::ScrubArgs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    backend: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    allow_http: Option<bool>,
    part_size: Option<toml::Value>,
    copy_if_not_exists: Option<String>,
    min_free_space: Option<toml::Value>,
}

/// The config file's shape: the same options as the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    allow_insecure: Option<bool>,
    tls: Option<security::TlsFile>,
    auth: Option<security::AuthFile>,
    admin: Option<security::AdminFile>,
    audit: Option<security::AuditFile>,
    limits: Option<security::LimitsFile>,
    site: Option<SiteFile>,
    max_blob_size: Option<toml::Value>,
    verify_reads: Option<bool>,
    direct_io: Option<bool>,
    sync_index: Option<bool>,
    index_cache: Option<toml::Value>,
    shutdown_timeout: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    gc: Option<GcFileConfig>,
    feed: Option<feed::FeedFile>,
    replication: Option<ReplicationFile>,
    storage: Option<StorageFile>,
    scrub: Option<scrub::ScrubFile>,
}

/// `site = "name"` or a `[site]` table with `name`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SiteFile {
    Name(String),
    Table(SiteTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteTable {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationFile {
    /// Address of the replication listener.
    listen: Option<SocketAddr>,
    /// Its TLS (mutual: peers present certificates from `client_ca`).
    tls: Option<security::TlsFile>,
    /// A replicated tag version further than this in the future is refused.
    max_clock_skew: Option<String>,
    #[serde(default)]
    peers: Vec<PeerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: String,
    /// Where to reach it (needed to push to or pull from it).
    endpoint: Option<String>,
    /// push, pull, or absent: this site only serves the peer.
    direction: Option<String>,
    /// The identity its certificate carries (a DNS or URI SAN).
    identity: Option<String>,
    /// Its `[site] name`, when it differs from `name`.
    site: Option<String>,
    /// Other sites whose changes it may relay to this one (a chain's middle site).
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    replicate_deletes: Option<bool>,
    concurrency: Option<usize>,
    /// Bytes per second ("50M" or a number).
    bandwidth_limit: Option<toml::Value>,
    /// Anti-entropy period ("10m"; "0s" turns it off).
    anti_entropy_interval: Option<String>,
}

/// The config file's `[gc]` table: the `--gc-*` options without their prefix.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcFileConfig {
    interval: Option<String>,
    grace: Option<String>,
    quarantine: Option<String>,
    upload_expiry: Option<String>,
    delete_untagged: Option<bool>,
    seen_window: Option<String>,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub repl_listen: SocketAddr,
    /// The site name this start asks for; the store keeps the one fixed at first start.
    pub site: String,
    /// Whether the operator named the site (a flag, the environment or the file).
    pub site_explicit: bool,
    pub max_blob_size: u64,
    pub verify_reads: bool,
    pub direct_io: bool,
    pub sync_index: bool,
    /// Bytes of the index's block cache.
    pub index_cache: u64,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Period of scheduled garbage collection runs; `None` when the schedule is off.
    pub gc_interval: Option<Duration>,
    /// Collector settings.
    pub gc: GcConfig,
    /// How long digests clients have just seen are kept from collection (zero: off).
    pub gc_seen_window: Duration,
    /// Replication peers this site pushes to or pulls from (`[[replication.peers]]` with a
    /// direction).
    pub peers: Vec<stowage_repl::PeerConfig>,
    /// What peers that connect to the replication listener may do (`receive` and `serve`
    /// entries).
    pub peer_access: Vec<stowage_repl::PeerAccess>,
    /// Where blobs live (`[storage]`).
    pub storage: stowage_cas::StorageConfig,
    /// Part size of large blob writes, if set.
    pub part_size: Option<u64>,
    /// Space kept free on the data dir's file system (0: no check).
    pub min_free_space: u64,
    /// TLS, authentication, audit and limits.
    pub security: security::Security,
    /// A replicated tag version further than this in the future is refused.
    pub max_clock_skew: Duration,
    /// The integrity scrub (`[scrub]`).
    pub scrub: stowage_store::scrub::ScrubConfig,
    /// Change-feed trimming and tombstone expiry (`[feed]`).
    pub feed: feed::FeedConfig,
}

/// A peer's settings: how to replicate with it (when it has a direction) and what it may do
/// when it connects here.
fn peer_settings(
    p: PeerFile,
    file: &Path,
) -> Result<
    (
        Option<stowage_repl::PeerConfig>,
        Option<stowage_repl::PeerAccess>,
    ),
    String,
> {
    let at = |key: &str, e: String| {
        format!(
            "config file {}: [[replication.peers]] {:?}: {key}: {e}",
            file.display(),
            p.name
        )
    };
    let name_ok = !p.name.is_empty()
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(at("name", "use letters, digits, '-', '_' or '.'".into()));
    }
    // push/pull: this site connects to the peer; receive/serve: the peer connects here and
    // may write / read within this entry's filters.
    let (direction, role) = match p.direction.as_deref() {
        Some("push") => (Some(stowage_repl::Direction::Push), None),
        Some("pull") => (Some(stowage_repl::Direction::Pull), None),
        Some("receive") => (None, Some(stowage_repl::PeerRole::Receive)),
        Some("serve") => (None, Some(stowage_repl::PeerRole::Serve)),
        other => {
            return Err(at(
                "direction",
                format!(
                    "{} is not push, pull (this site connects to the peer), receive or serve (the peer connects here and pushes or pulls)",
                    other.map(|o| format!("{o:?}")).unwrap_or_else(|| "missing: it".into())
                ),
            ))
        }
    };
    let endpoint = p.endpoint.clone().unwrap_or_default();
    if direction.is_some() && endpoint.is_empty() {
        return Err(at(
            "endpoint",
            "needed to push to or pull from the peer".into(),
        ));
    }
    if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(at(
            "endpoint",
            format!("{endpoint:?} must start with http:// or https://"),
        ));
    }
    stowage_repl::glob::check_patterns(&p.repositories).map_err(|e| at("repositories", e))?;
    stowage_repl::glob::check_patterns(&p.tags).map_err(|e| at("tags", e))?;
    let identity = p.identity.clone().filter(|i| !i.is_empty());
    if endpoint.starts_with("https://") && identity.is_none() {
        return Err(at(
            "identity",
            "an https peer needs the certificate identity it must present (a DNS or URI SAN)"
                .into(),
        ));
    }
    let filters = stowage_repl::Filters {
        repositories: p.repositories.clone(),
        tags: p.tags.clone(),
    };
    let site = p.site.clone().unwrap_or_else(|| p.name.clone());
    if let Some(role) = role {
        if role == stowage_repl::PeerRole::Serve && !p.tags.is_empty() {
            // Reads are granted by repository: a tag filter would not stop the peer reading
            // the manifests and blobs of other tags, so it is refused rather than implied.
            return Err(at(
                "tags",
                "a serve entry grants reads by repository; tag filters are not enforced on \
                 reads (put them on the pulling site's pull entry)"
                    .into(),
            ));
        }
        if identity.is_none() {
            return Err(at(
                "identity",
                "a peer that connects here is known by its certificate identity (a DNS or URI SAN)"
                    .into(),
            ));
        }
        return Ok((
            None,
            Some(stowage_repl::PeerAccess {
                name: p.name.clone(),
                site,
                identity,
                origins: p.origins.clone(),
                role,
                filters,
                replicate_deletes: p.replicate_deletes.unwrap_or(true),
            }),
        ));
    }
    let Some(direction) = direction else {
        return Err(at("direction", "missing".into()));
    };
    let mut peer = stowage_repl::PeerConfig::new(&p.name, &endpoint, direction);
    peer.identity = identity;
    peer.site = site;
    peer.origins = p.origins.clone();
    peer.filters = filters;
    if let Some(d) = p.replicate_deletes {
        peer.replicate_deletes = d;
    }
    if let Some(c) = p.concurrency {
        if c == 0 || c > 64 {
            return Err(at("concurrency", format!("{c} is not between 1 and 64")));
        }
        peer.concurrency = c;
    }
    peer.bandwidth = match &p.bandwidth_limit {
        None => None,
        Some(toml::Value::Integer(i)) => {
            Some(u64::try_from(*i).map_err(|_| at("bandwidth_limit", format!("{i} is negative")))?)
        }
        Some(toml::Value::String(s)) => Some(parse_size(s).map_err(|e| at("bandwidth_limit", e))?),
        Some(other) => return Err(at("bandwidth_limit", format!("unexpected {other}"))),
    }
    .filter(|b| *b > 0);
    if let Some(t) = &p.anti_entropy_interval {
        let d = parse_duration(t).map_err(|e| at("anti_entropy_interval", e))?;
        peer.anti_entropy_interval = (!d.is_zero()).then_some(d);
    }
    Ok((Some(peer), None))
}

/// A size given as a flag (already parsed), or in the file as a number or a string with a
/// unit, or the default.
fn size_setting(
    name: &str,
    flag: Option<u64>,
    file: Option<toml::Value>,
    default: u64,
) -> Result<u64, String> {
    match (flag, file) {
        (Some(v), _) => Ok(v),
        (None, Some(toml::Value::Integer(i))) => {
            u64::try_from(i).map_err(|_| format!("{name} must be positive, got {i}"))
        }
        (None, Some(toml::Value::String(s))) => parse_size(&s).map_err(|e| format!("{name}: {e}")),
        (None, Some(other)) => Err(format!("{name}: unexpected {other}")),
        (None, None) => Ok(default),
    }
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
        let max_blob_size = size_setting(
            "max_blob_size",
            self.max_blob_size,
            file.max_blob_size,
            1 << 40,
        )?;
        let index_cache = size_setting(
            "index_cache",
            self.index_cache,
            file.index_cache,
            stowage_store::DEFAULT_INDEX_CACHE_BYTES as u64,
        )?;
        let shutdown_timeout = match (self.shutdown_timeout, file.shutdown_timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => parse_duration(&s)?,
            (None, None) => Duration::from_secs(30),
        };
        let gc_file = file.gc.unwrap_or_default();
        // A `[gc]` duration: the flag or environment variable, else the file's string.
        let gc_duration =
            |flag: Option<Duration>, key: &str, text: Option<String>| match (flag, text) {
                (Some(d), _) => Ok(Some(d)),
                (None, Some(t)) => parse_duration(&t).map(Some).map_err(|e| {
                    let file = self.config.as_deref().unwrap_or(Path::new("?"));
                    format!("config file {}: [gc] {key}: {e}", file.display())
                }),
                (None, None) => Ok(None),
            };
        let defaults = GcConfig::default();
        let gc = GcConfig {
            grace: gc_duration(self.gc_grace, "grace", gc_file.grace)?.unwrap_or(defaults.grace),
            quarantine: gc_duration(self.gc_quarantine, "quarantine", gc_file.quarantine)?
                .unwrap_or(defaults.quarantine),
            upload_expiry: gc_duration(
                self.gc_upload_expiry,
                "upload_expiry",
                gc_file.upload_expiry,
            )?
            .unwrap_or(defaults.upload_expiry),
            delete_untagged: self
                .gc_delete_untagged
                .or(gc_file.delete_untagged)
                .unwrap_or(defaults.delete_untagged),
        };
        let gc_interval =
            gc_duration(self.gc_interval, "interval", gc_file.interval)?.filter(|d| !d.is_zero());
        let gc_seen_window = gc_duration(self.gc_seen_window, "seen_window", gc_file.seen_window)?
            .unwrap_or(Duration::from_secs(600));
        let file_path = self.config.clone().unwrap_or_default();
        let scrub = scrub::resolve(&self.scrub, file.scrub, &file_path)?;
        let feed = file.feed.unwrap_or_default().resolve(&file_path)?;
        let mut peers = Vec::new();
        let repl_file = file.replication.unwrap_or_default();
        let repl_listen = self
            .repl_listen
            .or(repl_file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5002)));
        let max_clock_skew = match &repl_file.max_clock_skew {
            Some(t) => {
                parse_duration(t).map_err(|e| format!("[replication] max_clock_skew: {e}"))?
            }
            None => Duration::from_secs(300),
        };
        let repl_tls = repl_file.tls;
        let mut peer_access: Vec<stowage_repl::PeerAccess> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for p in repl_file.peers {
            let name = p.name.clone();
            let (mut peer, access) = peer_settings(p, &file_path)?;
            if names.contains(&name) {
                return Err(format!(
                    "config file {}: peer {name:?} is configured twice",
                    file_path.display(),
                ));
            }
            names.push(name);
            if let Some(peer) = &mut peer {
                peer.max_clock_skew = max_clock_skew;
            }
            peer_access.extend(access);
            peers.extend(peer);
        }
        let sf = file.storage.unwrap_or_default();
        let kind: stowage_cas::StorageKind = match self.storage_backend.or(sf.backend) {
            Some(k) => k.parse().map_err(|e| format!("[storage] backend: {e}"))?,
            None => stowage_cas::StorageKind::Filesystem,
        };
        let storage = stowage_cas::StorageConfig {
            kind,
            bucket: self.storage_bucket.or(sf.bucket),
            prefix: self.storage_prefix.or(sf.prefix),
            endpoint: self.storage_endpoint.or(sf.endpoint),
            region: self.storage_region.or(sf.region),
            path_style: self.storage_path_style.or(sf.path_style).unwrap_or(false),
            allow_http: self.storage_allow_http.or(sf.allow_http).unwrap_or(false),
            copy_if_not_exists: self
                .storage_copy_if_not_exists
                .or(sf.copy_if_not_exists)
                .filter(|c| !c.trim().is_empty()),
        };
        let min_free_space = match (self.storage_min_free_space, sf.min_free_space) {
            (Some(v), _) => v,
            (None, Some(toml::Value::Integer(i))) => u64::try_from(i)
                .map_err(|_| format!("[storage] min_free_space: {i} is negative"))?,
            (None, Some(toml::Value::String(s))) => parse_size(&s)?,
            (None, Some(other)) => {
                return Err(format!("[storage] min_free_space: unexpected {other}"))
            }
            (None, None) => 1 << 30,
        };
        let part_size = match (self.storage_part_size, sf.part_size) {
            (Some(v), _) => Some(v),
            (None, Some(toml::Value::Integer(i))) => Some(
                u64::try_from(i).map_err(|_| format!("[storage] part_size: {i} is negative"))?,
            ),
            (None, Some(toml::Value::String(s))) => Some(parse_size(&s)?),
            (None, Some(other)) => return Err(format!("[storage] part_size: unexpected {other}")),
            (None, None) => None,
        };
        if let Some(p) = part_size {
            // S3 needs parts of at least 5 MiB (but the last); keep memory per upload bounded.
            if !((5 << 20)..=(512 << 20)).contains(&p) {
                return Err(format!(
                    "[storage] part_size: {p} is not between 5M and 512M"
                ));
            }
        }
        let file_site = file.site.map(|s| match s {
            SiteFile::Name(n) => n,
            SiteFile::Table(t) => t.name,
        });
        let explicit_site = self.site.or(file_site).filter(|s| !s.is_empty());
        let site_explicit = explicit_site.is_some();
        let site = explicit_site
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "stowage".to_string());
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("stowage-data"));
        let security = security::resolve(
            security::SecurityFlags {
                tls_cert: self.tls_cert,
                tls_key: self.tls_key,
                tls_client_ca: self.tls_client_ca,
                tls_client_auth: self.tls_client_auth,
                allow_insecure: self.allow_insecure,
                auth_mode: self.auth_mode,
                auth_htpasswd: self.auth_htpasswd,
                auth_realm: self.auth_realm,
            },
            security::SecurityFile {
                tls: file.tls,
                allow_insecure: file.allow_insecure,
                auth: file.auth,
                admin: file.admin,
                repl_tls,
                audit: file.audit,
                limits: file.limits,
            },
            &data_dir,
        )
        .map_err(|e| match &self.config {
            Some(p) => format!("config file {}: {e}", p.display()),
            None => e,
        })?;
        Ok(Settings {
            data_dir,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5001))),
            site,
            site_explicit,
            max_blob_size,
            verify_reads: self.verify_reads.or(file.verify_reads).unwrap_or(true),
            direct_io: self.direct_io.or(file.direct_io).unwrap_or(true),
            sync_index: self.sync_index.or(file.sync_index).unwrap_or(true),
            index_cache,
            shutdown_timeout,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: self
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            repl_listen,
            gc_interval,
            gc,
            gc_seen_window,
            peers,
            peer_access,
            storage,
            part_size,
            min_free_space,
            security,
            max_clock_skew,
            scrub,
            feed,
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
        assert_eq!(s.index_cache, 256 << 20);
    }

    #[test]
    fn index_cache_is_set_by_file_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(&path, "index_cache = \"64M\"\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(from_file.resolve().unwrap().index_cache, 64 << 20);
        let flag = ServeArgs {
            config: Some(path),
            index_cache: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(flag.resolve().unwrap().index_cache, 1 << 30);
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

    fn resolve_file(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(&path, text).unwrap();
        ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
    }

    #[test]
    fn gc_defaults() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.gc_interval, None, "no schedule unless asked for");
        assert_eq!(s.gc, GcConfig::default());
        assert_eq!(s.gc.grace, Duration::from_secs(3600));
        assert_eq!(s.gc.quarantine, Duration::from_secs(24 * 3600));
        assert_eq!(s.gc.upload_expiry, Duration::from_secs(24 * 3600));
        assert!(
            !s.gc.delete_untagged,
            "untagged manifests are kept unless asked"
        );
        // An empty [gc] table is the same as none.
        let s = resolve_file("[gc]\n").unwrap();
        assert_eq!((s.gc_interval, s.gc), (None, GcConfig::default()));
    }

    #[test]
    fn gc_section_from_file_and_flags() {
        let s = resolve_file(
            "listen = \"127.0.0.1:7000\"\n\n[gc]\ninterval = \"6h\"\ngrace = \"30m\"\n\
             quarantine = \"0s\"\nupload_expiry = \"2h 30m\"\ndelete_untagged = false\n\
             seen_window = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(s.gc_interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(s.gc_seen_window, Duration::from_secs(90));
        assert_eq!(
            s.gc,
            GcConfig {
                grace: Duration::from_secs(30 * 60),
                quarantine: Duration::ZERO,
                upload_expiry: Duration::from_secs(150 * 60),
                delete_untagged: false,
            }
        );
        // "0s" turns the schedule off.
        let s = resolve_file("[gc]\ninterval = \"0s\"\n").unwrap();
        assert_eq!(s.gc_interval, None);
        // Flags (and so environment variables) beat the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(&path, "[gc]\ninterval = \"1h\"\ngrace = \"2h\"\n").unwrap();
        let s = ServeArgs {
            config: Some(path),
            gc_interval: Some(Duration::ZERO),
            gc_grace: Some(Duration::from_secs(5)),
            gc_delete_untagged: Some(false),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.gc_interval, None);
        assert_eq!(s.gc.grace, Duration::from_secs(5));
        assert!(!s.gc.delete_untagged);
        assert_eq!(s.gc.quarantine, GcConfig::default().quarantine);
    }

    #[test]
    fn gc_flags_and_environment_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from([
            "stowage",
            "--gc-interval",
            "12h",
            "--gc-quarantine",
            "0s",
            "--gc-upload-expiry",
            "90m",
            "--gc-delete-untagged",
            "false",
        ])
        .unwrap();
        let s = cli.serve.resolve().unwrap();
        assert_eq!(s.gc_interval, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.gc.quarantine, Duration::ZERO);
        assert_eq!(s.gc.upload_expiry, Duration::from_secs(90 * 60));
        assert!(!s.gc.delete_untagged);
        let err = Cli::try_parse_from(["stowage", "--gc-grace", "a while"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("a while") && err.contains("--gc-grace"),
            "{err}"
        );
    }

    #[test]
    fn gc_bad_values_are_clear_errors() {
        let err = resolve_file("[gc]\ngrace = \"whenever\"\n").unwrap_err();
        assert!(
            err.contains("[gc] grace") && err.contains("whenever") && err.contains("stowage.toml"),
            "{err}"
        );
        let err = resolve_file("[gc]\ninterval = \"-5m\"\n").unwrap_err();
        assert!(err.contains("[gc] interval"), "{err}");
        let err = resolve_file("[gc]\ngrace = 60\n").unwrap_err();
        assert!(err.contains("grace"), "{err}");
        let err = resolve_file("[gc]\ngrase = \"1h\"\n").unwrap_err();
        assert!(err.contains("grase"), "{err}");
        // The gc keys belong in [gc], not at the top level.
        let err = resolve_file("grace = \"1h\"\n").unwrap_err();
        assert!(err.contains("grace"), "{err}");
    }

    #[test]
    fn deploy_example_config_parses() {
        let s = resolve_file(include_str!("../../../../deploy/stowage.toml")).unwrap();
        assert_eq!(s.gc_interval, None);
        assert_eq!(s.gc, GcConfig::default());
    }

    #[test]
    fn site_table_and_replication_peers() {
        let s = resolve_file(
            "[site]\nname = \"private-dc\"\n\n[[replication.peers]]\nname = \"cloud\"\nendpoint = \"http://127.0.0.1:6001\"\ndirection = \"push\"\nrepositories = [\"team-a/**\"]\ntags = [\"v*\"]\nreplicate_deletes = false\nconcurrency = 8\nbandwidth_limit = \"50M\"\nanti_entropy_interval = \"0s\"\n\n[[replication.peers]]\nname = \"dr\"\nendpoint = \"http://10.0.0.2:5001\"\ndirection = \"pull\"\n",
        )
        .unwrap();
        assert_eq!(s.site, "private-dc");
        assert_eq!(s.peers.len(), 2);
        let cloud = &s.peers[0];
        assert_eq!(cloud.direction, stowage_repl::Direction::Push);
        assert_eq!(cloud.filters.repositories, vec!["team-a/**".to_string()]);
        assert_eq!(cloud.filters.tags, vec!["v*".to_string()]);
        assert!(!cloud.replicate_deletes);
        assert_eq!(cloud.concurrency, 8);
        assert_eq!(cloud.bandwidth, Some(50 << 20));
        assert_eq!(cloud.anti_entropy_interval, None);
        let dr = &s.peers[1];
        assert_eq!(dr.direction, stowage_repl::Direction::Pull);
        assert!(dr.replicate_deletes, "deletes replicate by default");
        assert!(dr.filters.repositories.is_empty());
        assert!(dr.anti_entropy_interval.is_some());
        // The plain form still works.
        assert_eq!(resolve_file("site = \"dc2\"\n").unwrap().site, "dc2");
    }

    #[test]
    fn bad_peers_are_clear_errors() {
        let base =
            "[[replication.peers]]\nname = \"cloud\"\nendpoint = \"http://127.0.0.1:6001\"\n";
        let err = resolve_file(&format!("{base}direction = \"sideways\"\n")).unwrap_err();
        assert!(err.contains("cloud") && err.contains("sideways"), "{err}");
        let err =
            resolve_file(&format!("{base}direction = \"push\"\nconcurrency = 0\n")).unwrap_err();
        assert!(err.contains("concurrency"), "{err}");
        let err = resolve_file(&format!(
            "{base}direction = \"push\"\n{base}direction = \"pull\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = resolve_file("[[replication.peers]]\nname = \"x\"\nendpoint = \"127.0.0.1:1\"\ndirection = \"push\"\n").unwrap_err();
        assert!(err.contains("http://"), "{err}");
    }

    #[test]
    fn the_two_site_examples_parse() {
        let private =
            resolve_file(include_str!("../../../../deploy/two-sites/private-dc.toml")).unwrap();
        assert_eq!(private.site, "private-dc");
        assert_eq!(private.peers.len(), 2);
        assert_eq!(private.peers[1].direction, stowage_repl::Direction::Pull);
        assert_eq!(private.peers[0].bandwidth, Some(200 << 20));
        let cloud = resolve_file(include_str!("../../../../deploy/two-sites/cloud.toml")).unwrap();
        assert_eq!(cloud.site, "cloud");
        assert!(cloud.peers.is_empty());
        // What the private datacenter may do when it connects: push anything, pull releases.
        assert_eq!(cloud.peer_access.len(), 2);
        let receive = &cloud.peer_access[0];
        assert_eq!(receive.role, stowage_repl::PeerRole::Receive);
        assert_eq!(receive.site, "private-dc");
        let serve = &cloud.peer_access[1];
        assert_eq!(serve.role, stowage_repl::PeerRole::Serve);
        assert_eq!(serve.site, "private-dc");
        assert!(serve.filters.repo_ok("cloud-builds/x") && !serve.filters.repo_ok("prod/app"));
        // A peer entry must say which way it works.
        let err = resolve_file("[[replication.peers]]\nname = \"x\"\nidentity = \"spiffe://x\"\n")
            .unwrap_err();
        assert!(err.contains("receive or serve"), "{err}");
        let err = resolve_file("[[replication.peers]]\nname = \"x\"\ndirection = \"receive\"\n")
            .unwrap_err();
        assert!(err.contains("identity"), "{err}");
        let err = resolve_file("[[replication.peers]]\nname = \"x\"\nidentity = \"spiffe://x\"\ndirection = \"serve\"\ntags = [\"v*\"]\n")
            .unwrap_err();
        assert!(
            err.contains("tags") && err.contains("by repository"),
            "{err}"
        );
    }

    #[test]
    fn storage_section_flags_and_errors() {
        let s = resolve_file(
            "[storage]\nbackend = \"s3\"\nbucket = \"blobs\"\nprefix = \"site-a\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\npath_style = true\nallow_http = true\npart_size = \"16M\"\n",
        )
        .unwrap();
        assert_eq!(s.storage.kind, stowage_cas::StorageKind::S3);
        assert_eq!(s.storage.bucket.as_deref(), Some("blobs"));
        assert_eq!(s.storage.prefix.as_deref(), Some("site-a"));
        assert_eq!(s.storage.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.storage.region.as_deref(), Some("eu-west-1"));
        assert!(s.storage.path_style && s.storage.allow_http);
        assert_eq!(s.part_size, Some(16 << 20));
        // The default is the file system, with no part size override.
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.storage.kind, stowage_cas::StorageKind::Filesystem);
        assert_eq!(d.part_size, None);
        // Flags win.
        let args = ServeArgs {
            storage_backend: Some("memory".into()),
            ..Default::default()
        };
        assert_eq!(
            args.resolve().unwrap().storage.kind,
            stowage_cas::StorageKind::Memory
        );
        let err = resolve_file("[storage]\nbackend = \"tape\"\n").unwrap_err();
        assert!(err.contains("tape"), "{err}");
        let err = resolve_file("[storage]\npart_size = \"1M\"\n").unwrap_err();
        assert!(err.contains("part_size"), "{err}");
        let err = resolve_file("[storage]\nbuckt = \"x\"\n").unwrap_err();
        assert!(err.contains("buckt"), "{err}");
        // A bucketless object store is refused when the store is built.
        let s3 = stowage_cas::StorageConfig {
            kind: stowage_cas::StorageKind::S3,
            ..Default::default()
        };
        let err = s3
            .backend(std::path::Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bucket"), "{err}");
        // Create-if-absent copies: an S3 setting, in object_store's notation.
        let s = resolve_file(
            "[storage]\nbackend = \"s3\"\nbucket = \"b\"\ncopy_if_not_exists = \"multipart\"\n",
        )
        .unwrap();
        assert_eq!(s.storage.copy_if_not_exists.as_deref(), Some("multipart"));
        assert!(s.storage.backend(std::path::Path::new("/d")).is_ok());
        let bad = stowage_cas::StorageConfig {
            copy_if_not_exists: Some("sometimes".into()),
            ..s.storage.clone()
        };
        let err = bad
            .backend(std::path::Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
        let azure = stowage_cas::StorageConfig {
            kind: stowage_cas::StorageKind::Azure,
            ..s.storage
        };
        let err = azure
            .backend(std::path::Path::new("/d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("S3 setting"), "{err}");
    }
}
