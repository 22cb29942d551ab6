//! Access control end to end, against the real daemon with authentication on: the permission
//! matrix (every role and robot, anonymous on public and private projects, times every
//! operation, in token and basic mode), forged and misused tokens refused for the right
//! reason, private repositories that answer like absent ones, path spellings that get the
//! canonical decision, and the audit log after a scripted sequence, tampered three ways.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::auth::{admin_cli, cli_env, start_with_admin};
use common::image::{image, Image};
use common::{data, sha256, Daemon};
use reqwest::{Method, StatusCode};

const ROOT: &str = "root";
const ROOT_PW: &str = "root-password-123";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Who makes a request.
#[derive(Clone, Debug)]
enum Who {
    Anonymous,
    /// A user or robot with its password or secret.
    Account(String, String),
}

/// A daemon with accounts, projects and images for the matrix.
struct World {
    d: Daemon,
    _dir: tempfile::TempDir,
    mode: &'static str,
    c: reqwest::Client,
    /// name -> (who, expected rights in project `team`)
    actors: Vec<(String, Who)>,
}

impl World {
    async fn new(mode: &'static str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = start_with_admin(dir.path(), mode, ROOT, ROOT_PW, &[]);
        let cli = |args: &[&str], pw: Option<&str>| admin_cli(&d, ROOT, ROOT_PW, args, pw);
        for (u, role) in [
            ("guest", "guest"),
            ("dev", "developer"),
            ("maint", "maintainer"),
            ("padmin", "admin"),
        ] {
            cli(&["user", "add", u], Some(&format!("{u}-password-1")));
            cli(&["user", "grant", u, "team", role], None);
        }
        cli(&["user", "add", "outsider"], Some("outsider-password-1"));
        cli(&["user", "grant", "outsider", "other", "developer"], None);
        cli(&["project", "set", "pub", "--public", "true"], None);
        let mut actors = vec![
            ("anonymous".to_string(), Who::Anonymous),
            (
                "root".to_string(),
                Who::Account(ROOT.into(), ROOT_PW.into()),
            ),
        ];
        for u in ["guest", "dev", "maint", "padmin", "outsider"] {
            actors.push((u.into(), Who::Account(u.into(), format!("{u}-password-1"))));
        }
        for (name, acts) in [("puller", "pull"), ("pusher", "pull,push")] {
            let out = cli(
                &[
                    "robot",
                    "create",
                    name,
                    "--project",
                    "team",
                    "--actions",
                    acts,
                    "--json",
                ],
                None,
            );
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            actors.push((
                format!("robot-{name}"),
                Who::Account(
                    v["account"].as_str().unwrap().into(),
                    v["secret"].as_str().unwrap().into(),
                ),
            ));
        }
        World {
            d,
            _dir: dir,
            mode,
            c: client(),
            actors,
        }
    }

    fn who(&self, name: &str) -> Who {
        self.actors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .clone()
    }

    /// Credentials for a request needing `scopes`: a token from the token service (token
    /// mode) or Basic credentials (basic mode).
    async fn auth(&self, who: &Who, scopes: &[String]) -> Option<String> {
        match (self.mode, who) {
            ("basic", Who::Anonymous) => None,
            ("basic", Who::Account(u, p)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (_, who) => {
                let creds = match who {
                    Who::Anonymous => None,
                    Who::Account(u, p) => Some((u.as_str(), p.as_str())),
                };
                let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                let t = common::auth::token(&self.c, &self.d, creds, &scopes).await;
                Some(format!("Bearer {t}"))
            }
        }
    }

    async fn send(
        &self,
        who: &Who,
        scopes: &[String],
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.c.request(method, self.d.url(path));
        if let Some(a) = self.auth(who, scopes).await {
            req = req.header("authorization", a);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.unwrap()
    }

    /// Pushes `im` as `repo:tag` as root.
    async fn seed(&self, repo: &str, tag: &str, im: &Image) {
        let root = self.who("root");
        let scope = vec![format!("repository:{repo}:pull,push")];
        for b in &im.blobs {
            let digest = sha256(b);
            let r = self
                .send(
                    &root,
                    &scope,
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    Some(b.clone()),
                    None,
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED, "seeding {repo}");
        }
        let r = self
            .send(
                &root,
                &scope,
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(im.manifest.clone()),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "seeding {repo}:{tag}");
    }
}

/// The operations of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    PullTag,
    PullDigest,
    PullBlob,
    Push,
    ChunkedPush,
    MountFromReadable,
    MountFromUnreadable,
    DeleteTag,
    DeleteManifest,
    DeleteBlob,
    TagList,
    Referrers,
    Catalog,
}

const OPS: [Op; 13] = [
    Op::PullTag,
    Op::PullDigest,
    Op::PullBlob,
    Op::Push,
    Op::ChunkedPush,
    Op::MountFromReadable,
    Op::MountFromUnreadable,
    Op::DeleteTag,
    Op::DeleteManifest,
    Op::DeleteBlob,
    Op::TagList,
    Op::Referrers,
    Op::Catalog,
];

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Allowed, with this status.
    Ok(u16),
    /// A mount that fell back to a plain upload (202): no access to the source.
    Fallback,
    /// Refused: 401 (authenticate / token lacks the scope) or 403 (credentials that do not
    /// allow it).
    Refused(u16),
    /// The catalog, as the repositories it listed.
    Listed(Vec<String>),
}

/// Runs `op` on `project/app` as `who`, after root seeded what it needs. Every run uses
/// fresh content so deletes do not depend on earlier cases.
async fn run_op(w: &World, who: &Who, project: &str, op: Op, case: u64) -> Outcome {
    let repo = format!("{project}/app");
    let pull = vec![format!("repository:{repo}:pull")];
    let push = vec![format!("repository:{repo}:pull,push")];
    let delete = vec![format!("repository:{repo}:delete")];
    let im = image(vec![data(300, case), data(500, case + 1000)]);
    let tag = format!("c{case}");
    let status = |r: &reqwest::Response| r.status().as_u16();
    let verdict = |s: u16| match s {
        401 | 403 => Outcome::Refused(s),
        s => Outcome::Ok(s),
    };
    match op {
        Op::PullTag
        | Op::PullDigest
        | Op::PullBlob
        | Op::DeleteTag
        | Op::DeleteManifest
        | Op::DeleteBlob
        | Op::TagList
        | Op::Referrers => {
            w.seed(&repo, &tag, &im).await;
        }
        _ => {}
    }
    match op {
        Op::PullTag => verdict(status(
            &w.send(
                who,
                &pull,
                Method::GET,
                &format!("/v2/{repo}/manifests/{tag}"),
                None,
                None,
            )
            .await,
        )),
        Op::PullDigest => verdict(status(
            &w.send(
                who,
                &pull,
                Method::GET,
                &format!("/v2/{repo}/manifests/{}", im.digest()),
                None,
                None,
            )
            .await,
        )),
        Op::PullBlob => verdict(status(
            &w.send(
                who,
                &pull,
                Method::GET,
                &format!("/v2/{repo}/blobs/{}", sha256(&im.blobs[1])),
                None,
                None,
            )
            .await,
        )),
        Op::Push => {
            let b = &im.blobs[0];
            let r = w
                .send(
                    who,
                    &push,
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(b)),
                    Some(b.clone()),
                    None,
                )
                .await;
            verdict(status(&r))
        }
        Op::ChunkedPush => {
            let b = data(1000, case + 7);
            let r = w
                .send(
                    who,
                    &push,
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/"),
                    None,
                    None,
                )
                .await;
            if r.status() != StatusCode::ACCEPTED {
                return verdict(status(&r));
            }
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let r = w
                .send(
                    who,
                    &push,
                    Method::PATCH,
                    &loc,
                    Some(b[..600].to_vec()),
                    None,
                )
                .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let r = w
                .send(
                    who,
                    &push,
                    Method::PUT,
                    &format!("{loc}?digest={}", sha256(&b)),
                    Some(b[600..].to_vec()),
                    None,
                )
                .await;
            verdict(status(&r))
        }
        Op::MountFromReadable | Op::MountFromUnreadable => {
            // The source: the public project (everyone may read it) or `other` (only root
            // and outsider may).
            let from = if op == Op::MountFromReadable {
                "pub/src"
            } else {
                "other/src"
            };
            let src = image(vec![data(200, case + 5000)]);
            w.seed(from, &tag, &src).await;
            let d = sha256(&src.blobs[1]);
            let scopes = vec![
                format!("repository:{repo}:pull,push"),
                format!("repository:{from}:pull"),
            ];
            let r = w
                .send(
                    who,
                    &scopes,
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
                    None,
                    None,
                )
                .await;
            match r.status().as_u16() {
                202 => Outcome::Fallback,
                s => verdict(s),
            }
        }
        Op::DeleteTag => verdict(status(
            &w.send(
                who,
                &delete,
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{tag}"),
                None,
                None,
            )
            .await,
        )),
        Op::DeleteManifest => verdict(status(
            &w.send(
                who,
                &delete,
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{}", im.digest()),
                None,
                None,
            )
            .await,
        )),
        Op::DeleteBlob => {
            // A blob no manifest references: upload it alone.
            let lone = data(123, case + 9000);
            let scope = vec![format!("repository:{repo}:pull,push")];
            let r = w
                .send(
                    &w.who("root"),
                    &scope,
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(&lone)),
                    Some(lone.clone()),
                    None,
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            verdict(status(
                &w.send(
                    who,
                    &delete,
                    Method::DELETE,
                    &format!("/v2/{repo}/blobs/{}", sha256(&lone)),
                    None,
                    None,
                )
                .await,
            ))
        }
        Op::TagList => verdict(status(
            &w.send(
                who,
                &pull,
                Method::GET,
                &format!("/v2/{repo}/tags/list"),
                None,
                None,
            )
            .await,
        )),
        Op::Referrers => verdict(status(
            &w.send(
                who,
                &pull,
                Method::GET,
                &format!("/v2/{repo}/referrers/{}", im.digest()),
                None,
                None,
            )
            .await,
        )),
        Op::Catalog => {
            let r = w
                .send(
                    who,
                    &["registry:catalog:*".to_string()],
                    Method::GET,
                    "/v2/_catalog",
                    None,
                    None,
                )
                .await;
            if r.status() != StatusCode::OK {
                return verdict(status(&r));
            }
            let v: serde_json::Value = r.json().await.unwrap();
            let mut names: Vec<String> = v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            names.retain(|n| !n.ends_with("/src"));
            Outcome::Listed(names)
        }
    }
}

/// The expected outcome of `op` on `project` for actor `name` in `mode`.
fn expected(mode: &str, name: &str, project: &str, op: Op) -> Outcome {
    // Rights in the project: (pull, push, delete).
    let rights = match (name, project) {
        ("root", _) => (true, true, true),
        ("anonymous", "pub") => (true, false, false),
        (_, "pub") => (true, false, false),
        ("guest", "team") => (true, false, false),
        ("dev", "team") => (true, true, false),
        ("maint" | "padmin", "team") => (true, true, true),
        ("robot-puller", "team") => (true, false, false),
        ("robot-pusher", "team") => (true, true, false),
        _ => (false, false, false),
    };
    let anonymous = name == "anonymous";
    let refused = if anonymous || mode == "token" {
        401
    } else {
        403
    };
    let check = |allowed: bool, status: u16| {
        if allowed {
            Outcome::Ok(status)
        } else {
            Outcome::Refused(refused)
        }
    };
    match op {
        Op::PullTag | Op::PullDigest | Op::PullBlob | Op::TagList | Op::Referrers => {
            check(rights.0, 200)
        }
        Op::Push | Op::ChunkedPush => check(rights.1, 201),
        Op::MountFromReadable => {
            if rights.1 {
                Outcome::Ok(201)
            } else {
                Outcome::Refused(refused)
            }
        }
        Op::MountFromUnreadable => {
            if !rights.1 {
                Outcome::Refused(refused)
            } else if name == "root" {
                Outcome::Ok(201)
            } else {
                Outcome::Fallback
            }
        }
        Op::DeleteTag | Op::DeleteManifest | Op::DeleteBlob => check(rights.2, 202),
        Op::Catalog => {
            if anonymous {
                return Outcome::Refused(401);
            }
            let mut visible: Vec<String> = Vec::new();
            for (p, repo) in [
                ("other", "other/app"),
                ("pub", "pub/app"),
                ("team", "team/app"),
            ] {
                let can = match (name, p) {
                    ("root", _) => true,
                    (_, "pub") => true,
                    ("outsider", "other") => true,
                    (n, "team") => {
                        matches!(
                            n,
                            "guest" | "dev" | "maint" | "padmin" | "robot-puller" | "robot-pusher"
                        )
                    }
                    _ => false,
                };
                if can {
                    visible.push(repo.to_string());
                }
            }
            Outcome::Listed(visible)
        }
    }
}

async fn matrix(mode: &'static str) {
    let w = World::new(mode).await;
    // Every project has content, so the catalog has something to hide.
    for p in ["team", "pub", "other"] {
        w.seed(&format!("{p}/app"), "base", &image(vec![data(64, 1)]))
            .await;
    }
    let mut case = 10;
    let mut failures = Vec::new();
    let names: Vec<String> = w.actors.iter().map(|(n, _)| n.clone()).collect();
    for name in &names {
        let who = w.who(name);
        for project in ["team", "pub"] {
            for op in OPS {
                if op == Op::Catalog && project == "pub" {
                    continue;
                }
                case += 1;
                let got = run_op(&w, &who, project, op, case).await;
                let want = expected(mode, name, project, op);
                if got != want {
                    failures.push(format!(
                        "{mode}: {name} {op:?} in {project}: got {got:?}, want {want:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Admin RPCs: the system admin may, everybody else is refused.
    for (name, who) in &w.actors {
        let Who::Account(user, pw) = who else {
            continue;
        };
        for args in [
            &["info"][..],
            &["gc", "status"][..],
            &["user", "list"][..],
            &["robot", "list"][..],
            &["project", "list"][..],
            &["audit", "verify"][..],
            &["repl", "status"][..],
            &["fsck"][..],
        ] {
            let mut all = args.to_vec();
            all.extend(["--server", &w.d.admin, "--user", user]);
            let out = cli_env(&all, &[("STOWAGE_PASSWORD", pw)]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if name == "root" {
                assert!(out.status.success(), "{mode}: root {args:?}: {stderr}");
            } else {
                assert!(!out.status.success(), "{mode}: {name} may run {args:?}");
                assert!(
                    stderr.contains("not a system admin")
                        || stderr.contains("invalid username or password"),
                    "{mode}: {name} {args:?}: {stderr}"
                );
            }
        }
    }
}

#[tokio::test]
async fn permission_matrix_token_mode() {
    matrix("token").await;
}

#[tokio::test]
async fn permission_matrix_basic_mode() {
    matrix("basic").await;
}

// -------------------------------------------------------------------------------------------
// Tokens: forged and misused tokens are refused, each for its own reason.

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// A compact JWS over `header` and `claims`, signed by `sign` (the signing input in, the
/// signature bytes out).
fn jws(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// An ECDSA P-256 key (ring), from PKCS#8 DER.
fn p256(pkcs8: &[u8]) -> ring::signature::EcdsaKeyPair {
    ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap()
}

fn es256(key: &ring::signature::EcdsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |input| {
        key.sign(&ring::rand::SystemRandom::new(), input)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

/// The daemon's token signing key (PKCS#8 DER), read from its data directory.
fn daemon_key(data_dir: &std::path::Path) -> Vec<u8> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(data_dir.join("auth/token-signing-key.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The audit entries recorded as refused logins, newest last.
fn denied_logins(d: &Daemon) -> Vec<serde_json::Value> {
    let out = admin_cli(
        d,
        ROOT,
        ROOT_PW,
        &["audit", "--action", "login", "--json"],
        None,
    );
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["outcome"] == "denied")
        .collect()
}

#[tokio::test]
async fn forged_and_misused_tokens_are_refused_for_the_right_reason() {
    let w = World::new("token").await;
    w.seed("team/app", "v1", &image(vec![data(100, 3)])).await;
    let c = &w.c;
    let root = w.who("root");
    let good = w
        .auth(&root, &["repository:team/app:pull".to_string()])
        .await
        .unwrap();
    let good = good.trim_start_matches("Bearer ").to_string();
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let get = |token: String| {
        let url = w.d.url("/v2/team/app/manifests/v1");
        async move {
            c.get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };
    // The genuine token works: the cases below differ from it in one thing each.
    assert_eq!(get(good.clone()).await.status(), StatusCode::OK);

    let key = daemon_key(w._dir.path());
    let real = p256(&key);
    let sign_real = es256(&real);
    let h_real = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims.clone();
        f(&mut c);
        c
    };
    let now = now_secs();
    let attacker = {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        p256(doc.as_ref())
    };
    let attacker_jwk = {
        use ring::signature::KeyPair as _;
        let point = attacker.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    };
    let public_pem = {
        // The daemon's public key, as an attacker could publish or fetch it.
        use ring::signature::KeyPair as _;
        real.public_key().as_ref().to_vec()
    };
    let pull_push = with(
        &|c| c["access"] = serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push", "delete"]}]),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            jws(
                &h_real,
                &with(&|c| {
                    c["exp"] = serde_json::json!(now - 3600);
                    c["iat"] = serde_json::json!(now - 7200);
                    c["nbf"] = serde_json::json!(now - 7200);
                }),
                &sign_real,
            ),
            "expired",
        ),
        (
            "not yet valid",
            jws(
                &h_real,
                &with(&|c| {
                    c["nbf"] = serde_json::json!(now + 3600);
                    c["exp"] = serde_json::json!(now + 7200);
                }),
                &sign_real,
            ),
            "not valid before",
        ),
        (
            "wrong audience",
            jws(
                &h_real,
                &with(&|c| c["aud"] = serde_json::json!("another-registry")),
                &sign_real,
            ),
            "audience",
        ),
        (
            "wrong issuer",
            jws(
                &h_real,
                &with(&|c| c["iss"] = serde_json::json!("evil")),
                &sign_real,
            ),
            "issuer",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(pull_push.to_string().as_bytes())
            ),
            "not allowed",
        ),
        (
            "HS256 signed with the public key",
            jws(
                &serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &pull_push,
                |input| {
                    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public_pem);
                    ring::hmac::sign(&k, input).as_ref().to_vec()
                },
            ),
            "not allowed",
        ),
        (
            "trusted kid with an attacker's embedded jwk",
            jws(
                &serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid, "jwk": attacker_jwk}),
                &pull_push,
                es256(&attacker),
            ),
            "signature",
        ),
        (
            "only an embedded jwk",
            jws(
                &serde_json::json!({"alg": "ES256", "typ": "JWT", "jwk": attacker_jwk}),
                &pull_push,
                es256(&attacker),
            ),
            "never trusted",
        ),
        (
            "a signature over other claims",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(pull_push.to_string().as_bytes()),
                parts[2]
            ),
            "signature",
        ),
    ];
    for (what, token, reason) in &cases {
        let before = denied_logins(&w.d).len();
        let r = get(token.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        let body = r.text().await.unwrap();
        assert!(
            !body.contains(token.as_str()),
            "{what}: the token was echoed"
        );
        // Refused for its own reason, and recorded (without the token).
        let mut denied = Vec::new();
        for _ in 0..100 {
            denied = denied_logins(&w.d);
            if denied.len() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = denied.last().unwrap();
        let detail = last["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{what}: audited as {detail:?}");
        assert!(
            !detail.contains(token.as_str()),
            "{what}: the token reached the audit log"
        );
        // And the push it would have allowed did not happen.
        let r = c
            .post(w.d.url("/v2/team/app/blobs/uploads/"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}: push");
    }

    // Genuine tokens used beyond their scope: the registry asks for a token with more.
    let other_repo = w
        .auth(&root, &["repository:team/other:pull,push".to_string()])
        .await
        .unwrap();
    let r = c
        .get(w.d.url("/v2/team/app/manifests/v1"))
        .header("authorization", &other_repo)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        ch.contains("error=\"insufficient_scope\"")
            && ch.contains("scope=\"repository:team/app:pull\""),
        "{ch}"
    );
    let pull_only = format!("Bearer {good}");
    let r = c
        .post(w.d.url("/v2/team/app/blobs/uploads/"))
        .header("authorization", &pull_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        ch.contains("error=\"insufficient_scope\"") && ch.contains("repository:team/app:pull,push"),
        "{ch}"
    );
    // A developer asking for delete gets what it may (pull) and nothing more: a partial grant.
    let dev = w.who("dev");
    let t = w
        .auth(&dev, &["repository:team/app:pull,push,delete".to_string()])
        .await
        .unwrap();
    let access = common::auth::granted(t.trim_start_matches("Bearer "));
    assert_eq!(
        access,
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    // Wrong passwords get no token at all, and say nothing about whether the user exists.
    for (u, p) in [("dev", "wrong-password"), ("nobody", "wrong-password")] {
        let r = c
            .get(w.d.url("/token?service=stowage&scope=repository:team/app:pull"))
            .basic_auth(u, Some(p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{u}");
        let body = r.text().await.unwrap();
        assert!(!body.contains(p) && !body.contains("exist"), "{body}");
    }
}

// -------------------------------------------------------------------------------------------
// What a refused client learns: nothing about what exists.

/// One raw HTTP/1.1 request (no client-side path normalisation); the status, the
/// WWW-Authenticate header and the body.
fn raw(host: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let www = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string())
        .unwrap_or_default();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, www, body)
}

#[tokio::test]
async fn private_repositories_answer_like_absent_ones_and_path_tricks_get_the_same_decision() {
    for mode in ["token", "basic"] {
        let w = World::new(mode).await;
        let im = image(vec![data(100, 8)]);
        w.seed("team/app", "v1", &im).await;
        let outsider = w.who("outsider");
        let scopes = |repo: &str| vec![format!("repository:{repo}:pull")];
        for who in [Who::Anonymous, outsider.clone()] {
            for (exists, absent) in [
                ("/v2/team/app/manifests/v1", "/v2/team/nope/manifests/v1"),
                (
                    &format!("/v2/team/app/manifests/{}", im.digest()) as &str,
                    &format!("/v2/team/nope/manifests/{}", im.digest()) as &str,
                ),
                (
                    &format!("/v2/team/app/blobs/{}", sha256(&im.blobs[1])) as &str,
                    &format!("/v2/team/nope/blobs/{}", sha256(&im.blobs[1])) as &str,
                ),
                ("/v2/team/app/tags/list", "/v2/team/nope/tags/list"),
            ] {
                for method in ["GET", "HEAD"] {
                    let a = w.auth(&who, &scopes("team/app")).await;
                    let b = w.auth(&who, &scopes("team/nope")).await;
                    let (sa, wa, ba) = raw(&w.d.host, method, exists, a.as_deref());
                    let (sb, wb, bb) = raw(&w.d.host, method, absent, b.as_deref());
                    assert!(
                        sa == 401 || sa == 403,
                        "{mode} {who:?} {method} {exists}: {sa}"
                    );
                    assert_eq!(sa, sb, "{mode} {who:?} {method} {exists}");
                    assert_eq!(wa.replace("team/app", "X"), wb.replace("team/nope", "X"));
                    assert_eq!(ba, bb, "{mode} {who:?} {method} {exists}: bodies differ");
                }
            }
        }
        // Spellings of the same route get the canonical decision, or are refused as names
        // that do not parse; none is served.
        let a = w.auth(&outsider, &scopes("team/app")).await;
        let (canonical, _, _) = raw(&w.d.host, "GET", "/v2/team/app/manifests/v1", a.as_deref());
        assert!(canonical == 401 || canonical == 403);
        for path in ["/v2/team/app/manifests/v1/", "/v2/team/app/tags/list/"] {
            let (s, _, _) = raw(&w.d.host, "GET", path, a.as_deref());
            assert_eq!(s, canonical, "{mode} {path}");
        }
        for path in [
            "/v2/team//app/manifests/v1",
            "//v2/team/app/manifests/v1",
            "/v2/team%2Fapp/manifests/v1",
            "/v2/te%61m/app/manifests/v1",
            "/v2/pub/../team/app/manifests/v1",
            "/v2/./team/app/manifests/v1",
            "/v2/TEAM/app/manifests/v1",
        ] {
            let (s, _, body) = raw(&w.d.host, "GET", path, a.as_deref());
            assert!(
                [400, 401, 403, 404].contains(&s),
                "{mode} {path}: {s} {body}"
            );
            assert!(
                !body.contains("schemaVersion"),
                "{mode} {path} served the manifest"
            );
        }
        // Other methods on a readable route need the same access as reading it.
        for method in ["POST", "PATCH", "OPTIONS", "PROPFIND"] {
            let (s, _, _) = raw(&w.d.host, method, "/v2/team/app/manifests/v1", a.as_deref());
            assert_eq!(s, canonical, "{mode} {method}");
        }
        // Uploads belong to whoever started them: another pusher of the project cannot see,
        // feed or cancel them (and learns nothing more than for an upload that never was).
        let dev = w.who("dev");
        let maint = w.who("maint");
        let push = vec!["repository:team/app:pull,push".to_string()];
        let r = w
            .send(
                &dev,
                &push,
                Method::POST,
                "/v2/team/app/blobs/uploads/",
                None,
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let nobody = "/v2/team/app/blobs/uploads/00000000-0000-4000-8000-000000000000";
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let theirs = w
                .send(
                    &maint,
                    &push,
                    method.clone(),
                    &loc,
                    Some(vec![1, 2, 3]),
                    None,
                )
                .await;
            let none = w
                .send(
                    &maint,
                    &push,
                    method.clone(),
                    nobody,
                    Some(vec![1, 2, 3]),
                    None,
                )
                .await;
            assert_eq!(theirs.status(), StatusCode::NOT_FOUND, "{mode} {method}");
            assert_eq!(none.status(), StatusCode::NOT_FOUND, "{mode} {method}");
        }
        let mine = w.send(&dev, &push, Method::GET, &loc, None, None).await;
        assert_eq!(
            mine.status(),
            StatusCode::NO_CONTENT,
            "{mode}: the owner still has it"
        );
    }
}

// -------------------------------------------------------------------------------------------
// The audit log after a scripted sequence, and tampering found.

/// `(actor, action, repository, target, outcome)` of every entry.
fn audit_rows(d: &Daemon) -> Vec<(String, String, String, String, String)> {
    let out = admin_cli(d, ROOT, ROOT_PW, &["audit", "--json"], None);
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (
                s("actor"),
                s("action"),
                s("repository"),
                s("target"),
                s("outcome"),
            )
        })
        .collect()
}

#[tokio::test]
async fn audit_log_holds_exactly_the_scripted_entries_and_verify_names_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stowage.toml");
    std::fs::write(&cfg, "[auth]\nmode = \"token\"\naudit_pulls = true\n").unwrap();
    common::auth::add_user_offline(dir.path(), ROOT, ROOT_PW, true);
    let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let c = client();
    admin_cli(
        &d,
        ROOT,
        ROOT_PW,
        &["user", "add", "alice"],
        Some("alice-password-1"),
    );
    admin_cli(
        &d,
        ROOT,
        ROOT_PW,
        &["user", "grant", "alice", "team", "developer"],
        None,
    );
    let alice = common::auth::token(
        &c,
        &d,
        Some(("alice", "alice-password-1")),
        &["repository:team/app:pull,push"],
    )
    .await;
    let im = image(vec![data(1000, 21)]);
    let bearer = format!("Bearer {alice}");
    for b in &im.blobs {
        let r = c
            .post(d.url(&format!("/v2/team/app/blobs/uploads/?digest={}", sha256(b))))
            .header("authorization", &bearer)
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = c
        .put(d.url("/v2/team/app/manifests/v1"))
        .header("authorization", &bearer)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(im.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(d.url("/v2/team/app/manifests/v1"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(d.url("/token?service=stowage"))
        .basic_auth("bob", Some("not-bobs-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let partial = common::auth::token(
        &c,
        &d,
        Some(("alice", "alice-password-1")),
        &["repository:team/app:delete"],
    )
    .await;
    let r = c
        .delete(d.url("/v2/team/app/manifests/v1"))
        .header("authorization", format!("Bearer {partial}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let root = common::auth::token(
        &c,
        &d,
        Some((ROOT, ROOT_PW)),
        &["repository:team/app:delete"],
    )
    .await;
    let r = c
        .delete(d.url("/v2/team/app/manifests/v1"))
        .header("authorization", format!("Bearer {root}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    admin_cli(
        &d,
        ROOT,
        ROOT_PW,
        &["gc", "run", "--dry-run", "--wait"],
        None,
    );

    let m = im.digest();
    let row = |a: &str, act: &str, repo: &str, target: &str, outcome: &str| {
        (
            a.to_string(),
            act.to_string(),
            repo.to_string(),
            target.to_string(),
            outcome.to_string(),
        )
    };
    let mut want = vec![
        row("system:offline-cli", "user_add", "", ROOT, "ok"),
        row("user:root", "user_add", "", "alice", "ok"),
        row("user:root", "role_grant", "team", "alice", "ok"),
        row("user:alice", "token_issue", "", "", "ok"),
        row(
            "user:alice",
            "blob_push",
            "team/app",
            &sha256(&im.blobs[0]),
            "ok",
        ),
        row(
            "user:alice",
            "blob_push",
            "team/app",
            &sha256(&im.blobs[1]),
            "ok",
        ),
        row("user:alice", "manifest_push", "team/app", &m, "ok"),
        row("user:alice", "tag_set", "team/app", "v1", "ok"),
        row("user:alice", "manifest_pull", "team/app", &m, "ok"),
        row("user:bob", "login", "", "", "denied"),
        row("user:alice", "token_issue", "", "", "ok"),
        row("user:alice", "manifest_delete", "team/app", "", "denied"),
        row("user:root", "token_issue", "", "", "ok"),
        row("user:root", "tag_delete", "team/app", "v1", "ok"),
        row("user:root", "gc_run", "", "1", "ok"),
    ];
    // Entries without a change are written by a queue of their own: wait for all of them.
    let mut got = Vec::new();
    for _ in 0..100 {
        got = audit_rows(&d);
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Changes are in commit order; the rest may interleave, so compare as sorted lists, and
    // check the order of the changes separately.
    let changes = |rows: &[(String, String, String, String, String)]| -> Vec<String> {
        rows.iter()
            .filter(|r| {
                [
                    "user_add",
                    "role_grant",
                    "blob_push",
                    "manifest_push",
                    "tag_set",
                    "tag_delete",
                ]
                .contains(&r.1.as_str())
            })
            .map(|r| format!("{} {} {}", r.0, r.1, r.3))
            .collect()
    };
    assert_eq!(changes(&got), changes(&want), "changes out of order");
    let mut sorted = got.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want, "audit log:\n{got:#?}");
    // No secret anywhere in the log.
    let all = admin_cli(&d, ROOT, ROOT_PW, &["audit", "--json"], None);
    for secret in [
        ROOT_PW,
        "alice-password-1",
        "not-bobs-password",
        &alice,
        &partial,
        &root,
    ] {
        assert!(!all.contains(secret), "a secret reached the audit log");
    }
    // The entry to tamper with: alice's manifest push (the one after it follows in the log).
    let target = all
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["action"] == "manifest_push")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(d.terminate().success());

    // Tampering, found offline by `stowage audit verify`.
    let data_dir = dir.path().to_str().unwrap().to_string();
    let verify = || {
        let out = cli_env(&["audit", "verify", "--data-dir", &data_dir], &[]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = verify();
    assert!(ok, "{text}");
    let index_dir = dir.path().join("index");
    let with_index = |f: &dyn Fn(&stowage_index::Index)| {
        let idx =
            stowage_index::Index::open(&index_dir, stowage_index::IndexOptions::default()).unwrap();
        f(&idx);
    };
    let mut original = Vec::new();
    with_index(&|idx| {
        let v = idx.audit_raw(target).unwrap().unwrap();
        std::fs::write(dir.path().join("saved"), &v).unwrap();
    });
    original.extend(std::fs::read(dir.path().join("saved")).unwrap());
    let restore = || {
        with_index(&|idx| {
            let v = std::fs::read(dir.path().join("saved")).unwrap();
            idx.audit_tamper(target, Some(&v)).unwrap();
            let n = std::fs::read(dir.path().join("saved-next")).ok();
            if let Some(n) = n {
                idx.audit_tamper(target + 1, Some(&n)).unwrap();
            }
        });
    };
    // 1. An edited entry (its actor changed).
    with_index(&|idx| {
        let mut v = idx.audit_raw(target).unwrap().unwrap();
        let text = String::from_utf8(v[64..].to_vec()).unwrap();
        let edited = text.replace("user:alice", "user:mallo");
        assert_ne!(text, edited, "entry {target} is alice's");
        v.truncate(64);
        v.extend_from_slice(edited.as_bytes());
        idx.audit_tamper(target, Some(&v)).unwrap();
    });
    let (ok, text) = verify();
    assert!(!ok);
    assert!(text.contains(&format!("entry {target}: altered")), "{text}");
    restore();
    assert!(verify().0, "restored");
    // 2. A removed entry.
    with_index(&|idx| idx.audit_tamper(target, None).unwrap());
    let (ok, text) = verify();
    assert!(!ok);
    assert!(text.contains(&format!("entry {target}: missing")), "{text}");
    restore();
    assert!(verify().0, "restored");
    // 3. Two entries swapped.
    with_index(&|idx| {
        let next = idx.audit_raw(target + 1).unwrap().unwrap();
        std::fs::write(dir.path().join("saved-next"), &next).unwrap();
        let this = idx.audit_raw(target).unwrap().unwrap();
        idx.audit_tamper(target, Some(&next)).unwrap();
        idx.audit_tamper(target + 1, Some(&this)).unwrap();
    });
    let (ok, text) = verify();
    assert!(!ok);
    assert!(
        text.contains(&format!("entry {target}: altered"))
            && text.contains(&format!("entry {}: altered", target + 1)),
        "{text}"
    );
    restore();
    assert!(verify().0, "restored");
    let _ = original;
}

/// `/metrics` with authentication on: system admins and the configured readers only, whatever
/// address the client comes from (every client here is on loopback); refusals are audited;
/// guessing a password gets the account throttled from that address, on `/metrics` and on
/// the API alike, while other accounts go on.
#[tokio::test]
async fn metrics_are_for_admins_and_readers_and_guessing_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stowage.toml");
    std::fs::write(
        &cfg,
        "[auth]\nmode = \"basic\"\nmetrics_readers = [\"prom\"]\n",
    )
    .unwrap();
    common::auth::add_user_offline(dir.path(), ROOT, ROOT_PW, true);
    let d = Daemon::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let c = client();
    for u in ["prom", "alice"] {
        admin_cli(
            &d,
            ROOT,
            ROOT_PW,
            &["user", "add", u],
            Some(&format!("{u}-password-1")),
        );
    }
    admin_cli(
        &d,
        ROOT,
        ROOT_PW,
        &["user", "grant", "alice", "team", "developer"],
        None,
    );
    let metrics = |creds: Option<(&'static str, String)>| {
        let c = c.clone();
        let url = d.url("/metrics");
        async move {
            let mut r = c.get(url);
            if let Some((u, p)) = creds {
                r = r.basic_auth(u, Some(p));
            }
            r.send().await.unwrap()
        }
    };
    // Nothing, a user who is neither admin nor reader, a wrong password: refused.
    let r = metrics(None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert!(!r.text().await.unwrap().contains("stowage_"));
    let r = metrics(Some(("alice", "alice-password-1".into()))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.text().await.unwrap().contains("stowage_"));
    let r = metrics(Some(("prom", "wrong-password".into()))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The reader and the admin read them.
    for (u, p) in [
        ("prom", "prom-password-1".to_string()),
        (ROOT, ROOT_PW.into()),
    ] {
        let r = metrics(Some((u, p))).await;
        assert_eq!(r.status(), StatusCode::OK, "{u}");
        assert!(r.text().await.unwrap().contains("stowage_upload_sessions"));
    }
    // The refusals with credentials are in the audit log, named, without passwords.
    let audit = admin_cli(
        &d,
        ROOT,
        ROOT_PW,
        &["audit", "--action", "login", "--json"],
        None,
    );
    let on_metrics: Vec<&str> = audit.lines().filter(|l| l.contains("/metrics")).collect();
    assert_eq!(on_metrics.len(), 2, "{audit}");
    assert!(on_metrics.iter().any(|l| l.contains("user:alice")));
    assert!(on_metrics.iter().any(|l| l.contains("user:prom")));
    assert!(!audit.contains("wrong-password") && !audit.contains("prom-password-1"));

    // Guessing prom's password: refused (401) until the tenth failure in a minute is spent
    // (one more may have refilled meanwhile), then refused unchecked (429).
    let mut checked = 1; // the wrong password on /metrics above
    loop {
        let r = c
            .get(d.url("/v2/"))
            .basic_auth("prom", Some(format!("guess-{checked}")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        checked += 1;
        assert!(
            checked <= 13,
            "still checking passwords after {checked} failures"
        );
    }
    assert!(checked >= 11, "throttled after only {checked} failures");
    // Now even the right password is not checked, on the API and on /metrics.
    let r = c
        .get(d.url("/v2/"))
        .basic_auth("prom", Some("prom-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    let r = metrics(Some(("prom", "prom-password-1".into()))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Other accounts from the same address are not locked out.
    let r = c
        .get(d.url("/v2/"))
        .basic_auth("alice", Some("alice-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = metrics(Some((ROOT, ROOT_PW.into()))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Guesses sent all at once are checked one after another per account and address, and the
/// failure limit applies to those still waiting: 40 parallel guesses get about ten password
/// checks, not 40.
#[tokio::test]
async fn parallel_guesses_do_not_outrun_the_failure_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_with_admin(dir.path(), "basic", ROOT, ROOT_PW, &[]);
    let c = client();
    let attempts = (0..40).map(|i| {
        let c = c.clone();
        let url = d.url("/v2/");
        async move {
            c.get(url)
                .basic_auth(ROOT, Some(format!("guess-{i}")))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        checked + throttled,
        40,
        "only 401 and 429 expected: {statuses:?}"
    );
    // Ten fail within the minute's allowance, the eleventh is over it (one more may have
    // refilled meanwhile); everything after is refused unchecked.
    assert!(
        (11..=13).contains(&checked),
        "{checked} guesses were checked"
    );
    // The right password from this address is refused unchecked too, until the limit refills.
    let r = c
        .get(d.url("/v2/"))
        .basic_auth(ROOT, Some(ROOT_PW))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}
