//! One run of the walk: page through the blob records from the cursor, check each served
//! blob's bytes, hand mismatches to the store's corrupt-blob path and the repairer, and write
//! the cursor after every page.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use stowage_cas::CasError;
use stowage_core::{Actor, Digest, Hasher};
use stowage_index::{
    AuditAction, AuditOutcome, Batch, BlobRecord, BlobState, HoldKind, Quarantine, QuarantineReason,
};
use tokio::sync::watch;

use super::report::{self, CorruptBlob, Cursor, Fate, ScrubReport, ScrubState};
use super::{Scrubber, SCRUB_ACTOR};
use crate::{CorruptCheck, Result};

/// A running check of bytes against what the record says.
enum Sum {
    Crc { running: u32, expected: u32 },
    Digest(Box<Hasher>),
}

impl Scrubber {
    /// Walks from `cursor` to the end (or until `stop`), then stores the report.
    pub(super) async fn walk(
        &self,
        mut cursor: Cursor,
        actor: &Actor,
        mut stop: watch::Receiver<bool>,
    ) -> Result<ScrubReport> {
        let run = cursor.report.run_id;
        tracing::info!(run, trigger = ?cursor.report.trigger, "scrub run started");
        let outcome = self.pages(&mut cursor, &mut stop).await;
        let stopped = matches!(outcome, Ok(false));
        let mut rep = cursor.report.clone();
        match outcome {
            Ok(true) => rep.state = ScrubState::Completed,
            Ok(false) => {}
            Err(e) => {
                rep.state = ScrubState::Failed;
                rep.error = e.to_string();
            }
        }
        if stopped {
            // The cursor was written after the last full page: the next start resumes there.
            self.set_current(None);
            tracing::info!(
                run,
                blobs = rep.blobs,
                "scrub run interrupted; it resumes at the next start"
            );
            return Ok(rep);
        }
        rep.finished_ms = self.inner.store.now_ms();
        // The report is stored before the run stops showing as current: a follower never sees
        // neither.
        let stored = self.finish(&rep, actor).await;
        self.set_current(None);
        stored?;
        self.inner.counters.runs.fetch_add(1, Ordering::Relaxed);
        self.inner.finished.send_replace(run);
        tracing::info!(
            run,
            state = ?rep.state,
            blobs = rep.blobs,
            bytes = rep.bytes,
            corrupt = rep.corrupt,
            repaired = rep.repaired,
            unrepaired = rep.unrepaired,
            "scrub run ended"
        );
        Ok(rep)
    }

    fn set_current(&self, r: Option<ScrubReport>) {
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// Pages to the end: `true` when the walk completed, `false` when `stop` cut it short.
    async fn pages(&self, cursor: &mut Cursor, stop: &mut watch::Receiver<bool>) -> Result<bool> {
        let page = self.inner.cfg.page.max(1);
        loop {
            if *stop.borrow() {
                return Ok(false);
            }
            let store = self.inner.store.clone();
            let after = cursor.after.clone();
            let records = tokio::task::spawn_blocking(move || {
                store.index().blobs_after(after.as_ref(), page)
            })
            .await
            .map_err(|source| crate::StoreError::Task {
                task: "scrub page",
                source,
            })??;
            let Some((last, _)) = records.last() else {
                return Ok(true);
            };
            let last = last.clone();
            for (digest, rec) in records {
                if *stop.borrow() {
                    return Ok(false);
                }
                self.visit(&mut cursor.report, &digest, &rec).await?;
            }
            cursor.after = Some(last);
            self.set_current(Some(cursor.report.clone()));
            let mut batch = Batch::new();
            batch.put_meta(report::CURSOR_KEY, report::encode("cursor", &*cursor)?);
            self.inner.store.commit_quiet(batch).await?;
        }
    }

    /// Checks one blob (served ones) or offers it for repair again (quarantined as corrupt).
    async fn visit(&self, rep: &mut ScrubReport, digest: &Digest, rec: &BlobRecord) -> Result<()> {
        match (&rec.state, &rec.quarantine) {
            (BlobState::Present, _) => {
                let mismatch = self.check(digest, rec).await?;
                rep.blobs += 1;
                rep.bytes += rec.size;
                let c = &self.inner.counters;
                c.blobs.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(rec.size, Ordering::Relaxed);
                let Some(found) = mismatch else {
                    return Ok(());
                };
                let actor = Actor::system(SCRUB_ACTOR);
                let found = format!("integrity scrub: {found}");
                match self
                    .inner
                    .store
                    .quarantine_corrupt(&actor, digest, &found)
                    .await?
                {
                    CorruptCheck::Quarantined { detail } => {
                        c.corrupt.fetch_add(1, Ordering::Relaxed);
                        self.repair(rep, digest, rec.size, detail, false).await
                    }
                    CorruptCheck::AlreadyQuarantined { detail } => {
                        self.repair(rep, digest, rec.size, detail, true).await
                    }
                    // Replaced or collected meanwhile: nothing wrong is served.
                    CorruptCheck::Intact | CorruptCheck::NotServed => Ok(()),
                }
            }
            (
                BlobState::Deleted,
                Some(Quarantine {
                    reason: QuarantineReason::Corrupt { detail },
                    ..
                }),
            ) => {
                self.repair(rep, digest, rec.size, detail.clone(), true)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Asks the repairer for good bytes of a quarantined blob and records the outcome.
    async fn repair(
        &self,
        rep: &mut ScrubReport,
        digest: &Digest,
        size: u64,
        detail: String,
        earlier: bool,
    ) -> Result<()> {
        let fate = match &self.inner.repairer {
            None => Fate::Unrepaired {
                reason: "no replication peer is configured".into(),
            },
            Some(r) => {
                let repos: Vec<_> = self
                    .inner
                    .store
                    .index()
                    .holders(digest, HoldKind::Link)?
                    .into_iter()
                    .map(|(repo, _)| repo)
                    .collect();
                r.repair(digest, &repos).await
            }
        };
        let c = &self.inner.counters;
        match &fate {
            Fate::Repaired { peer } => {
                c.repaired.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%digest, %peer, "scrub: corrupt blob repaired from a peer");
            }
            Fate::Unrepaired { reason } => {
                c.unrepaired.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%digest, %reason, "scrub: corrupt blob stays quarantined");
            }
        }
        rep.add(CorruptBlob {
            digest: digest.clone(),
            size,
            detail,
            earlier,
            fate,
        });
        Ok(())
    }

    /// Reads the blob's bytes at the scrub's pace, holding no lock: what does not match, or
    /// `None`. A read that breaks off for another reason is an error.
    async fn check(&self, digest: &Digest, rec: &BlobRecord) -> Result<Option<String>> {
        let cas = self.inner.store.cas();
        let mut stream = match cas.read(digest, rec.size, None, rec.crc32c).await {
            Ok(s) => s,
            Err(CasError::NotFound(_)) => {
                return Ok(Some("its bytes are missing from the blob store".into()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut sum = match rec.crc32c {
            Some(expected) => Sum::Crc {
                running: 0,
                expected,
            },
            None => Sum::Digest(Box::new(Hasher::new(digest.algorithm()))),
        };
        let mut seen = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(b) => b,
                Err(CasError::Corrupt { detail, .. }) => return Ok(Some(detail)),
                Err(CasError::NotFound(_)) => {
                    return Ok(Some("its bytes are missing from the blob store".into()))
                }
                Err(e) => return Err(e.into()),
            };
            self.inner.pace.take(chunk.len() as u64).await;
            seen += chunk.len() as u64;
            match &mut sum {
                Sum::Crc { running, .. } => *running = crc32c::crc32c_append(*running, &chunk),
                Sum::Digest(h) => h.update(&chunk),
            }
        }
        if seen != rec.size {
            return Ok(Some(format!(
                "{seen} bytes are stored, its record says {}",
                rec.size
            )));
        }
        Ok(match sum {
            Sum::Crc { running, expected } => (running != expected)
                .then(|| format!("CRC-32C of its bytes is {running:08x}, recorded {expected:08x}")),
            Sum::Digest(h) => {
                let actual = h.finish();
                (&actual != digest).then(|| format!("its bytes hash to {actual}"))
            }
        })
    }

    /// Stores the finished run's report, drops the cursor and old reports, with an audit entry,
    /// in one batch.
    async fn finish(&self, rep: &ScrubReport, actor: &Actor) -> Result<()> {
        let store = &self.inner.store;
        let mut batch = Batch::new();
        batch.put_meta(&report::run_key(rep.run_id), report::encode("report", rep)?);
        batch.delete_meta(report::CURSOR_KEY);
        let runs = store.index().meta_scan(report::RUN_PREFIX)?;
        let excess = (runs.len() + 1).saturating_sub(report::RUNS_KEPT);
        for (k, _) in runs.iter().take(excess) {
            batch.delete_meta(k);
        }
        let outcome = match (rep.state, rep.unrepaired) {
            (ScrubState::Completed, 0) => AuditOutcome::Ok,
            _ => AuditOutcome::Failed,
        };
        batch.audit(
            store
                .audit_entry(actor, AuditAction::Admin)
                .target(format!("scrub run {}", rep.run_id))
                .outcome(outcome)
                .detail(format!(
                    "integrity scrub {:?}: {} blobs, {} bytes checked; {} corrupt, {} repaired, {} unrepaired{}",
                    rep.state,
                    rep.blobs,
                    rep.bytes,
                    rep.corrupt,
                    rep.repaired,
                    rep.unrepaired,
                    if rep.error.is_empty() { String::new() } else { format!("; {}", rep.error) }
                )),
        );
        store.commit_quiet(batch).await?;
        Ok(())
    }
}
