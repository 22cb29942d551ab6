//! Starting a storage test server (moto, Azurite) for the life of the test process, and a
//! minimal HTTP client to set it up. Shared by `moto.rs` and `azurite.rs`, here and in the
//! workspace's end-to-end tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Starts `command(port)` on a free loopback port under a watchdog shell that ends it when this
/// test process exits, waits until it answers HTTP, and returns its endpoint. `name` is for
/// messages.
pub fn start(name: &str, command: impl FnOnce(u16) -> String) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let me = std::process::id();
    let script = format!(
        "{} >/dev/null 2>&1 & m=$!; \
         while kill -0 {me} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
        command(port)
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
    while request("GET", port, "/", &[]).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not answer on {endpoint} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    endpoint
}

/// The port of an endpoint returned by [`start`].
pub fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// A minimal HTTP/1.1 request without a body; the status code.
pub fn request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, String)],
) -> Result<u16, String> {
    exchange(method, port, path, headers).map(|(status, _)| status)
}

/// A minimal HTTP/1.1 `GET`; the status code and the whole response text (headers and body).
pub fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    exchange("GET", port, path, &[])
}

fn exchange(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no status".to_string())?;
    Ok((status, buf))
}
