//! `stowage serve`: wiring, listeners, logging and graceful shutdown.

use stowage_store::{Store, StoreConfig};
use tokio::net::TcpListener;
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

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("interrupt received, shutting down");
        }
    }
}

async fn serve(s: Settings) -> Result<(), String> {
    let mut cfg = StoreConfig::new(&s.data_dir);
    cfg.max_blob_size = s.max_blob_size;
    cfg.sync_index = s.sync_index;
    cfg.cas.verify_reads = s.verify_reads;
    cfg.cas.direct_io = s.direct_io;
    cfg.site = Some(s.site.clone());
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
    tracing::info!(data_dir = %s.data_dir.display(), site = %s.site, storage = %s.storage.describe(), "store open");

    let api = TcpListener::bind(s.listen)
        .await
        .map_err(|e| format!("binding API listener {}: {e}", s.listen))?;
    let api_addr = api
        .local_addr()
        .map_err(|e| format!("API listener address: {e}"))?;
    let admin = TcpListener::bind(s.admin_listen)
        .await
        .map_err(|e| format!("binding admin listener {}: {e}", s.admin_listen))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| format!("admin listener address: {e}"))?;
    // Machine-readable start lines (tests and scripts wait for these).
    println!("stowage listening on http://{api_addr}");
    println!("stowage admin listening on http://{admin_addr}");
    tracing::info!(%api_addr, %admin_addr, "listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local = stowage_repl::Local::new(store.clone());
    let replicator = if s.peers.is_empty() {
        None
    } else {
        let r = stowage_repl::Replicator::new(local.clone(), s.peers.clone())
            .map_err(|e| format!("replication: {e}"))?;
        for p in &s.peers {
            tracing::info!(peer = %p.name, endpoint = %p.endpoint, direction = p.direction.as_str(), "replication peer configured");
        }
        Some(r)
    };
    let repl_tasks = replicator
        .as_ref()
        .map(|r| r.start(stop_rx.clone()))
        .unwrap_or_default();
    let repl_service = stowage_repl::ReplicationService::new(local, replicator.clone());
    let gc = stowage_gc::Collector::new(store.clone(), s.gc.clone());
    let schedule = s.gc_interval.map(|interval| {
        tracing::info!(
            interval = %humantime::format_duration(interval),
            "scheduled garbage collection on"
        );
        gc.spawn_schedule(interval, stop_rx.clone())
    });
    // `/metrics` next to the OCI API; `/v2/` and its fallback are the OCI router's own.
    let app = stowage_oci::router(store.clone(), stowage_oci::ApiConfig::default())
        .merge(crate::metrics::router(gc.clone(), replicator.clone()));
    let mut api_rx = stop_rx.clone();
    // TCP_NODELAY: a response is its headers and then its body in separate writes; with Nagle's
    // algorithm the body of a small response (a manifest, a config blob) waits for the client's
    // delayed ACK of the headers, about 40 ms per request on keep-alive connections.
    let api = axum::serve::ListenerExt::tap_io(api, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on an API connection");
        }
    });
    let api_task = stowage_store::task::spawn_named("http-api", async move {
        axum::serve(api, app)
            .with_graceful_shutdown(async move {
                let _ = api_rx.wait_for(|v| *v).await;
            })
            .await
    });
    let admin_task = crate::admin::spawn(
        admin,
        store.clone(),
        gc.clone(),
        repl_service,
        s.clone(),
        stop_rx.clone(),
    )?;

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let drain = async {
        if let Ok(Err(e)) = api_task.await {
            tracing::error!(error = %e, "API server ended with an error");
        }
        if let Ok(Err(e)) = admin_task.await {
            tracing::error!(error = %e, "admin server ended with an error");
        }
        for t in repl_tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "replication task failed");
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
    if let Err(e) = store.index().flush() {
        tracing::error!(error = %e, "flushing index at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
