//! Replication between two daemons over mutual TLS, with certificates generated here: content
//! arrives byte-identical; a peer that presents another identity, a certificate from another
//! CA, or no configured identity is refused; a peer that forges the origin of a change or
//! sends a tag version from the far future is refused and audited.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::image::{image, push_image};
use common::pki::{Ca, Leaf};
use common::{data, Daemon};
use stowage_rpc::v1 as pb;
use stowage_rpc::v1::replication_client::ReplicationClient;

const SITE_A: &str = "spiffe://stowage/site-a";
const SITE_B: &str = "spiffe://stowage/site-b";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn tls_table(leaf: &Leaf, ca: &Ca) -> String {
    format!(
        "[replication.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        leaf.cert, leaf.key, ca.cert
    )
}

/// Starts site `name` with `config` (TOML) in `root/name`.
fn site(root: &Path, name: &str, config: &str) -> Daemon {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("stowage.toml");
    std::fs::write(&cfg, format!("[site]\nname = \"{name}\"\n\n{config}")).unwrap();
    Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()])
}

/// A gRPC client of `d`'s replication listener presenting `leaf`, trusting `ca`, expecting
/// the server to be `expect`.
async fn peer_client(
    d: &Daemon,
    ca: &Ca,
    leaf: &Leaf,
    expect: &str,
) -> Result<ReplicationClient<tonic::transport::Channel>, String> {
    let cfg = stowage_auth::tls::client_config(
        &ca.cert,
        Some((leaf.cert.as_path(), leaf.key.as_path())),
        Some(expect),
        stowage_auth::tls::alpn_grpc(),
    )
    .map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_shared(d.repl.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(stowage_auth::tls::PeerConnector::new(cfg))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ReplicationClient::new(channel))
}

async fn wait_for_manifest(c: &reqwest::Client, d: &Daemon, path: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let r = c.get(d.url(path)).send().await.unwrap();
        if r.status() == reqwest::StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `stowage audit --json` entries of `d` with `action`.
fn audit(d: &Daemon, action: &str) -> Vec<serde_json::Value> {
    let out = common::auth::cli_ok(
        &["audit", "--action", action, "--json", "--server", &d.admin],
        &[],
    );
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn two_sites_replicate_over_mutual_tls_and_refuse_impostors() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new(&pki, "sites");
    let a_cert = ca.leaf(&pki, "site-a", SITE_A);
    let b_cert = ca.leaf(&pki, "site-b", SITE_B);
    let c_cert = ca.leaf(&pki, "site-c", "spiffe://stowage/site-c");
    let rogue = Ca::new(&pki, "rogue");
    let fake_a = rogue.leaf(&pki, "fake-a", SITE_A);

    // B only serves A; A pushes to B.
    let b = site(
        root.path(),
        "site-b",
        &format!(
            "{}\n[[replication.peers]]\nname = \"site-a\"\nidentity = \"{SITE_A}\"\ndirection = \"receive\"\nrepositories = [\"team/**\"]\n",
            tls_table(&b_cert, &ca)
        ),
    );
    assert!(b.repl.starts_with("https://"), "{}", b.repl);
    let a = site(
        root.path(),
        "site-a",
        &format!(
            "{}\n[[replication.peers]]\nname = \"site-b\"\nendpoint = \"{}\"\nidentity = \"{SITE_B}\"\ndirection = \"push\"\nanti_entropy_interval = \"0s\"\n",
            tls_table(&a_cert, &ca),
            b.repl
        ),
    );
    let c = client();
    let im = image(vec![data(300_000, 1), data(5000, 2)]);
    push_image(&c, &a.base, "team/app", "v1", &im).await;
    assert!(
        wait_for_manifest(&c, &b, "/v2/team/app/manifests/v1", 60).await,
        "the image did not reach B over mTLS"
    );
    for blob in &im.blobs {
        let digest = common::sha256(blob);
        let got = c
            .get(b.url(&format!("/v2/team/app/blobs/{digest}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], &blob[..], "blob {digest} differs at B");
    }
    // B recorded the applied changes with A's identity as the actor.
    let pushes = audit(&b, "manifest_push");
    assert!(
        pushes
            .iter()
            .any(|e| e["actor"] == "peer:site-a" && e["repository"] == "team/app"),
        "{pushes:?}"
    );

    // A site that expects B to be someone else refuses B's certificate: nothing travels.
    let a2 = site(
        root.path(),
        "site-a2",
        &format!(
            "{}\n[[replication.peers]]\nname = \"site-b\"\nendpoint = \"{}\"\nidentity = \"spiffe://stowage/site-x\"\ndirection = \"push\"\nanti_entropy_interval = \"0s\"\n",
            tls_table(&a_cert, &ca),
            b.repl
        ),
    );
    push_image(&c, &a2.base, "team/other", "v1", &image(vec![data(100, 9)])).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let out = common::auth::cli_ok(&["repl", "status", "--json", "--server", &a2.admin], &[]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        last_error = v["peers"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !last_error.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last_error.contains("identity") || last_error.contains("certificate"),
        "A2's error: {last_error:?}"
    );
    assert!(!wait_for_manifest(&c, &b, "/v2/team/other/manifests/v1", 2).await);

    // Direct calls to B's replication listener.
    // A certificate from another CA, even with A's identity: the handshake fails.
    let fake = peer_client(&b, &ca, &fake_a, SITE_B).await;
    let refused = match fake {
        Err(_) => true,
        Ok(mut cl) => cl
            .hello(pb::HelloRequest {
                site: "site-a".into(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");
    // A certificate from the right CA whose identity is not a configured peer.
    let mut stranger = peer_client(&b, &ca, &c_cert, SITE_B).await.unwrap();
    let e = stranger
        .hello(pb::HelloRequest {
            site: "site-c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The operator's calls are not served to peers.
    let mut peer_a = peer_client(&b, &ca, &a_cert, SITE_B).await.unwrap();
    let e = peer_a.status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // A genuine peer forging the origin of a change: refused.
    let digest = im.digest();
    let before = c
        .get(b.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap()
        .headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let e = peer_a
        .apply_tag(pb::TagState {
            repository: "team/app".into(),
            tag: "v1".into(),
            present: false,
            digest: String::new(),
            version_ms: u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
            origin: "site-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = peer_a
        .put_manifest(pb::Manifest {
            repository: "team/forged".into(),
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: im.manifest.clone(),
            origin: "site-z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Its own origin, but a version a day in the future: it would freeze the tag everywhere.
    let far = u64::try_from(
        (std::time::SystemTime::now() + Duration::from_secs(86_400))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let e = peer_a
        .apply_tag(pb::TagState {
            repository: "team/app".into(),
            tag: "v1".into(),
            present: false,
            digest: String::new(),
            version_ms: far,
            origin: "site-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("ahead"), "{e:?}");
    // A change labelled as B's own: accepted as an echo and ignored (B already has its own
    // changes), so A cannot pass a tag delete off as B's to the sites B feeds.
    let r = peer_a
        .apply_tag(pb::TagState {
            repository: "team/app".into(),
            tag: "v1".into(),
            present: false,
            digest: String::new(),
            version_ms: u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
            origin: "site-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied, "an own-origin change from a peer was applied");
    // Nothing changed, and every refusal is in B's audit log.
    let after = c
        .get(b.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap()
        .headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(before, after);
    let r = c
        .get(b.url("/v2/team/forged/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let mut refusals = Vec::new();
    for _ in 0..100 {
        refusals = audit(&b, "replication");
        if refusals.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by = |actor: &str, target: &str| {
        refusals
            .iter()
            .filter(|e| e["actor"] == actor && e["target"] == target && e["outcome"] == "denied")
            .count()
    };
    assert!(by("peer:site-a", "ApplyTag") >= 2, "{refusals:#?}");
    assert!(by("peer:site-a", "PutManifest") >= 1, "{refusals:#?}");
    assert!(
        refusals.iter().any(
            |e| e["target"] == "Hello" && e["detail"].as_str().unwrap_or("").contains("site-c")
        ),
        "{refusals:#?}"
    );
    // A's grant at B is `receive` for `team/**`: it may not read B's content, nor write
    // elsewhere, nor link a blob it cannot reach into a repository it may write.
    let e = peer_a
        .read_feed(pb::ReadFeedRequest {
            from_sequence: 1,
            limit: 10,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = peer_a
        .get_blob(pb::GetBlobRequest {
            repository: "team/app".into(),
            digest: common::sha256(&im.blobs[1]),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = peer_a
        .put_manifest(pb::Manifest {
            repository: "prod/app".into(),
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: im.manifest.clone(),
            origin: "site-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let secret = image(vec![data(4000, 77)]);
    push_image(&c, &b.base, "hr/payroll", "v1", &secret).await;
    let secret_layer = common::sha256(&secret.blobs[1]);
    let missing = peer_a
        .missing_blobs(pb::MissingBlobsRequest {
            repository: "team/leak".into(),
            blobs: vec![pb::BlobRef {
                digest: secret_layer.clone(),
                size: secret.blobs[1].len() as u64,
            }],
            hold_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing.len(), 1, "a blob A cannot reach was linked");
    let r = c
        .get(b.url(&format!("/v2/team/leak/blobs/{secret_layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);

    // A plain-text client gets nowhere on the TLS listener.
    let plain = tonic::transport::Endpoint::from_shared(b.repl.replace("https://", "http://"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut cl = ReplicationClient::new(ch);
        assert!(cl
            .hello(pb::HelloRequest { site: "x".into() })
            .await
            .is_err());
    }
}

/// The OCI API over TLS: a new certificate written over the files and announced with SIGHUP
/// is served to new connections, while a connection opened before goes on.
#[tokio::test]
async fn api_certificate_reloads_on_sighup_without_dropping_connections() {
    use tower::Service as _;
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new(&pki, "api");
    let first = ca.leaf(&pki, "first", "spiffe://stowage/api-1");
    let second = ca.leaf(&pki, "second", "spiffe://stowage/api-2");
    let cert = pki.join("live.pem");
    let key = pki.join("live.key");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let d = Daemon::start_with(
        &root.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(d.base.starts_with("https://"));
    // Which certificate a new connection is served.
    let served = || async {
        let cfg =
            stowage_auth::tls::client_config(&ca.cert, None, None, stowage_auth::tls::alpn_http())
                .unwrap();
        let mut conn = stowage_auth::tls::PeerConnector::new(cfg);
        let io = conn
            .call(
                d.base
                    .replace("https://127.0.0.1", "https://localhost")
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        let (_, session) = io.inner().get_ref();
        session.peer_certificates().unwrap()[0].to_vec()
    };
    let der_of = |pem: &Path| {
        use base64::Engine as _;
        let text = std::fs::read_to_string(pem).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    assert_eq!(served().await, der_of(&first.cert));
    let ca_pem = reqwest::Certificate::from_pem(&std::fs::read(&ca.cert).unwrap()).unwrap();
    let kept = reqwest::Client::builder()
        .add_root_certificate(ca_pem)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let base = d.base.replace("127.0.0.1", "localhost");
    assert_eq!(
        kept.get(format!("{base}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::OK
    );
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served().await != der_of(&second.cert) {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the reload still serves requests.
    assert_eq!(
        kept.get(format!("{base}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        reqwest::StatusCode::OK
    );
}

/// A site pulls over a `serve` grant limited to some repositories: hundreds of feed entries of
/// repositories it may not read are left out of its pages, its cursor moves past them, and
/// what it may read arrives; what it may not never does.
#[tokio::test]
async fn a_pull_over_a_filtered_serve_grant_moves_past_what_it_may_not_read() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new(&pki, "sites");
    let a_cert = ca.leaf(&pki, "site-a", SITE_A);
    let b_cert = ca.leaf(&pki, "site-b", SITE_B);
    let b = site(
        root.path(),
        "site-b",
        &format!(
            "{}\n[[replication.peers]]\nname = \"site-a\"\nidentity = \"{SITE_A}\"\ndirection = \"serve\"\nrepositories = [\"pub/**\"]\n",
            tls_table(&b_cert, &ca)
        ),
    );
    let c = client();
    // More than a feed page (256 entries) of repositories A may not read, first.
    for i in 0..100 {
        let im = image(vec![data(100, 1000 + i)]);
        push_image(&c, &b.base, "hidden/app", &format!("t{i}"), &im).await;
    }
    let a = site(
        root.path(),
        "site-a",
        &format!(
            "{}\n[[replication.peers]]\nname = \"site-b\"\nendpoint = \"{}\"\nidentity = \"{SITE_B}\"\ndirection = \"pull\"\nrepositories = [\"pub/**\"]\nanti_entropy_interval = \"0s\"\n",
            tls_table(&a_cert, &ca),
            b.repl
        ),
    );
    let im = image(vec![data(2000, 7)]);
    push_image(&c, &b.base, "pub/app", "v1", &im).await;
    assert!(
        wait_for_manifest(&c, &a, "/v2/pub/app/manifests/v1", 60).await,
        "the readable image did not arrive behind the unreadable entries"
    );
    let r = c
        .get(a.url("/v2/hidden/app/manifests/t0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    // And A's cursor is at B's end: in sync, not stuck.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = common::auth::cli_ok(&["repl", "status", "--json", "--server", &a.admin], &[]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let p = &v["peers"][0];
        if p["state"] == "in_sync" && p["lag_events"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never got in sync: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
