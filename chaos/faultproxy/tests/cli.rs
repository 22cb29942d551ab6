//! Runs the `faultproxy` binary the way chaos tests do: parse the listening line from
//! stdout, then talk through it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn binary_prints_address_and_forwards() {
    let echo = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo server");
    let echo_addr = echo.local_addr().expect("echo server address");
    let echo_task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_faultproxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &echo_addr.to_string(),
            "--delay-ms",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn faultproxy binary");

    let stdout = child.stdout.take().expect("child stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = timeout(STEP, lines.next_line())
        .await
        .expect("timed out waiting for the listening line")
        .expect("read child stdout")
        .expect("child closed stdout before printing");
    let addr: SocketAddr = first
        .strip_prefix("faultproxy listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .parse()
        .expect("listening address parses");
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);

    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("timed out connecting")
        .expect("connect through faultproxy");
    stream.write_all(b"via binary").await.expect("write");
    let mut back = [0u8; 10];
    timeout(STEP, stream.read_exact(&mut back))
        .await
        .expect("timed out reading echo")
        .expect("read echo");
    assert_eq!(&back, b"via binary");

    // A SIGTERM (as sent by test harnesses) makes it stop cleanly.
    let pid = child.id().expect("faultproxy still running");
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");
    let status = timeout(STEP, child.wait())
        .await
        .expect("timed out waiting for faultproxy to exit")
        .expect("wait for faultproxy");
    assert!(status.success(), "faultproxy exited with {status}");
    echo_task.abort();
}

#[tokio::test]
async fn binary_rejects_invalid_rates() {
    let output = Command::new(env!("CARGO_BIN_EXE_faultproxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--cut-rate",
            "1.5",
        ])
        .output();
    let output = timeout(STEP, output)
        .await
        .expect("timed out running faultproxy")
        .expect("run faultproxy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("between 0 and 1"), "stderr: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "printed before validating: {output:?}"
    );
}
