//! The token flows end to end: the OAuth2 POST and refresh tokens of the built-in token
//! service, htpasswd users (and reloading the file on SIGHUP), tokens from an external issuer
//! verified against its certificates, and the admin API reached with a token or a client
//! certificate.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::auth::{admin_cli, cli_env, cli_ok, start_with_admin};
use common::image::{image, push_image};
use common::pki::Ca;
use common::{data, sha256, Daemon};
use reqwest::StatusCode;

const ROOT_PW: &str = "root-password-123";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn post_form(c: &reqwest::Client, d: &Daemon, form: &[(&str, &str)]) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    c.post(d.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn push_with(c: &reqwest::Client, d: &Daemon, token: &str, bytes: &[u8]) -> StatusCode {
    c.post(d.url(&format!(
        "/v2/team/app/blobs/uploads/?digest={}",
        sha256(bytes)
    )))
    .header("authorization", format!("Bearer {token}"))
    .body(bytes.to_vec())
    .send()
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn oauth2_password_and_refresh_grants() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_with_admin(dir.path(), "token", "root", ROOT_PW, &[]);
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "add", "alice"],
        Some("alice-password-1"),
    );
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "grant", "alice", "team", "developer"],
        None,
    );
    let c = client();
    let r = post_form(
        &c,
        &d,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-password-1"),
            ("service", "stowage"),
            ("scope", "repository:team/app:pull,push"),
            ("access_type", "offline"),
            ("client_id", "e2e"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(
        push_with(&c, &d, &access, &data(100, 1)).await,
        StatusCode::CREATED
    );
    // A refresh token is no access token.
    assert_eq!(
        push_with(&c, &d, &refresh, &data(100, 2)).await,
        StatusCode::UNAUTHORIZED
    );
    // It buys new access tokens without the password.
    let r = post_form(
        &c,
        &d,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", "stowage"),
            ("scope", "repository:team/app:pull,push"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    let again = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        push_with(&c, &d, &again, &data(100, 3)).await,
        StatusCode::CREATED
    );
    // An access token is no refresh token; a wrong password and an unknown grant are refused.
    let r = post_form(
        &c,
        &d,
        &[("grant_type", "refresh_token"), ("refresh_token", &access)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    let r = post_form(
        &c,
        &d,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wrong"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post_form(&c, &d, &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unsupported_grant_type");
    // GET with offline_token gives a refresh token too; `account` must be the user.
    let r = c
        .get(d.url("/token?service=stowage&offline_token=true&account=alice&scope=repository:team/app:pull"))
        .basic_auth("alice", Some("alice-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["refresh_token"].is_string());
    let r = c
        .get(d.url("/token?service=stowage&account=root&scope=repository:team/app:pull"))
        .basic_auth("alice", Some("alice-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A password change ends the user's refresh tokens.
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "passwd", "alice"],
        Some("alice-password-2"),
    );
    let r = post_form(
        &c,
        &d,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // And the old password with it (no cached login outlives the change).
    let r = c
        .get(d.url("/token?service=stowage"))
        .basic_auth("alice", Some("alice-password-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A user removed and created again with the same name and password is a new account:
    // the refresh tokens of the old one are dead (carol never changed her password, so only
    // the account's identity tells them apart).
    let offline = |user: &'static str, pw: &'static str| {
        let c = c.clone();
        let url = d.url("/token?service=stowage&offline_token=true");
        async move {
            let r = c.get(url).basic_auth(user, Some(pw)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "add", "carol"],
        Some("carol-password-1"),
    );
    let old_refresh = offline("carol", "carol-password-1").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    admin_cli(&d, "root", ROOT_PW, &["user", "del", "carol"], None);
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "add", "carol"],
        Some("carol-password-1"),
    );
    let r = post_form(
        &c,
        &d,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &old_refresh),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The new account logs in, and its own refresh token works.
    let fresh = offline("carol", "carol-password-1").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post_form(
        &c,
        &d,
        &[("grant_type", "refresh_token"), ("refresh_token", &fresh)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Robots present their secret every time: no refresh token for them.
    let out = admin_cli(
        &d,
        "root",
        ROOT_PW,
        &[
            "robot",
            "create",
            "ci",
            "--project",
            "team",
            "--actions",
            "pull",
            "--json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (robot, secret) = (
        v["account"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    );
    let r = c
        .get(d.url("/token?service=stowage&offline_token=true&scope=repository:team/app:pull"))
        .basic_auth(&robot, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["token"].is_string() && v["refresh_token"].is_null(),
        "{v}"
    );

    // Guessing: after 10 refused logins to one account from one address, that account's
    // logins from there are refused unchecked (429 with Retry-After), the right password
    // included; a token it holds keeps working.
    let held = common::auth::token(
        &c,
        &d,
        Some(("alice", "alice-password-2")),
        &["repository:team/app:pull"],
    )
    .await;
    let mut checked = 0;
    loop {
        let r = post_form(
            &c,
            &d,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", &format!("guess-{checked}")),
            ],
        )
        .await;
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
    // (The account's two earlier wrong passwords may still count.)
    assert!(checked >= 8, "throttled after only {checked} failures");
    let r = c
        .get(d.url("/token?service=stowage"))
        .basic_auth("alice", Some("alice-password-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Other accounts from the same address are not locked out by it (root logs in below).
    let r = c
        .get(d.url("/v2/team/app/tags/list"))
        .bearer_auth(&held)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The guesses are in the audit log; the passwords are not.
    let audit = admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["audit", "--action", "login", "--json"],
        None,
    );
    assert!(audit.lines().count() >= 11, "{audit}");
    assert!(
        !audit.contains("guess-"),
        "a password reached the audit log"
    );
}

/// Writes an htpasswd file with bcrypt entries.
fn htpasswd(path: &std::path::Path, users: &[(&str, &str)]) {
    let mut text = String::from("# migrated from Distribution\n");
    for (u, p) in users {
        text.push_str(&format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap()));
    }
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn htpasswd_users_log_in_and_the_file_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    htpasswd(&file, &[("legacy", "legacy-password-1")]);
    let d = start_with_admin(
        dir.path(),
        "basic",
        "root",
        ROOT_PW,
        &["--auth-htpasswd", file.to_str().unwrap()],
    );
    // An htpasswd user gets roles like any other.
    admin_cli(
        &d,
        "root",
        ROOT_PW,
        &["user", "grant", "legacy", "team", "developer"],
        None,
    );
    let users = admin_cli(&d, "root", ROOT_PW, &["user", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(users.trim()).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "legacy" && u["source"] == "htpasswd"),
        "{v}"
    );
    let c = client();
    let push = |pw: &'static str, seed: u64| {
        let c = c.clone();
        let d_url = d.url(&format!(
            "/v2/team/app/blobs/uploads/?digest={}",
            sha256(&data(100, seed))
        ));
        async move {
            c.post(d_url)
                .basic_auth("legacy", Some(pw))
                .body(data(100, seed))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(push("legacy-password-1", 1).await, StatusCode::CREATED);
    assert_eq!(push("wrong", 2).await, StatusCode::UNAUTHORIZED);
    // The operator changes the file and sends SIGHUP: the new password works, the old does not.
    htpasswd(&file, &[("legacy", "legacy-password-2")]);
    let status = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seed = 3;
    loop {
        seed += 1;
        if push("legacy-password-2", seed).await == StatusCode::CREATED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "htpasswd not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        push("legacy-password-1", 99).await,
        StatusCode::UNAUTHORIZED
    );
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact ES256 JWS signed with a PKCS#8 P-256 key.
fn es256(header: &serde_json::Value, claims: &serde_json::Value, pkcs8: &[u8]) -> String {
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64url(sig.as_ref()))
}

#[tokio::test]
async fn external_issuer_tokens_are_verified_against_its_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    // The external token service: a signing certificate (trusted by libtrust kid) and a CA
    // whose leaves may sign with an x5c chain.
    let signer_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "harbor-token");
    let signer_cert = p.self_signed(&signer_key).unwrap();
    let mut cap = CertificateParams::new(Vec::<String>::new()).unwrap();
    cap.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cap.distinguished_name.push(DnType::CommonName, "token CA");
    let ca = CertifiedIssuer::self_signed(cap, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name.push(DnType::CommonName, "token leaf");
    let leaf = lp.signed_by(&leaf_key, &ca).unwrap();
    let bundle = dir.path().join("root.pem");
    std::fs::write(&bundle, format!("{}{}", signer_cert.pem(), ca.pem())).unwrap();
    let cfg = dir.path().join("stowage.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"external\"\nservice = \"harbor-registry\"\n[auth.external]\nissuer = \"harbor-token-issuer\"\nrealm = \"https://harbor.example/service/token\"\nrootcertbundle = {bundle:?}\n"
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let d = Daemon::start_with(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let c = client();
    // Challenges send clients to the external realm; there is no local token service.
    let r = c.get(d.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        ch.contains("realm=\"https://harbor.example/service/token\"")
            && ch.contains("service=\"harbor-registry\""),
        "{ch}"
    );
    assert_eq!(
        c.get(d.url("/token")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |iss: &str, aud: &str, actions: &[&str]| {
        serde_json::json!({
            "iss": iss, "sub": "harbor-user", "aud": aud, "exp": now + 300, "nbf": now - 5,
            "iat": now, "jti": format!("j{now}{}", actions.len()),
            "access": [
                {"type": "repository", "name": "team/app", "actions": actions},
                {"type": "registry", "name": "catalog", "actions": ["*"]}
            ]
        })
    };
    let kid = stowage_auth::token::libtrust_key_id(&rcgen::PublicKeyData::subject_public_key_info(
        &signer_key,
    ));
    let by_kid = es256(
        &serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        &claims("harbor-token-issuer", "harbor-registry", &["pull", "push"]),
        &signer_key.serialize_der(),
    );
    let im = image(vec![data(2000, 5)]);
    let authed = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {by_kid}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    push_image(&authed, &d.base, "team/app", "v1", &im).await;
    let cat = authed.get(d.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(cat.status(), StatusCode::OK);
    use base64::Engine as _;
    let x5c = vec![base64::engine::general_purpose::STANDARD.encode(leaf.der())];
    let by_chain = es256(
        &serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": x5c}),
        &claims("harbor-token-issuer", "harbor-registry", &["pull"]),
        &leaf_key.serialize_der(),
    );
    let r = c
        .get(d.url("/v2/team/app/manifests/v1"))
        .header("authorization", format!("Bearer {by_chain}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "x5c chain to the bundle");
    // Refused: another issuer, another audience, a key the bundle does not hold (under a
    // made-up kid or with its own self-signed x5c), and pull-only for a push.
    let stranger = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(Vec::<String>::new()).unwrap();
    sp.distinguished_name.push(DnType::CommonName, "stranger");
    let stranger_cert = sp.self_signed(&stranger).unwrap();
    let refused = [
        es256(
            &serde_json::json!({"alg": "ES256", "kid": kid}),
            &claims("someone-else", "harbor-registry", &["pull"]),
            &signer_key.serialize_der(),
        ),
        es256(
            &serde_json::json!({"alg": "ES256", "kid": kid}),
            &claims("harbor-token-issuer", "stowage", &["pull"]),
            &signer_key.serialize_der(),
        ),
        es256(
            &serde_json::json!({"alg": "ES256", "kid": stowage_auth::token::libtrust_key_id(&rcgen::PublicKeyData::subject_public_key_info(&stranger))}),
            &claims("harbor-token-issuer", "harbor-registry", &["pull"]),
            &stranger.serialize_der(),
        ),
        es256(
            &serde_json::json!({"alg": "ES256", "x5c": [base64::engine::general_purpose::STANDARD.encode(stranger_cert.der())]}),
            &claims("harbor-token-issuer", "harbor-registry", &["pull"]),
            &stranger.serialize_der(),
        ),
    ];
    for (i, t) in refused.iter().enumerate() {
        let r = c
            .get(d.url("/v2/team/app/manifests/v1"))
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "case {i}");
        let ch = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(ch.contains("invalid_token"), "case {i}: {ch}");
    }
    let r = c
        .post(d.url("/v2/team/app/blobs/uploads/"))
        .header("authorization", format!("Bearer {by_chain}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
}

#[tokio::test]
async fn admin_api_takes_tokens_and_mapped_client_certificates_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new(&pki, "ops");
    let server = ca.leaf(&pki, "admin-server", "");
    let ops = ca.leaf(&pki, "ops-alice", "spiffe://ops/alice");
    let unmapped = ca.leaf(&pki, "ops-bob", "spiffe://ops/bob");
    let rogue = Ca::new(&pki, "rogue").leaf(&pki, "rogue-alice", "spiffe://ops/alice");
    let cfg = dir.path().join("stowage.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"token\"\n[admin.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_auth = \"optional\"\n[[admin.cert_users]]\nidentity = \"spiffe://ops/alice\"\nuser = \"root\"\n",
            server.cert, server.key, ca.cert
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    common::auth::add_user_offline(&data_dir, "root", ROOT_PW, true);
    common::auth::add_user_offline(&data_dir, "alice", "alice-password-1", false);
    let d = Daemon::start_with(&data_dir, &["--config", cfg.to_str().unwrap()]);
    assert!(d.admin.starts_with("https://"), "{}", d.admin);
    let addr = d.admin.trim_start_matches("https://").to_string();
    let ca_path = ca.cert.to_str().unwrap().to_string();
    let info = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["info", "--json", "--server", &addr, "--ca", &ca_path];
        args.extend_from_slice(extra);
        cli_env(&args, envs)
    };
    // A mapped client certificate of an admin.
    let out = info(
        &[
            "--cert",
            ops.cert.to_str().unwrap(),
            "--key",
            ops.key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bearer token of the admin, from the token service (via `stowage token`).
    let root_token = cli_ok(
        &["token", "--registry", &d.base, "--user", "root"],
        &[("STOWAGE_PASSWORD", ROOT_PW)],
    );
    let out = info(&["--token", root_token.trim()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token the admin got for pushing and pulling does not open the admin API: only one
    // granted registry:admin:* does (what `stowage token` asks for by default).
    let push_token = cli_ok(
        &[
            "token",
            "--registry",
            &d.base,
            "--user",
            "root",
            "--scope",
            "repository:team/app:pull,push",
        ],
        &[("STOWAGE_PASSWORD", ROOT_PW)],
    );
    let out = info(&["--token", push_token.trim()], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registry:admin:*"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Refused: a token of a user who is no admin, a certificate that maps to nobody, one from
    // another CA, and nothing at all.
    let alice_token = cli_ok(
        &["token", "--registry", &d.base, "--user", "alice"],
        &[("STOWAGE_PASSWORD", "alice-password-1")],
    );
    let out = info(&["--token", alice_token.trim()], &[]);
    assert!(!out.status.success());
    // (The token service did not grant her the admin scope she asked for.)
    assert!(String::from_utf8_lossy(&out.stderr).contains("registry:admin:*"));
    let out = info(
        &[
            "--cert",
            unmapped.cert.to_str().unwrap(),
            "--key",
            unmapped.key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let out = info(
        &[
            "--cert",
            rogue.cert.to_str().unwrap(),
            "--key",
            rogue.key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let out = info(&[], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin identity"));
    // And plain text gets nowhere.
    let out = cli_env(&["info", "--server", &addr], &[]);
    assert!(!out.status.success());
    // The refusals are audited (read with the admin's certificate).
    let out = cli_env(
        &[
            "audit",
            "--action",
            "admin",
            "--json",
            "--server",
            &addr,
            "--ca",
            &ca_path,
            "--cert",
            ops.cert.to_str().unwrap(),
            "--key",
            ops.key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let refused = String::from_utf8_lossy(&out.stdout);
    assert!(refused.lines().count() >= 3, "{refused}");
    assert!(
        !refused.contains(alice_token.trim()),
        "a token reached the audit log"
    );
}
