//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the collector's figures, served
//! on the API listener next to `/v2/`.
//!
//! Written by hand rather than through `prometheus-client` (0.26): that crate writes
//! OpenMetrics only, so every counter's `# HELP`/`# TYPE` would name it without `_total`,
//! help texts would gain a `.`, floats would print as `1.0` and a `# EOF` line would end the
//! body; and every figure here is read at scrape time from state other code owns, which
//! there means a custom `Collector` per source. The formatting itself is [`header()`] and a
//! `writeln!` per sample.

use std::fmt::Write as _;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use stowage_auth::net::ConnStats;
use stowage_gc::{Collector, Counts, Metrics};

/// What the limit and audit series are read from.
#[derive(Debug)]
pub struct LimitSources {
    /// Each listener's connection counters, by name.
    pub listeners: Vec<(&'static str, ConnStats)>,
    /// The store (upload sessions, staged bytes, pins, the audit writer).
    pub store: stowage_store::Store,
    /// The API's rate limit.
    pub api: Arc<stowage_oci::Limits>,
    /// The configured limits.
    pub limits: crate::config::security::LimitSettings,
    /// Who may read the metrics when authentication is on: system admins and the configured
    /// readers (Basic credentials, or a token with `registry:admin:*` for admins), anyone
    /// when `metrics_public` says so; peer names and activity figures are not served to
    /// anyone who reaches the API. Neither the client's address nor the listener's is
    /// trusted: a TLS proxy on the same host makes every client look local.
    pub authority: Arc<stowage_auth::authority::Authority>,
    /// The configured readers.
    pub access: crate::config::security::MetricsAccess,
    /// The integrity scrub's figures.
    pub scrub: stowage_store::scrub::Scrubber,
}

type State = (
    Collector,
    Option<stowage_repl::Replicator>,
    Arc<LimitSources>,
);

/// The `/metrics` route, to merge into the API router.
pub fn router(
    gc: Collector,
    repl: Option<stowage_repl::Replicator>,
    limits: Arc<LimitSources>,
) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state((gc, repl, limits))
}

/// `Ok` when the request may read the metrics (see [`LimitSources::authority`]), else the
/// refusal (audited when credentials were refused or do not allow it).
async fn may_read(
    l: &LimitSources,
    headers: &axum::http::HeaderMap,
    conn: Option<stowage_auth::net::ConnInfo>,
) -> Result<(), axum::response::Response> {
    use stowage_auth::authority::{AuthFailure, Caller, Identity, Mode};
    use stowage_auth::challenge::{parse_authorization, Credentials};
    use stowage_core::{Actor, Principal};
    use stowage_index::{AuditAction, AuditOutcome};
    if l.authority.mode() == Mode::Open || l.access.public {
        return Ok(());
    }
    let addr = conn.map(|c| c.remote);
    let challenge = |status: axum::http::StatusCode, text: &'static str| {
        (
            status,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"stowage metrics\"")],
            text,
        )
            .into_response()
    };
    let refused = || {
        challenge(
            axum::http::StatusCode::UNAUTHORIZED,
            "metrics are for system admins and the configured readers\n",
        )
    };
    let checked = match headers.get(header::AUTHORIZATION).map(parse_authorization) {
        None => return Err(refused()),
        Some(Ok(Credentials::Basic { user, password })) => l
            .authority
            .check_password(&user, &password, addr.map(|a| a.ip()))
            .await
            .map_err(|f| (f, Some(user))),
        Some(Ok(Credentials::Bearer(t))) => l.authority.check_bearer(&t).map_err(|f| (f, None)),
        Some(Err(e)) => Err((AuthFailure::Malformed(e.to_string()), None)),
    };
    let audit = |actor: Actor, why: String| async move {
        l.store
            .auditor()
            .record(
                l.store
                    .audit_entry(&actor, AuditAction::Login)
                    .target("/metrics".to_string())
                    .outcome(AuditOutcome::Denied)
                    .detail(why),
            )
            .await;
    };
    let caller = match checked {
        Ok(c) => c,
        Err((AuthFailure::Throttled(secs), _)) => {
            let mut r = challenge(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address\n",
            );
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(r);
        }
        Err((AuthFailure::Busy, _)) => {
            return Err(challenge(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too many logins at once\n",
            ))
        }
        Err((f, user)) => {
            let mut actor = Actor::anonymous(addr);
            if let Some(u) = user {
                actor = Actor::new(Principal::User(clip(&u)), addr);
            }
            audit(actor, f.to_string()).await;
            return Err(refused());
        }
    };
    let id = Identity { caller, addr };
    let admin = l.authority.is_system_admin(&id).unwrap_or(false);
    let reader = match &id.caller {
        Caller::User { name, .. } => l.access.readers.iter().any(|r| r == name),
        _ => false,
    };
    if admin || reader {
        return Ok(());
    }
    audit(id.actor(), "may not read the metrics".to_string()).await;
    Err(refused())
}

/// A name from a request, cut to a length safe to audit.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

async fn serve_metrics(
    axum::extract::State((gc, repl, limits)): axum::extract::State<State>,
    headers: axum::http::HeaderMap,
    conn: Option<axum::Extension<stowage_auth::net::ConnInfo>>,
) -> axum::response::Response {
    if let Err(refusal) = may_read(&limits, &headers, conn.map(|axum::Extension(c)| c)).await {
        return refusal;
    }
    let mut body = render(&gc.metrics(), gc.running().is_some());
    if let Some(r) = repl {
        body.push_str(&crate::repl_metrics::render_replication(
            &r.status(),
            r.corrupt_found(),
        ));
    }
    body.push_str(&render_limits(&limits));
    body.push_str(&crate::scrub_rpc::render_metrics(&limits.scrub));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Connection, upload, pin, rate and audit figures with their limits. Never a secret, a
/// token or an account name: only counts.
pub fn render_limits(l: &LimitSources) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP stowage_{name} {help}");
        let _ = writeln!(out, "# TYPE stowage_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "stowage_{name}{labels} {v}");
        }
    };
    let per = |f: &dyn Fn(&ConnStats) -> u64| -> Vec<(String, u64)> {
        l.listeners
            .iter()
            .map(|(n, s)| (format!("{{listener=\"{n}\"}}"), f(s)))
            .collect()
    };
    family(
        "connections_open",
        "gauge",
        "Open connections.",
        &per(&|s| s.open()),
    );
    family(
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        &per(&|s| s.accepted()),
    );
    family(
        "connections_refused_total",
        "counter",
        "Connections refused because the listener was at max_connections.",
        &per(&|s| s.refused_over_limit()),
    );
    family(
        "tls_handshakes_failed_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        &per(&|s| s.handshake_failed()),
    );
    family(
        "connections_header_timeouts_total",
        "counter",
        "Connections closed because a request head did not arrive within header_read_timeout.",
        &per(&|s| s.timed_out_header()),
    );
    family(
        "connections_idle_timeouts_total",
        "counter",
        "Keep-alive connections closed after idle_timeout without a request.",
        &per(&|s| s.timed_out_idle()),
    );
    let one = |v: u64| vec![(String::new(), v)];
    let lim = &l.limits;
    family(
        "connections_limit",
        "gauge",
        "Most connections per listener (max_connections).",
        &one(lim.net.max_connections as u64),
    );
    let (sessions, staged) = l.store.upload_usage();
    family(
        "upload_sessions",
        "gauge",
        "Open upload sessions.",
        &one(sessions as u64),
    );
    family(
        "upload_sessions_limit",
        "gauge",
        "Most open upload sessions (max_uploads).",
        &one(lim.store.max_sessions as u64),
    );
    family(
        "upload_sessions_per_actor_limit",
        "gauge",
        "Most open upload sessions of one actor (max_uploads_per_actor).",
        &one(lim.store.max_sessions_per_actor as u64),
    );
    family(
        "staged_bytes",
        "gauge",
        "Bytes held by unfinished uploads.",
        &one(staged),
    );
    family(
        "staged_bytes_limit",
        "gauge",
        "Most bytes held by unfinished uploads (max_staged_bytes).",
        &one(lim.store.max_staged_bytes),
    );
    family(
        "staged_bytes_per_actor_limit",
        "gauge",
        "Most bytes held by one actor's unfinished uploads (max_staged_bytes_per_actor).",
        &one(lim.store.max_staged_bytes_per_actor),
    );
    let guard = l.authority.guard();
    family(
        "logins_throttled_total",
        "counter",
        "Logins refused unchecked after too many failed ones (per account and address).",
        &one(guard.throttled.load(Ordering::Relaxed)),
    );
    family(
        "logins_busy_total",
        "counter",
        "Logins refused because every password check slot stayed busy.",
        &one(guard.busy.load(Ordering::Relaxed)),
    );
    family(
        "replication_pins",
        "gauge",
        "Blobs kept from garbage collection for replication transfers.",
        &one(l.store.replica().pinned_count() as u64),
    );
    let (seen, seen_dropped) = l.store.client().seen_stats();
    family(
        "gc_seen_digests",
        "gauge",
        "Digests clients have just found or stored, kept from garbage collection for the seen window.",
        &one(seen as u64),
    );
    family(
        "gc_seen_dropped_total",
        "counter",
        "Digests not held as seen because the table was full (max_seen).",
        &one(seen_dropped),
    );
    family(
        "replication_pins_limit",
        "gauge",
        "Most blobs replication may pin (max_pins).",
        &one(lim.store.max_pins as u64),
    );
    family(
        "request_header_bytes_limit",
        "gauge",
        "Largest request head accepted (max_header_bytes).",
        &one(lim.net.max_header_bytes as u64),
    );
    family(
        "request_headers_limit",
        "gauge",
        "Most request headers accepted (max_headers).",
        &one(lim.net.max_headers as u64),
    );
    family(
        "header_read_timeout_seconds",
        "gauge",
        "How long a request head may take to arrive.",
        &one(lim.net.header_read_timeout.as_secs()),
    );
    family(
        "idle_timeout_seconds",
        "gauge",
        "How long a keep-alive connection may stay without a request.",
        &one(lim.net.idle_timeout.as_secs()),
    );
    family(
        "body_timeout_seconds",
        "gauge",
        "How long a request body may send nothing.",
        &one(lim.body_timeout.as_secs()),
    );
    family(
        "rate_limit_per_second",
        "gauge",
        "Requests per second allowed per actor (0: off).",
        &one(lim.rate.map(|(r, _)| u64::from(r)).unwrap_or(0)),
    );
    family(
        "requests_rate_limited_total",
        "counter",
        "Requests refused with 429 for going over the per-actor rate.",
        &one(l.api.rate_refused()),
    );
    let a = l.store.auditor();
    let st = a.stats();
    family(
        "audit_entries_written_total",
        "counter",
        "Audit entries without a change written by the audit writer.",
        &one(st.written.load(Ordering::Relaxed)),
    );
    family(
        "audit_entries_dropped_total",
        "counter",
        "Audit entries without a change dropped because the queue stayed full.",
        &one(st.dropped.load(Ordering::Relaxed)),
    );
    family(
        "audit_write_failures_total",
        "counter",
        "Audit writer commits that failed.",
        &one(st.failed.load(Ordering::Relaxed)),
    );
    out
}

/// Each [`Counts`] field as a counter: name (without `stowage_gc_` and `_total`), help, value.
/// The destructuring is exhaustive, so a new field does not compile until it is exported.
fn count_series(c: &Counts) -> [(&'static str, &'static str, u64); 14] {
    let Counts {
        manifests_marked,
        blobs_marked,
        bytes_marked,
        manifests_swept,
        manifest_bytes_swept,
        blobs_swept,
        bytes_swept,
        blobs_quarantined,
        bytes_quarantined,
        blobs_purged,
        bytes_purged,
        uploads_expired,
        upload_bytes_expired,
        kept_on_recheck,
    } = *c;
    [
        (
            "manifests_marked",
            "Manifests reachable from a root, summed over runs.",
            manifests_marked,
        ),
        (
            "blobs_marked",
            "Repository blob links reachable from a root, summed over runs.",
            blobs_marked,
        ),
        (
            "bytes_marked",
            "Bytes of the marked blob links, summed over runs.",
            bytes_marked,
        ),
        (
            "manifests_swept",
            "Manifests removed from a repository.",
            manifests_swept,
        ),
        (
            "manifest_bytes_swept",
            "Bytes of the manifest documents removed.",
            manifest_bytes_swept,
        ),
        (
            "blobs_swept",
            "Blob links removed from a repository.",
            blobs_swept,
        ),
        (
            "bytes_swept",
            "Bytes of the blob links removed.",
            bytes_swept,
        ),
        (
            "blobs_quarantined",
            "Blobs taken out of service (no repository holds them).",
            blobs_quarantined,
        ),
        (
            "bytes_quarantined",
            "Bytes of the blobs quarantined.",
            bytes_quarantined,
        ),
        (
            "blobs_purged",
            "Quarantined blobs removed for good.",
            blobs_purged,
        ),
        (
            "bytes_purged",
            "Bytes of quarantined blobs removed for good.",
            bytes_purged,
        ),
        (
            "uploads_expired",
            "Upload sessions removed after their expiry.",
            uploads_expired,
        ),
        (
            "upload_bytes_expired",
            "Staged bytes of the expired upload sessions.",
            upload_bytes_expired,
        ),
        (
            "kept_on_recheck",
            "Candidates kept because the re-check under the lock found them in use.",
            kept_on_recheck,
        ),
    ]
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds, from milliseconds, as Prometheus prints them.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The exposition text. Counters cover the runs of this process (the collector sums real runs'
/// totals; dry runs change nothing and count only in `stowage_gc_runs_total`); the `last_run`
/// gauges describe the last finished run and are absent before the first.
pub fn render(m: &Metrics, running: bool) -> String {
    let mut out = String::with_capacity(4096);
    header(
        &mut out,
        "stowage_gc_runs_total",
        "counter",
        "Garbage collection runs finished since the daemon started, by outcome (dry runs included).",
    );
    let _ = writeln!(
        out,
        "stowage_gc_runs_total{{status=\"completed\"}} {}",
        m.runs_completed
    );
    let _ = writeln!(
        out,
        "stowage_gc_runs_total{{status=\"failed\"}} {}",
        m.runs_failed
    );
    header(
        &mut out,
        "stowage_gc_running",
        "gauge",
        "1 while a garbage collection run is in progress.",
    );
    let _ = writeln!(out, "stowage_gc_running {}", u8::from(running));
    for (field, help, value) in count_series(&m.totals) {
        let name = format!("stowage_gc_{field}_total");
        header(
            &mut out,
            &name,
            "counter",
            &format!("{help} (Real runs only.)"),
        );
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(last) = &m.last {
        header(
            &mut out,
            "stowage_gc_last_run_timestamp_seconds",
            "gauge",
            "When the last garbage collection run finished (unix time).",
        );
        let _ = writeln!(
            out,
            "stowage_gc_last_run_timestamp_seconds {}",
            seconds(last.finished_ms)
        );
        header(
            &mut out,
            "stowage_gc_last_run_duration_seconds",
            "gauge",
            "Wall-clock duration of the last garbage collection run.",
        );
        let _ = writeln!(
            out,
            "stowage_gc_last_run_duration_seconds {}",
            seconds(last.finished_ms.saturating_sub(last.started_ms))
        );
        header(
            &mut out,
            "stowage_gc_last_run_phase_seconds",
            "gauge",
            "Duration of each phase of the last garbage collection run.",
        );
        for p in &last.phases {
            let _ = writeln!(
                out,
                "stowage_gc_last_run_phase_seconds{{phase=\"{}\"}} {}",
                p.phase.as_str(),
                seconds(p.ms)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use stowage_gc::{Phase, PhaseTime, Report, RunStatus};

    use super::*;

    /// Sample lines (not comments) as `series -> value`.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn before_any_run() {
        let text = render(&Metrics::default(), false);
        let s = samples(&text);
        assert_eq!(s["stowage_gc_runs_total{status=\"completed\"}"], "0");
        assert_eq!(s["stowage_gc_runs_total{status=\"failed\"}"], "0");
        assert_eq!(s["stowage_gc_running"], "0");
        assert_eq!(s["stowage_gc_bytes_purged_total"], "0");
        assert!(!text.contains("last_run"), "{text}");
    }

    #[test]
    fn after_runs() {
        let totals = Counts {
            blobs_quarantined: 3,
            bytes_quarantined: 4096,
            bytes_purged: 1024,
            manifests_swept: 1,
            uploads_expired: 2,
            kept_on_recheck: 5,
            ..Counts::default()
        };
        let last = Report {
            run_id: 4,
            dry_run: false,
            status: RunStatus::Completed,
            error: None,
            trigger: "schedule".into(),
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_002_500,
            grace_ms: 0,
            quarantine_ms: 0,
            upload_expiry_ms: 0,
            delete_untagged: true,
            snapshot_seq: 9,
            phases: vec![
                PhaseTime {
                    phase: Phase::Mark,
                    ms: 1500,
                    batches: 0,
                },
                PhaseTime {
                    phase: Phase::SweepBlobs,
                    ms: 250,
                    batches: 2,
                },
            ],
            totals: totals.clone(),
            repos: BTreeMap::new(),
        };
        let m = Metrics {
            runs_completed: 3,
            runs_failed: 1,
            totals,
            last: Some(last),
        };
        let text = render(&m, true);
        let s = samples(&text);
        assert_eq!(s["stowage_gc_runs_total{status=\"completed\"}"], "3");
        assert_eq!(s["stowage_gc_runs_total{status=\"failed\"}"], "1");
        assert_eq!(s["stowage_gc_running"], "1");
        assert_eq!(s["stowage_gc_blobs_quarantined_total"], "3");
        assert_eq!(s["stowage_gc_bytes_quarantined_total"], "4096");
        assert_eq!(s["stowage_gc_bytes_purged_total"], "1024");
        assert_eq!(s["stowage_gc_manifests_swept_total"], "1");
        assert_eq!(s["stowage_gc_uploads_expired_total"], "2");
        assert_eq!(s["stowage_gc_kept_on_recheck_total"], "5");
        assert_eq!(s["stowage_gc_blobs_marked_total"], "0");
        assert_eq!(s["stowage_gc_last_run_duration_seconds"], "2.5");
        assert_eq!(s["stowage_gc_last_run_timestamp_seconds"], "1700000002.5");
        assert_eq!(
            s["stowage_gc_last_run_phase_seconds{phase=\"mark\"}"],
            "1.5"
        );
        assert_eq!(
            s["stowage_gc_last_run_phase_seconds{phase=\"sweep_blobs\"}"],
            "0.25"
        );
        // Every Counts field is a counter, and every metric has HELP and TYPE once.
        assert_eq!(
            s.keys()
                .filter(|k| k.ends_with("_total") && !k.contains('{'))
                .count(),
            14
        );
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        names.dedup();
        for name in names {
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(text.ends_with('\n'));
    }
}
