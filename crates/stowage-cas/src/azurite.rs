//! An Azure Blob Storage test server for the conformance suite: Azurite's blob service, installed
//! by `scripts/install-deps.sh --test` into `$HOME/.cache/stowage/azurite` (or
//! `STOWAGE_AZURITE_BLOB`). One server per test process, started on first use on a free loopback
//! port and kept in memory; a watchdog shell ends it when the test process exits. Each caller gets
//! a container of its own.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::testserver;

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (public: it is in Azurite's and Microsoft's documentation).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The account's URL (`http://127.0.0.1:PORT/devstoreaccount1`): Azurite takes the account from
/// the first path segment.
pub fn account_url() -> String {
    format!("{}/{ACCOUNT}", endpoint())
}

/// The server's endpoint (`http://127.0.0.1:PORT`).
pub fn endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start).clone()
}

fn binary() -> String {
    if let Ok(p) = std::env::var("STOWAGE_AZURITE_BLOB") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = format!("{home}/.cache/stowage/azurite/node_modules/.bin/azurite-blob");
    assert!(
        std::path::Path::new(&p).exists(),
        "azurite-blob not found at {p}: run scripts/install-deps.sh --test (CI does this in .ci/run)"
    );
    p
}

fn start() -> String {
    let bin = binary();
    // In memory (nothing is written to the working directory; Azurite refuses `--location` with
    // it), no telemetry.
    testserver::start("azurite-blob", |port| {
        format!(
            "{bin} --blobHost 127.0.0.1 --blobPort {port} --inMemoryPersistence \
             --skipApiVersionCheck --disableTelemetry --silent"
        )
    })
}

fn port() -> u16 {
    testserver::port_of(&endpoint())
}

/// `t` as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A new, empty container, created with a SharedKey-signed `Create Container` request (Azurite
/// refuses anonymous ones).
pub fn container() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Container names: 3-63 characters, lower-case letters, digits and single hyphens.
    let name = format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let date = http_date(SystemTime::now());
    let version = "2023-11-03";
    // Path-style (emulator) URLs: the account is both the signer and the first path segment.
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64.decode(KEY).unwrap());
    let signature = b64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    let status = testserver::request(
        "PUT",
        port(),
        &format!("/{ACCOUNT}/{name}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.to_string()),
            ("Authorization", format!("SharedKey {ACCOUNT}:{signature}")),
        ],
    )
    .unwrap();
    assert_eq!(status, 201, "creating container {name}");
    name
}

#[test]
fn http_dates() {
    assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
        "Thu, 29 Feb 2024 12:34:56 GMT"
    );
}
