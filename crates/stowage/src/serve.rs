//! `stowage serve`: wiring, listeners, logging and graceful shutdown.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use stowage_auth::authority::{Authority, Mode};
use stowage_auth::net::Listener;
use stowage_auth::tls::ReloadableTls;
use stowage_core::SystemClock;
use stowage_store::{Store, StoreConfig};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ServeArgs, Settings};

fn init_logging(s: &Settings) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&s.log_level),
    }
    .map_err(|e| format!("bad log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match s.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| format!("initialising logging: {e}"))
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let settings = args.resolve()?;
    init_logging(&settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stowage-worker")
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    let result = rt.block_on(serve(settings));
    // Give blocking tasks (fsyncs, index writes) a moment to finish before the runtime drops.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// The signals the daemon acts on, registered before it announces its listeners: a SIGTERM
/// or SIGHUP sent right after the start lines must be handled, not kill the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let reg = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("listening for {name}: {e}"))
        };
        Ok(Signals {
            term: reg(SignalKind::terminate(), "SIGTERM")?,
            int: reg(SignalKind::interrupt(), "SIGINT")?,
            hup: reg(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Waits for SIGTERM or SIGINT.
async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("interrupt received, shutting down"),
    }
}

/// The TLS of a listener, loaded (a bad file stops the start with its path and the reason).
fn load_tls(
    files: &Option<stowage_auth::tls::TlsFiles>,
    alpn: Vec<Vec<u8>>,
    what: &str,
) -> Result<Option<ReloadableTls>, String> {
    files
        .clone()
        .map(|f| ReloadableTls::load(f, alpn).map_err(|e| format!("TLS of the {what}: {e}")))
        .transpose()
}

/// The URL scheme a listener speaks.
fn scheme(tls: &Option<ReloadableTls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Client TLS towards `https://` peers: this site's replication certificate as client
/// certificate, the replication client CA as the peers' CA, each peer's identity checked
/// instead of its host name.
fn peer_tls(s: &Settings, peers: &mut [stowage_repl::PeerConfig]) -> Result<(), String> {
    for p in peers.iter_mut() {
        if !p.endpoint.starts_with("https://") {
            continue;
        }
        let tls = s.security.repl_tls.as_ref().ok_or_else(|| {
            format!(
                "peer {}: an https endpoint needs [replication.tls] (cert, key and client_ca): \
                 this site's certificate is its client certificate towards peers",
                p.name
            )
        })?;
        let ca = tls.client_ca.as_ref().ok_or_else(|| {
            format!(
                "peer {}: [replication.tls] needs client_ca, the CA peers' certificates are \
                 checked against",
                p.name
            )
        })?;
        let cfg = stowage_auth::tls::client_config(
            ca,
            Some((tls.cert.as_path(), tls.key.as_path())),
            p.identity.as_deref(),
            stowage_auth::tls::alpn_grpc(),
        )
        .map_err(|e| format!("peer {}: TLS: {e}", p.name))?;
        p.tls = Some(cfg);
    }
    Ok(())
}

async fn serve(s: Settings) -> Result<(), String> {
    crate::config::security::check_exposure(&s.security, s.listen, s.admin_listen, s.repl_listen)?;
    let signals = Signals::register()?;
    match stowage_auth::net::raise_nofile_limit() {
        Ok((old, new)) if old != new => {
            tracing::info!(old, new, "raised the open-file limit to its hard limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut cfg = StoreConfig::new(&s.data_dir);
    cfg.max_blob_size = s.max_blob_size;
    cfg.sync_index = s.sync_index;
    cfg.index_tuning.block_cache_bytes = usize::try_from(s.index_cache)
        .map_err(|_| format!("index_cache {} does not fit in memory", s.index_cache))?;
    cfg.cas.verify_reads = s.verify_reads;
    cfg.cas.direct_io = s.direct_io;
    cfg.site = Some(s.site.clone());
    cfg.site_source = if s.site_explicit {
        stowage_store::SiteSource::Explicit
    } else {
        stowage_store::SiteSource::Default
    };
    cfg.limits = s.security.limits.store.clone();
    cfg.seen_window_ms = s.gc_seen_window.as_millis() as u64;
    cfg.min_free_bytes = s.min_free_space;
    cfg.backend = Some(s.storage.backend(&s.data_dir).map_err(|e| e.to_string())?);
    cfg.cas.max_server_copy = s.storage.max_server_copy();
    if let Some(p) = s.part_size {
        cfg.cas.part_size = p as usize;
    }
    let store = Store::open(cfg).await.map_err(|e| {
        format!(
            "opening store in {} (blobs: {}): {e}",
            s.data_dir.display(),
            s.storage.describe()
        )
    })?;
    tracing::info!(data_dir = %s.data_dir.display(), site = store.site().unwrap_or_default(), storage = %s.storage.describe(), "store open");

    // Access control.
    let directory = Arc::new(crate::access_rpc::StoreDirectory(store.accounts()));
    let authority = Arc::new(
        Authority::new(s.security.auth.clone(), directory, Arc::new(SystemClock))
            .map_err(|e| format!("authentication: {e}"))?,
    );
    if authority.mode() != Mode::Open {
        let admins = store
            .accounts()
            .users()
            .map_err(|e| format!("reading users: {e}"))?
            .iter()
            .filter(|(_, u)| u.system_admin)
            .count();
        if admins == 0 {
            tracing::warn!(
                "no system-admin user exists yet: create one with `stowage user add NAME --admin --data-dir {}` while the daemon is stopped",
                s.data_dir.display()
            );
        }
    }
    tracing::info!(mode = authority.mode().as_str(), "authentication");

    let api_tls = load_tls(
        &s.security.api_tls,
        stowage_auth::tls::alpn_http(),
        "OCI API",
    )?;
    let admin_tls = load_tls(
        &s.security.admin_tls,
        stowage_auth::tls::alpn_grpc(),
        "admin service",
    )?;
    let repl_tls = load_tls(
        &s.security.repl_tls,
        stowage_auth::tls::alpn_grpc(),
        "replication service",
    )?;
    let net_limits = s.security.limits.net.clone();
    let api = Listener::bind(s.listen, api_tls.clone(), net_limits.clone())
        .await
        .map_err(|e| format!("binding API listener {}: {e}", s.listen))?;
    let admin = Listener::bind(s.admin_listen, admin_tls.clone(), net_limits.clone())
        .await
        .map_err(|e| format!("binding admin listener {}: {e}", s.admin_listen))?;
    let repl = Listener::bind(s.repl_listen, repl_tls.clone(), net_limits.clone())
        .await
        .map_err(|e| format!("binding replication listener {}: {e}", s.repl_listen))?;
    let (api_addr, admin_addr, repl_addr) =
        (api.local_addr(), admin.local_addr(), repl.local_addr());
    let listener_stats = vec![
        ("api", api.stats()),
        ("admin", admin.stats()),
        ("replication", repl.stats()),
    ];
    // Machine-readable start lines (tests and scripts wait for these).
    println!("stowage listening on {}://{api_addr}", scheme(&api_tls));
    println!(
        "stowage admin listening on {}://{admin_addr}",
        scheme(&admin_tls)
    );
    println!(
        "stowage replication listening on {}://{repl_addr}",
        scheme(&repl_tls)
    );
    tracing::info!(%api_addr, %admin_addr, %repl_addr, "listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Certificates and keys are reloaded when their files change, and on SIGHUP.
    let tls_all: Vec<ReloadableTls> = [&api_tls, &admin_tls, &repl_tls]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut background = Vec::new();
    for t in &tls_all {
        background.push(t.spawn_watcher(Duration::from_secs(5), stop_rx.clone()));
    }
    background.push(spawn_sighup(
        signals.hup,
        tls_all,
        authority.clone(),
        stop_rx.clone(),
    ));

    let local = stowage_repl::Local::new(store.replica());
    if authority.mode() != Mode::Open
        && repl_tls.is_none()
        && (!s.peers.is_empty() || !s.peer_access.is_empty())
    {
        return Err(
            "replication peers are configured and authentication is on, but [replication.tls] is not: \
             sites identify each other by their certificates (mutual TLS)"
                .into(),
        );
    }
    let mut peers = s.peers.clone();
    peer_tls(&s, &mut peers)?;
    let replicator = if peers.is_empty() {
        None
    } else {
        let r = stowage_repl::Replicator::new(local.clone(), peers.clone())
            .map_err(|e| format!("replication: {e}"))?;
        for p in &peers {
            tracing::info!(peer = %p.name, endpoint = %p.endpoint, direction = p.direction.as_str(), "replication peer configured");
        }
        Some(r)
    };
    let repl_tasks = replicator
        .as_ref()
        .map(|r| r.start(stop_rx.clone()))
        .unwrap_or_default();
    // Without TLS nobody on the replication listener has an identity. Only in development
    // (authentication off, so the API itself is open on loopback) are loopback callers
    // trusted as peers; with authentication on, such a listener refuses every call.
    let trust_loopback =
        repl_tls.is_none() && repl_addr.ip().is_loopback() && authority.mode() == Mode::Open;
    let gate = Arc::new(stowage_repl::PeerGate::new(
        s.peer_access.clone(),
        trust_loopback,
        s.max_clock_skew,
    ));
    let peer_service = stowage_repl::ReplicationService::new(
        local.clone(),
        replicator.clone(),
        stowage_repl::Role::Peers(gate),
    );
    let operator_service = stowage_repl::ReplicationService::new(
        local,
        replicator.clone(),
        stowage_repl::Role::Operator,
    );
    let gc = stowage_gc::Collector::new(store.gc_ops(), s.gc.clone());
    let scrubber = stowage_store::scrub::Scrubber::new(
        store.clone(),
        s.scrub.clone(),
        replicator
            .clone()
            .map(|r| Arc::new(r) as Arc<dyn stowage_store::scrub::Repairer>),
    );
    background.extend(scrubber.spawn_schedule(stop_rx.clone()));
    let schedule = s.gc_interval.map(|interval| {
        tracing::info!(
            interval = %humantime::format_duration(interval),
            "scheduled garbage collection on"
        );
        gc.spawn_schedule(interval, stop_rx.clone())
    });
    background.push(crate::upload_expiry::spawn(
        store.gc_ops(),
        s.gc.upload_expiry,
        stop_rx.clone(),
    ));
    if let Some(interval) = s.feed.trim_interval {
        let r = replicator.clone();
        let cursors = move || {
            r.as_ref().map_or(Ok(Vec::new()), |r| {
                r.push_cursors().map_err(|e| e.to_string())
            })
        };
        background.push(crate::feed_trim::spawn(
            store.gc_ops(),
            cursors,
            s.feed.clone(),
            interval,
            gc.progress(),
            stop_rx.clone(),
        ));
    }
    if let Some(retention) = s.security.audit.retention {
        background.push(crate::audit_tasks::spawn_retention(
            store.clone(),
            retention,
            stop_rx.clone(),
        ));
    }
    if let Some(path) = &s.security.audit.export {
        background.push(crate::audit_tasks::spawn_export(
            store.clone(),
            path.clone(),
            stop_rx.clone(),
        ));
    }
    let api_limits = stowage_oci::Limits::new(
        s.security
            .limits
            .rate
            .and_then(|(r, b)| Some((NonZeroU32::new(r)?, NonZeroU32::new(b)?))),
    );
    let api_config = stowage_oci::ApiConfig {
        audit_pulls: s.security.audit.pulls,
        ..stowage_oci::ApiConfig::default()
    };
    // `/metrics` next to the OCI API; `/v2/` and its fallback are the OCI router's own.
    let sources = crate::metrics::LimitSources {
        listeners: listener_stats,
        store: store.clone(),
        api: api_limits.clone(),
        limits: s.security.limits.clone(),
        authority: authority.clone(),
        access: s.security.metrics.clone(),
        scrub: scrubber.clone(),
    };
    let app = stowage_oci::router(store.client(), api_config, authority.clone(), api_limits)
        .merge(crate::metrics::router(
            gc.clone(),
            replicator.clone(),
            Arc::new(sources),
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            s.security.limits.body_timeout,
        ));
    let api_task = stowage_store::task::spawn_named(
        "http-api",
        stowage_auth::net::serve_http(api, app, stop_rx.clone()),
    );
    let admin_gate = Arc::new(crate::admin_auth::AdminGate::new(
        authority.clone(),
        store.accounts(),
        s.security.admin_cert_users.clone(),
        admin_addr.ip().is_loopback(),
    ));
    let admin_task = crate::admin::spawn(
        admin,
        store.clone(),
        gc.clone(),
        operator_service,
        crate::access_rpc::AccessService::new(store.clone(), authority.clone()),
        crate::scrub_rpc::ScrubService::new(scrubber, stop_rx.clone()),
        admin_gate,
        s.clone(),
        stop_rx.clone(),
    )?;
    let repl_task = crate::admin::spawn_replication(repl, peer_service, stop_rx.clone());

    shutdown_signal(signals.term, signals.int).await;
    let _ = stop_tx.send(true);
    let drain = async {
        if let Ok(Err(e)) = api_task.await {
            tracing::error!(error = %e, "API server ended with an error");
        }
        if let Ok(Err(e)) = admin_task.await {
            tracing::error!(error = %e, "admin server ended with an error");
        }
        if let Ok(Err(e)) = repl_task.await {
            tracing::error!(error = %e, "replication server ended with an error");
        }
        for t in repl_tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "replication task failed");
            }
        }
        for t in background {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "background task failed");
            }
        }
        // The schedule sees the stop signal too; a run it started ends at its next check.
        if let Some(schedule) = schedule {
            if let Err(e) = schedule.await {
                tracing::error!(error = %e, "garbage collection schedule task failed");
            }
        }
    };
    if tokio::time::timeout(s.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?s.shutdown_timeout, "in-flight requests did not finish in time");
    }
    store.auditor().flush().await;
    if let Err(e) = store.index().flush() {
        tracing::error!(error = %e, "flushing index at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reloads every listener's certificate and the htpasswd file on SIGHUP.
fn spawn_sighup(
    mut hup: tokio::signal::unix::Signal,
    tls: Vec<ReloadableTls>,
    authority: Arc<Authority>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    stowage_store::task::spawn_named("sighup", async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                }
                _ = stop.wait_for(|v| *v) => return,
            }
            tracing::info!("SIGHUP: reloading certificates and the htpasswd file");
            for t in &tls {
                match t.reload() {
                    Ok(changed) => tracing::info!(changed, "certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "certificate reload failed; the old one keeps serving")
                    }
                }
            }
            if authority.htpasswd().is_some() {
                match authority.reload_htpasswd() {
                    Ok(changed) => tracing::info!(changed, "htpasswd file reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "htpasswd reload failed; the old users stay")
                    }
                }
            }
        }
    })
}
