//! One run: mark on a snapshot, then sweep manifests, blobs, expired quarantine and stale
//! uploads, each removal re-checked by the store under the digest's exclusive lock.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use stowage_core::Actor;
use stowage_store::GcStore as Store;

use crate::batches::Batches;
use crate::mark::{self, MarkParams, Plan};
use crate::report::{Counts, Phase, PhaseTime, Report, RunStatus};
use crate::GcError;

/// Nice increment of the mark thread.
const MARK_NICE: i32 = 10;

/// Batches in flight at once during the sweep.
const SWEEP_CONCURRENCY: usize = 2;

/// Settings resolved for one run.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub dry_run: bool,
    pub grace: Duration,
    pub quarantine: Duration,
    pub upload_expiry: Duration,
    pub delete_untagged: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Puts the calling thread in the idle scheduling class (Linux `SCHED_IDLE`: it runs only when
/// nothing else wants the CPU, and any other thread preempts it at once), or failing that lowers
/// its nice value.
fn lower_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = idle {
        tracing::debug!(error = ?e, "SCHED_IDLE refused; lowering the nice value instead");
        if let Err(e) = rustix::process::nice(MARK_NICE) {
            tracing::debug!(error = %e, "lowering the mark thread's priority");
        }
    }
}

/// Runs one sweep batch; if clients wrote to the index meanwhile, rests as long as the batch
/// took. Under client load each of the `SWEEP_CONCURRENCY` lanes is busy at most half the time,
/// so the sweep holds about one batch's share of the synced writes and lock stripes and pushes
/// keep the rest; on an idle registry it runs at full speed.
async fn paced<T>(store: &Store, work: impl std::future::Future<Output = T>) -> T {
    let before = store.client_commits();
    let started = Instant::now();
    let out = work.await;
    if store.client_commits() != before {
        tokio::time::sleep(started.elapsed()).await;
    }
    out
}

/// The count of client commits, which [`Batches`] sizes the sweep's store calls by.
fn activity(store: &Store) -> impl FnMut() -> u64 + Send + 'static {
    let store = store.clone();
    move || store.client_commits()
}

/// Reports progress to the collector.
pub(crate) trait Sink: Send + Sync {
    fn update(&self, phase: Phase, done: u64, total: u64, report: &Report);
}

/// Runs all phases, updating `report` as it goes. Returns the error that stopped the run, if
/// any; the report then holds what was done before it.
pub(crate) async fn execute(
    store: &Store,
    opts: &Resolved,
    report: &mut Report,
    sink: &dyn Sink,
) -> Result<(), GcError> {
    let now = store.now_ms();
    let params = MarkParams {
        cutoff_ms: now.saturating_sub(ms(opts.grace)),
        purge_before_ms: now.saturating_sub(ms(opts.quarantine)),
        purge_at_once: opts.quarantine.is_zero(),
        delete_untagged: opts.delete_untagged,
        held: {
            let store = store.clone();
            crate::mark::HeldInMemory(std::sync::Arc::new(move |d: &stowage_core::Digest| {
                store.held_in_memory(d, now)
            }))
        },
    };
    let upload_cutoff = now.saturating_sub(ms(opts.upload_expiry));

    // Mark.
    let started = Instant::now();
    sink.update(Phase::Mark, 0, 0, report);
    let mut plan = {
        let store = store.clone();
        let params = params.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        // Marking is CPU work that can wait: it runs on its own thread at a lower scheduling
        // priority, so on a busy machine pushes get the CPU first (Linux nice values are per
        // thread; the thread ends with the mark, so no pooled thread keeps the low priority).
        std::thread::Builder::new()
            .name("gc-mark".into())
            .spawn(move || {
                lower_priority();
                let snap = store.index().snapshot();
                let plan = mark::plan(&snap, &params, |n| {
                    let _ = tx.send(n);
                });
                drop(snap);
                let _ = done_tx.send(plan);
            })
            .map_err(GcError::MarkThread)?;
        loop {
            tokio::select! {
                done = &mut done_rx => {
                    break done.map_err(|_| GcError::MarkLost)??;
                }
                Some(n) = rx.recv() => sink.update(Phase::Mark, n, 0, report),
            }
        }
    };
    let idle = store.idle_uploads(upload_cutoff)?;
    // Site-wide figures (quarantine, purge, uploads, re-check keeps); totals add the
    // repositories' figures to these.
    let mut site = apply_plan_figures(report, &plan, &idle);
    report.snapshot_seq = plan.snapshot_seq;
    if !opts.dry_run {
        // Sweep figures are counted as they happen; marked figures stay.
        site = clear_sweep_figures(report);
    }
    finish_phase(report, Phase::Mark, started, 0);
    if opts.dry_run {
        return Ok(());
    }

    // Manifests, level by level.
    let started = Instant::now();
    let total: u64 = plan
        .manifest_levels
        .iter()
        .map(|l| l.len() as u64)
        .sum::<u64>()
        + plan.orphan_documents.len() as u64;
    let mut done = 0u64;
    let mut batches = 0u64;
    sink.update(Phase::SweepManifests, 0, total, report);
    for level in std::mem::take(&mut plan.manifest_levels) {
        let chunks = Batches::new(
            level.into_iter().map(|m| (m.repo, m.digest, m.created_ms)),
            activity(store),
        );
        let mut results = stream::iter(chunks.map(|chunk| {
            let store = store.clone();
            async move {
                let result =
                    paced(&store, store.remove_manifests(&Actor::system("gc"), &chunk)).await;
                (chunk, result)
            }
        }))
        .buffer_unordered(SWEEP_CONCURRENCY);
        while let Some((chunk, result)) = results.next().await {
            batches += 1;
            for ((repo, _, _), outcome) in chunk.iter().zip(result?) {
                done += 1;
                match outcome {
                    Some((size, _document)) => {
                        let r = report.repos.entry(repo.to_string()).or_default();
                        r.manifests_swept += 1;
                        r.manifest_bytes_swept += size;
                    }
                    None => site.kept_on_recheck += 1,
                }
            }
            sum_repos(report, &site);
            sink.update(Phase::SweepManifests, done, total, report);
        }
    }
    for (digest, _) in &plan.orphan_documents {
        batches += 1;
        if store
            .remove_manifest_document(&Actor::system("gc"), digest)
            .await?
            .is_none()
        {
            site.kept_on_recheck += 1;
        }
    }
    sum_repos(report, &site);
    finish_phase(report, Phase::SweepManifests, started, batches);

    // Blobs: unlink candidates, quarantine what nothing holds.
    let started = Instant::now();
    let total = plan.blobs.len() as u64;
    let mut done = 0u64;
    let mut batches = 0u64;
    let mut just_quarantined = Vec::new();
    sink.update(Phase::SweepBlobs, 0, total, report);
    let mut purge = std::mem::take(&mut plan.purge);
    {
        let run_id = report.run_id;
        let cutoff = params.cutoff_ms;
        let blobs = std::mem::take(&mut plan.blobs);
        // Digests and repository names are made per candidate as the sweep reaches it, not
        // for all candidates up front.
        let lookup = std::sync::Arc::new(plan);
        let chunks = Batches::new(blobs.into_iter(), activity(store));
        let mut results = stream::iter(chunks.map(move |chunk| {
            let store = store.clone();
            let items: Result<Vec<_>, GcError> = chunk
                .iter()
                .map(|c| {
                    Ok((
                        lookup.digest(&c.key)?,
                        lookup.link_candidates(c),
                        c.quarantine.then_some(cutoff),
                    ))
                })
                .collect();
            async move {
                let items = items?;
                let swept = paced(
                    &store,
                    store.sweep_blobs(&Actor::system("gc"), &items, run_id),
                )
                .await?;
                Ok::<_, GcError>(
                    items
                        .into_iter()
                        .map(|(d, _, _)| d)
                        .zip(swept)
                        .collect::<Vec<_>>(),
                )
            }
        }))
        .buffer_unordered(SWEEP_CONCURRENCY);
        while let Some(result) = results.next().await {
            batches += 1;
            for (digest, swept) in result? {
                done += 1;
                for repo in &swept.unlinked {
                    let r = report.repos.entry(repo.to_string()).or_default();
                    r.blobs_swept += 1;
                    r.bytes_swept += swept.size;
                }
                site.kept_on_recheck += swept.kept;
                if let Some(at) = swept.quarantined_at {
                    site.blobs_quarantined += 1;
                    site.bytes_quarantined += swept.size;
                    just_quarantined.push((digest, at, swept.size));
                }
            }
            sum_repos(report, &site);
            sink.update(Phase::SweepBlobs, done, total, report);
        }
    }
    sum_repos(report, &site);
    finish_phase(report, Phase::SweepBlobs, started, batches);

    // Purge expired quarantine (and, with zero retention, what was just quarantined).
    let started = Instant::now();
    if params.purge_at_once {
        purge.extend(just_quarantined);
    }
    let total = purge.len() as u64;
    let mut done = 0u64;
    let mut batches = 0u64;
    sink.update(Phase::Purge, 0, total, report);
    {
        let chunks = Batches::new(purge.into_iter().map(|(d, at, _)| (d, at)), activity(store));
        let mut results = stream::iter(chunks.map(|chunk| {
            let store = store.clone();
            async move { paced(&store, store.purge_blobs(&Actor::system("gc"), &chunk)).await }
        }))
        .buffer_unordered(SWEEP_CONCURRENCY);
        while let Some(result) = results.next().await {
            batches += 1;
            for size in result?.into_iter() {
                done += 1;
                if let Some(size) = size {
                    site.blobs_purged += 1;
                    site.bytes_purged += size;
                }
            }
            sum_repos(report, &site);
            sink.update(Phase::Purge, done, total, report);
        }
    }
    sum_repos(report, &site);
    finish_phase(report, Phase::Purge, started, batches);

    // Stale uploads, and publish intents a crash or failed commit left behind.
    let started = Instant::now();
    sink.update(Phase::Uploads, 0, idle.len() as u64, report);
    for (id, _) in &idle {
        if let Some(bytes) = store
            .expire_upload(&Actor::system("gc"), id, upload_cutoff)
            .await?
        {
            site.uploads_expired += 1;
            site.upload_bytes_expired += bytes;
        }
    }
    // What interrupted uploads left in the blob store (staging without a session, incomplete
    // multipart uploads on S3), older than the expiry. A failure is logged, not fatal to the
    // run: the next run tries again, and start-up sweeps it too.
    if let Err(e) = store.sweep_upload_leftovers(upload_cutoff).await {
        tracing::warn!(error = %e, "sweeping what interrupted uploads left failed");
    }
    let repaired = store.repair_pending(upload_cutoff).await?;
    if repaired.cleared > 0 {
        tracing::info!(
            orphans_removed = repaired.orphans_removed,
            cleared = repaired.cleared,
            "repaired stale publish intents"
        );
    }
    sum_repos(report, &site);
    finish_phase(report, Phase::Uploads, started, 0);
    Ok(())
}

/// Fills marked figures and the planned sweep figures (what a dry run reports); returns the
/// planned site-wide figures.
fn apply_plan_figures(report: &mut Report, plan: &Plan, idle: &[(String, u64)]) -> Counts {
    report.repos = plan.repos.clone();
    let mut site = plan.site.clone();
    site.uploads_expired = idle.len() as u64;
    site.upload_bytes_expired = idle.iter().map(|(_, b)| *b).sum();
    sum_repos(report, &site);
    site
}

/// Zeroes the planned sweep figures before a real run counts what it actually removes.
fn clear_sweep_figures(report: &mut Report) -> Counts {
    for c in report.repos.values_mut() {
        c.manifests_swept = 0;
        c.manifest_bytes_swept = 0;
        c.blobs_swept = 0;
        c.bytes_swept = 0;
    }
    let site = Counts::default();
    sum_repos(report, &site);
    site
}

/// Recomputes totals: the sum over repositories plus the site-wide figures.
fn sum_repos(report: &mut Report, site: &Counts) {
    let mut totals = site.clone();
    for c in report.repos.values() {
        totals.add(c);
    }
    report.totals = totals;
}

fn finish_phase(report: &mut Report, phase: Phase, started: Instant, batches: u64) {
    report.phases.push(PhaseTime {
        phase,
        ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        batches,
    });
}

/// A fresh report for a run.
pub(crate) fn new_report(run_id: u64, opts: &Resolved, trigger: &str, now_ms: u64) -> Report {
    Report {
        run_id,
        dry_run: opts.dry_run,
        status: RunStatus::Running,
        error: None,
        trigger: trigger.to_string(),
        started_ms: now_ms,
        finished_ms: 0,
        grace_ms: ms(opts.grace),
        quarantine_ms: ms(opts.quarantine),
        upload_expiry_ms: ms(opts.upload_expiry),
        delete_untagged: opts.delete_untagged,
        snapshot_seq: 0,
        phases: Vec::new(),
        totals: Counts::default(),
        repos: Default::default(),
    }
}
