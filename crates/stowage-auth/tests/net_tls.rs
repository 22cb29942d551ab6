#![allow(clippy::unwrap_used)]
//! The listener, TLS and peer-client code over real sockets on 127.0.0.1, with certificates
//! generated here: a CA, a server certificate (DNS `localhost`, IP 127.0.0.1, URI
//! `spiffe://stowage/site-a`), client certificates from the same CA and from a second CA.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Router};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use stowage_auth::net::{incoming, serve_http, ConnInfo, ConnStats, Limits, Listener};
use stowage_auth::tls::{
    alpn_grpc, client_config, ClientAuth, PeerConnector, ReloadableTls, TlsError, TlsFiles,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------
// Certificates

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(
        &self,
        sans: Vec<SanType>,
        cn: &str,
        serial: u64,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate: DNS `localhost` and `extra_dns`, IP 127.0.0.1, URI `uri`.
    fn server(&self, serial: u64, extra_dns: &str, uri: &str) -> Leaf {
        self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::DnsName(extra_dns.try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
                SanType::URI(uri.try_into().unwrap()),
            ],
            extra_dns,
            serial,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, serial: u64, uri: &str) -> Leaf {
        self.leaf(
            vec![SanType::URI(uri.try_into().unwrap())],
            "client",
            serial,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

const SITE_A: &str = "spiffe://stowage/site-a";
const CLIENT_ID: &str = "spiffe://stowage/client-1";

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("stowage test CA"),
            other: Ca::new("other CA"),
        };
        pki.write("ca.pem", &pki.ca.pem());
        pki.write("other-ca.pem", &pki.other.pem());
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `leaf` as `<name>.crt` / `<name>.key`; returns the paths.
    fn write_leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &leaf.cert_pem),
            self.write(&format!("{name}.key"), &leaf.key_pem),
        )
    }

    fn server_files(&self, leaf: &Leaf, client_auth: ClientAuth) -> TlsFiles {
        let (cert, key) = self.write_leaf("server", leaf);
        TlsFiles {
            cert,
            key,
            client_ca: (client_auth != ClientAuth::None).then(|| self.path("ca.pem")),
            client_auth,
        }
    }

    /// A client configuration trusting our CA, with host-name verification.
    fn http_client(&self, client: Option<&Leaf>) -> Arc<ClientConfig> {
        let paths = client.map(|leaf| self.write_leaf("client", leaf));
        client_config(
            &self.path("ca.pem"),
            paths.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            None,
            vec![b"http/1.1".to_vec()],
        )
        .unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Server and client helpers

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/info",
            get(|Extension(info): Extension<ConnInfo>| async move {
                let cert = info
                    .client_cert
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |c| c.to_string());
                format!("tls={} remote={} cert={}", info.tls, info.remote, cert)
            }),
        )
        .route(
            "/stream",
            get(|| async {
                // Ten chunks 150 ms apart: a download that outlasts the short timeouts.
                let chunks = futures::stream::unfold(0u8, |i| async move {
                    if i == 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Some((
                        Ok::<_, io::Error>(bytes::Bytes::from_static(b"0123456789")),
                        i + 1,
                    ))
                });
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                "slow"
            }),
        )
}

struct TestServer {
    addr: SocketAddr,
    stats: ConnStats,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

async fn start(tls: Option<ReloadableTls>, limits: Limits) -> TestServer {
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, limits)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve_http(listener, app(), rx));
    TestServer {
        addr,
        stats,
        stop,
        task,
    }
}

impl TestServer {
    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve_http returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls `cond` until it holds, failing the test after `limit`.
async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

/// A minimal HTTP/1.1 client over any stream, so the tests control every byte.
struct H1<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1<S> {
    fn new(io: S) -> Self {
        H1 {
            io,
            buf: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) -> io::Result<Resp> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.io.write_all(request.as_bytes()).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> io::Result<Resp> {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = String::from_utf8(self.buf[head_end..head_end + length].to_vec()).unwrap();
        self.buf.drain(..head_end + length);
        Ok(Resp { status, head, body })
    }

    /// Reads until EOF; `Ok(())` if the server closed the connection within `limit`.
    async fn expect_closed(&mut self, limit: Duration) -> io::Result<()> {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(limit, self.io.read(&mut chunk)).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(n)) => Err(io::Error::other(format!("unexpected {n} bytes"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

fn peer_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

// ---------------------------------------------------------------------------------------
// 1. HTTPS over the listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_request_sees_conn_info() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::None),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    assert_eq!(tls.identity().uris, vec![SITE_A.to_owned()]);
    let server = start(Some(tls), Limits::default()).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let stream = tokio_rustls::TlsConnector::from(pki.http_client(None))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut client = H1::new(stream);
    let resp = client.get("/info").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body,
        format!("tls=true remote={client_addr} cert=none")
    );
    // Keep-alive: a second request on the same connection.
    assert_eq!(client.get("/").await.unwrap().body, "hello");

    let stats = server.stats.snapshot();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.open, 1);
    assert_eq!(stats.handshake_failed, 0);
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_request_sees_conn_info() {
    let server = start(None, Limits::default()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let mut client = H1::new(tcp);
    let resp = client.get("/info").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body,
        format!("tls=false remote={client_addr} cert=none")
    );
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_and_idle_h2_connection_is_closed() {
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::None),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let limits = Limits {
        idle_timeout: ms(300),
        ..Limits::default()
    };
    let server = start(Some(tls), limits).await;
    let config = client_config(&pki.path("ca.pem"), None, None, vec![b"h2".to_vec()]).unwrap();
    let stream = tls_connect(server.addr, config, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get("https://localhost/info")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("tls=true remote=127.0.0.1:"));
    // Idle for longer than idle_timeout: the server sends GOAWAY and the connection ends.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle h2 connection closed by the server")
        .unwrap()
        .unwrap();
    assert_eq!(server.stats.timed_out_idle(), 1);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificate_for_new_connections_only() {
    let pki = Pki::new();
    let first = pki.ca.server(1, "first.test", SITE_A);
    let files = pki.server_files(&first, ClientAuth::None);
    let tls = ReloadableTls::load(files.clone(), stowage_auth::tls::alpn_http()).unwrap();
    let server = start(Some(tls.clone()), Limits::default()).await;
    let client_config = pki.http_client(None);

    let old = tls_connect(server.addr, client_config.clone(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cert(&old), first.der);
    let mut old = H1::new(old);
    assert_eq!(old.get("/").await.unwrap().status, 200);

    // Unchanged files: nothing to do.
    assert!(!tls.reload().unwrap());

    let second = pki.ca.server(2, "second.test", SITE_A);
    pki.write_leaf("server", &second);
    assert!(tls.reload().unwrap());
    assert!(tls.identity().dns.contains(&"second.test".to_owned()));

    let new = tls_connect(server.addr, client_config.clone(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cert(&new), second.der);
    assert_eq!(H1::new(new).get("/").await.unwrap().status, 200);
    // The connection opened before the reload still works (and still has the old cert).
    assert_eq!(old.get("/").await.unwrap().body, "hello");
    assert_eq!(peer_cert(&old.io), first.der);

    // A broken key (garbage inside a PEM frame): reload fails, the second cert keeps serving,
    // and the error names the file without quoting it.
    std::fs::write(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IG1hdGVyaWFs!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = tls.reload().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TlsError::MalformedPem { .. }), "{err:?}");
    assert!(text.contains(&files.key.display().to_string()), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");

    // A key that parses but belongs to another certificate.
    let stranger = pki.ca.server(3, "stranger.test", SITE_A);
    std::fs::write(&files.key, &stranger.key_pem).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // A certificate file with no certificate.
    std::fs::write(&files.cert, "nothing here\n").unwrap();
    assert!(matches!(
        tls.reload().unwrap_err(),
        TlsError::NoCertificate { .. }
    ));

    let after = tls_connect(server.addr, client_config, "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cert(&after), second.der);
    drop(old);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_changed_files() {
    let pki = Pki::new();
    let first = pki.ca.server(1, "first.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&first, ClientAuth::None),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let watcher = tls.spawn_watcher(ms(50), stop_rx);
    tokio::time::sleep(ms(120)).await;

    let second = pki.ca.server(2, "second.test", SITE_A);
    pki.write_leaf("server", &second);
    eventually("the watcher reloads", Duration::from_secs(5), || {
        tls.identity().dns.contains(&"second.test".to_owned())
    })
    .await;

    // A broken pair is refused; the second certificate stays.
    pki.write("server.key", &pki.ca.server(3, "x.test", SITE_A).key_pem);
    tokio::time::sleep(ms(400)).await;
    assert!(tls.identity().dns.contains(&"second.test".to_owned()));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn tls_files_validation() {
    let files = TlsFiles {
        cert: "c".into(),
        key: "k".into(),
        client_ca: None,
        client_auth: ClientAuth::Required,
    };
    let err = ReloadableTls::load(files, Vec::new()).unwrap_err();
    assert!(matches!(err, TlsError::MissingClientCa { .. }), "{err:?}");

    let files = TlsFiles {
        cert: "/nonexistent/server.crt".into(),
        key: "/nonexistent/server.key".into(),
        client_ca: None,
        client_auth: ClientAuth::None,
    };
    let err = ReloadableTls::load(files, Vec::new()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/server.crt"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 3. Client certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::Required),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let server = start(Some(tls), Limits::default()).await;

    // Without a certificate: refused (with TLS 1.3 the client learns it on its first read).
    let attempt = async {
        let stream = tls_connect(server.addr, pki.http_client(None), "localhost").await?;
        H1::new(stream).get("/info").await
    };
    assert!(attempt.await.is_err());

    // With a certificate from the other CA: refused.
    let stranger = pki.other.client(7, CLIENT_ID);
    let attempt = async {
        let stream =
            tls_connect(server.addr, pki.http_client(Some(&stranger)), "localhost").await?;
        H1::new(stream).get("/info").await
    };
    assert!(attempt.await.is_err());
    eventually(
        "both handshakes counted as failed",
        Duration::from_secs(5),
        || server.stats.handshake_failed() == 2,
    )
    .await;

    // With the right certificate: served, and the handler sees its identity.
    let client = pki.ca.client(8, CLIENT_ID);
    let stream = tls_connect(server.addr, pki.http_client(Some(&client)), "localhost")
        .await
        .unwrap();
    let resp = H1::new(stream).get("/info").await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.body
            .ends_with(&format!("cert=uri={CLIENT_ID} cn=client")),
        "{}",
        resp.body
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::Optional),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let server = start(Some(tls), Limits::default()).await;

    let stream = tls_connect(server.addr, pki.http_client(None), "localhost")
        .await
        .unwrap();
    let resp = H1::new(stream).get("/info").await.unwrap();
    assert!(resp.body.ends_with("cert=none"), "{}", resp.body);

    let client = pki.ca.client(8, CLIENT_ID);
    let stream = tls_connect(server.addr, pki.http_client(Some(&client)), "localhost")
        .await
        .unwrap();
    let resp = H1::new(stream).get("/info").await.unwrap();
    assert!(resp
        .body
        .ends_with(&format!("cert=uri={CLIENT_ID} cn=client")));

    // A certificate that does not verify is refused, not ignored.
    let stranger = pki.other.client(9, CLIENT_ID);
    let attempt = async {
        let stream =
            tls_connect(server.addr, pki.http_client(Some(&stranger)), "localhost").await?;
        H1::new(stream).get("/info").await
    };
    assert!(attempt.await.is_err());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4. Client verifier (expected identity instead of host name)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verifier_pins_expected_identity() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::None),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let server = start(Some(tls), Limits::default()).await;
    let ca = pki.path("ca.pem");
    let h1 = || vec![b"http/1.1".to_vec()];
    let pinned = |expected: &str| client_config(&ca, None, Some(expected), h1()).unwrap();

    // The host name dialled does not matter when an identity is expected.
    let stream = tls_connect(server.addr, pinned(SITE_A), "unrelated.invalid")
        .await
        .unwrap();
    assert_eq!(H1::new(stream).get("/").await.unwrap().status, 200);
    let stream = tls_connect(server.addr, pinned("A.TEST"), "unrelated.invalid")
        .await
        .unwrap();
    assert_eq!(H1::new(stream).get("/").await.unwrap().status, 200);

    let err = tls_connect(server.addr, pinned("spiffe://stowage/site-b"), "localhost")
        .await
        .unwrap_err();
    // rustls shows the verifier's error with its Debug form.
    let text = err.to_string();
    assert!(
        text.contains("IdentityMismatch") && text.contains("spiffe://stowage/site-b"),
        "{text}"
    );
    assert!(tls_connect(server.addr, pinned("b.test"), "localhost")
        .await
        .is_err());

    // Without an expected identity: ordinary host-name verification.
    let plain = client_config(&ca, None, None, h1()).unwrap();
    assert!(tls_connect(server.addr, plain.clone(), "localhost")
        .await
        .is_ok());
    assert!(tls_connect(server.addr, plain, "wrong.example")
        .await
        .is_err());

    assert!(matches!(
        client_config(&ca, None, Some("not a name"), h1()),
        Err(TlsError::InvalidExpectedIdentity { .. })
    ));
    server.shutdown().await;

    // A server certificate from another CA is refused even with the right identity.
    let foreign = pki.other.server(2, "a.test", SITE_A);
    let (cert, key) = pki.write_leaf("foreign", &foreign);
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
        client_auth: ClientAuth::None,
    };
    let tls = ReloadableTls::load(files, stowage_auth::tls::alpn_http()).unwrap();
    let server = start(Some(tls), Limits::default()).await;
    let err = tls_connect(server.addr, pinned(SITE_A), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("unknown"), "{err}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 5. Slowloris

/// Opens `n` connections that each send a partial request head and then nothing.
async fn stall(addr: SocketAddr, n: usize, partial: &[u8]) -> Vec<TcpStream> {
    let mut stalled = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        if !partial.is_empty() {
            tcp.write_all(partial).await.unwrap();
        }
        stalled.push(tcp);
    }
    stalled
}

const PARTIAL_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_block_fresh_clients() {
    stowage_auth::net::raise_nofile_limit().unwrap();
    let server = start(None, Limits::default()).await;
    let stalled = stall(server.addr, 200, PARTIAL_HEAD).await;
    eventually(
        "200 stalled connections open",
        Duration::from_secs(10),
        || server.stats.open() == 200,
    )
    .await;

    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let resp = H1::new(tcp).get("/").await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        elapsed < Duration::from_secs(1),
        "fresh client took {elapsed:?}"
    );
    drop(stalled);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_are_closed_after_header_read_timeout() {
    stowage_auth::net::raise_nofile_limit().unwrap();
    let limits = Limits {
        header_read_timeout: ms(500),
        ..Limits::default()
    };
    let server = start(None, limits).await;
    let mut stalled = stall(server.addr, 200, PARTIAL_HEAD).await;
    // Connections that send nothing at all are bounded by the same timeout.
    stalled.extend(stall(server.addr, 10, b"").await);

    let mut closed = 0;
    for tcp in &mut stalled {
        let mut byte = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await {
            Ok(Ok(0)) => closed += 1,
            other => panic!("expected EOF from a stalled connection, got {other:?}"),
        }
    }
    assert_eq!(closed, 210);
    eventually(
        "all stalled connections counted",
        Duration::from_secs(5),
        || server.stats.timed_out_header() == 210 && server.stats.open() == 0,
    )
    .await;
    assert_eq!(server.stats.timed_out_idle(), 0);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 6. Idle keep-alive connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_but_slow_requests_are_not() {
    let limits = Limits {
        idle_timeout: ms(300),
        header_read_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let server = start(None, limits).await;

    let mut idle = H1::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(idle.get("/").await.unwrap().status, 200);
    let since = Instant::now();
    idle.expect_closed(Duration::from_secs(5)).await.unwrap();
    let after = since.elapsed();
    assert!(after >= ms(200), "closed too early: {after:?}");
    assert_eq!(server.stats.timed_out_idle(), 1);

    // A request in flight for longer than idle_timeout is not cut, and the connection stays
    // usable afterwards.
    let mut busy = H1::new(TcpStream::connect(server.addr).await.unwrap());
    let resp = busy.get("/slow").await.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "slow"));
    assert_eq!(busy.get("/").await.unwrap().status, 200);
    assert_eq!(server.stats.timed_out_idle(), 1);
    assert_eq!(server.stats.timed_out_header(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_download_outlasts_header_and_idle_timeouts() {
    let limits = Limits {
        idle_timeout: ms(300),
        header_read_timeout: ms(300),
        ..Limits::default()
    };
    let server = start(None, limits).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The body is chunked; read until its terminating chunk.
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !received.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection cut during the download");
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("0123456789").count(), 10);
    assert_eq!(server.stats.timed_out_idle(), 0);
    assert_eq!(server.stats.timed_out_header(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connection_closed_by_header_timer_counts_as_idle() {
    // header_read_timeout < idle_timeout: hyper's header timer closes the idle keep-alive
    // connection; nothing was received, so it is counted as idle.
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        header_read_timeout: ms(300),
        ..Limits::default()
    };
    let server = start(None, limits).await;
    let mut client = H1::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(client.get("/").await.unwrap().status, 200);
    client.expect_closed(Duration::from_secs(5)).await.unwrap();
    eventually("counted", Duration::from_secs(5), || {
        server.stats.timed_out_idle() == 1
    })
    .await;
    assert_eq!(server.stats.timed_out_header(), 0);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 7. Connection cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_answers_503_then_recovers() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let server = start(None, limits).await;
    let stalled = stall(server.addr, 3, PARTIAL_HEAD).await;
    eventually("3 connections open", Duration::from_secs(5), || {
        server.stats.open() == 3
    })
    .await;

    let mut fourth = H1::new(TcpStream::connect(server.addr).await.unwrap());
    let resp = fourth.get("/").await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(resp.head.contains("Retry-After: 1\r\n"), "{}", resp.head);
    assert!(resp.head.contains("Connection: close\r\n"), "{}", resp.head);
    fourth.expect_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(server.stats.refused_over_limit(), 1);

    drop(stalled);
    eventually("stalled connections gone", Duration::from_secs(5), || {
        server.stats.open() == 0
    })
    .await;
    let mut fresh = H1::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(fresh.get("/").await.unwrap().status, 200);
    drop(fresh);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_closes_tls_connections() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(
        pki.server_files(&leaf, ClientAuth::None),
        stowage_auth::tls::alpn_http(),
    )
    .unwrap();
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let server = start(Some(tls), limits).await;
    let first = tls_connect(server.addr, pki.http_client(None), "localhost")
        .await
        .unwrap();
    assert!(tls_connect(server.addr, pki.http_client(None), "localhost")
        .await
        .is_err());
    assert_eq!(server.stats.refused_over_limit(), 1);
    drop(first);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8. Request head limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        max_headers: 20,
        ..Limits::default()
    };
    let server = start(None, limits).await;

    // One header making the head larger than max_header_bytes.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    tcp.write_all(big.as_bytes()).await.unwrap();
    let mut client = H1::new(tcp);
    let resp = client.read_response().await.unwrap();
    assert_eq!(resp.status, 431);

    // More header fields than max_headers.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    tcp.write_all(many.as_bytes()).await.unwrap();
    let mut client = H1::new(tcp);
    assert_eq!(client.read_response().await.unwrap().status, 431);
    client.expect_closed(Duration::from_secs(5)).await.unwrap();

    // Others are still served, including a head just under the limit.
    let mut client = H1::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(client.get("/").await.unwrap().status, 200);
    let near = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    client.io.write_all(near.as_bytes()).await.unwrap();
    assert_eq!(client.read_response().await.unwrap().status, 200);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let server = start(None, Limits::default()).await;
    let addr = server.addr;
    let mut client = H1::new(TcpStream::connect(addr).await.unwrap());
    client
        .io
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(ms(200)).await;
    server.stop.send(true).unwrap();
    let resp = client.read_response().await.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "slow"));
    client.expect_closed(Duration::from_secs(5)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

// ---------------------------------------------------------------------------------------
// 9. gRPC over incoming() with mutual TLS, through the peer connector

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_over_incoming_with_mutual_tls() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls =
        ReloadableTls::load(pki.server_files(&leaf, ClientAuth::Required), alpn_grpc()).unwrap();
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), Some(tls), Limits::default())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats();
    let (stop, stop_rx) = watch::channel(false);
    let seen: Arc<Mutex<Option<ConnInfo>>> = Arc::default();
    let record = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let conns = incoming(listener, stop_rx.clone());
    let mut signal = stop_rx;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(
                move |request: tonic::Request<()>| {
                    *record.lock().unwrap() = request.extensions().get::<ConnInfo>().cloned();
                    Ok(request)
                },
            ))
            .add_service(health)
            .serve_with_incoming_shutdown(conns, async move {
                let _ = signal.wait_for(|stop| *stop).await;
            }),
    );

    let (client_cert, client_key) = pki.write_leaf("client", &pki.ca.client(5, CLIENT_ID));
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
    let connect = |expected: &str| {
        let config = client_config(
            &pki.path("ca.pem"),
            Some((&client_cert, &client_key)),
            Some(expected),
            alpn_grpc(),
        )
        .unwrap();
        HealthClient::new(endpoint.connect_with_connector_lazy(PeerConnector::new(config)))
    };

    let response = connect(SITE_A)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    let info = seen
        .lock()
        .unwrap()
        .clone()
        .expect("ConnInfo in the request");
    assert!(info.tls);
    assert_eq!(info.remote.ip(), addr.ip());
    assert_eq!(info.local, addr);
    assert_eq!(
        info.client_cert.as_ref().unwrap().uris,
        vec![CLIENT_ID.to_owned()]
    );

    // The wrong expected identity: the call fails before anything is sent.
    let status = connect("spiffe://stowage/site-b")
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Without a client certificate the listener refuses the handshake.
    let config = client_config(&pki.path("ca.pem"), None, Some(SITE_A), alpn_grpc()).unwrap();
    let mut anonymous =
        HealthClient::new(endpoint.connect_with_connector_lazy(PeerConnector::new(config)));
    assert!(anonymous
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_err());
    eventually("refused handshake counted", Duration::from_secs(5), || {
        stats.handshake_failed() >= 1
    })
    .await;

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("tonic returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_incoming_does_not_block_on_slow_handshakes() {
    let pki = Pki::new();
    let leaf = pki.ca.server(1, "a.test", SITE_A);
    let tls = ReloadableTls::load(pki.server_files(&leaf, ClientAuth::None), alpn_grpc()).unwrap();
    let limits = Limits {
        handshake_timeout: ms(500),
        ..Limits::default()
    };
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), Some(tls), limits)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats();
    let (stop, stop_rx) = watch::channel(false);
    let mut conns = incoming(listener, stop_rx);

    // Ten connections that never start their handshake.
    let silent = stall(addr, 10, b"").await;
    let started = Instant::now();
    let client = tokio::spawn({
        let config = client_config(&pki.path("ca.pem"), None, None, alpn_grpc()).unwrap();
        async move { tls_connect(addr, config, "localhost").await }
    });
    let conn = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut conns))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(conn.info().tls);
    client.await.unwrap().unwrap();
    eventually("silent handshakes time out", Duration::from_secs(5), || {
        stats.handshake_failed() == 10
    })
    .await;
    drop(silent);
    stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut conns))
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ends on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_incoming_applies_the_connection_cap() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), None, limits)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats();
    let (stop, stop_rx) = watch::channel(false);
    let mut conns = incoming(listener, stop_rx);

    // Two plain connections that send their first bytes are handed over.
    let clients = stall(addr, 2, b"PRI * HTTP/2.0\r\n").await;
    let first = next_conn(&mut conns).await.unwrap().unwrap().unwrap();
    let second = next_conn(&mut conns).await.unwrap().unwrap().unwrap();
    assert!(!first.info().tls && first.info().client_cert.is_none());
    assert_eq!(stats.open(), 2);

    // A third is closed at once while both are held.
    let mut third = H1::new(TcpStream::connect(addr).await.unwrap());
    third.expect_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.refused_over_limit(), 1);

    // Releasing one frees its slot.
    drop(first);
    assert_eq!(stats.open(), 1);
    let _fourth = stall(addr, 1, b"PRI * HTTP/2.0\r\n").await;
    let fourth = next_conn(&mut conns).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.open(), 2);
    drop((second, fourth, clients));
    stop.send(true).unwrap();
    assert!(next_conn(&mut conns).await.unwrap().is_none());
}

async fn next_conn(
    conns: &mut stowage_auth::net::Incoming,
) -> Result<Option<io::Result<stowage_auth::net::Conn>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(conns)).await
}
