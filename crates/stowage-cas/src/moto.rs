//! An S3-compatible test server for the conformance suite: moto's server, installed by
//! `scripts/install-deps.sh --test` into `$HOME/.cache/stowage/venv` (or `STOWAGE_MOTO_SERVER`).
//! One server per test process, started on first use on a free loopback port; a watchdog shell
//! ends it when the test process exits. Each caller gets a bucket of its own.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server's endpoint (`http://127.0.0.1:PORT`).
pub fn endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start).clone()
}

fn binary() -> String {
    if let Ok(p) = std::env::var("STOWAGE_MOTO_SERVER") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = format!("{home}/.cache/stowage/venv/bin/moto_server");
    assert!(
        std::path::Path::new(&p).exists(),
        "moto_server not found at {p}: run scripts/install-deps.sh --test (CI does this in .ci/run)"
    );
    p
}

fn start() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let me = std::process::id();
    // The server lives as long as this test process: the shell ends it when we are gone.
    let script = format!(
        "{} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {me} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
        binary()
    );
    let mut watchdog = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Reaped when it ends (with this process, or if the server dies).
    std::thread::spawn(move || {
        let _ = watchdog.wait();
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while request("GET", port, "/").is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not answer on {endpoint} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    endpoint
}

fn port() -> u16 {
    endpoint().rsplit(':').next().unwrap().parse().unwrap()
}

/// A minimal HTTP/1.1 request; the status code.
fn request(method: &str, port: u16, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no status".to_string())
}

/// A new, empty bucket.
pub fn bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let status = request("PUT", port(), &format!("/{name}")).unwrap();
    assert_eq!(status, 200, "creating bucket {name}");
    name
}
