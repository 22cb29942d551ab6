//! Conversions between the collector's types (`stowage_gc`) and their protobuf form
//! (`stowage.v1.Gc*`), both directions. The daemon converts on the way out, the CLI on the way
//! in; nothing else sees the protobuf types.
//!
//! Every conversion destructures or builds the whole struct, so a field added on either side
//! is a compile error here rather than a figure silently dropped on the wire.

use std::collections::BTreeMap;

use stowage_gc::{Counts, Phase, PhaseTime, Progress, Report, RunStatus};
use stowage_rpc::v1 as pb;

/// Why a protobuf message could not be turned into the collector's type (a daemon of another
/// version, most likely).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromProtoError {
    /// A phase name this build does not know.
    #[error("unknown garbage collection phase {0:?}")]
    UnknownPhase(String),
    /// A run status this build does not know.
    #[error("unknown garbage collection run status {0}")]
    UnknownStatus(i32),
    /// A required sub-message was absent.
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// Parses a phase from its [`Phase::as_str`] name.
pub fn phase_from_str(s: &str) -> Result<Phase, FromProtoError> {
    ALL_PHASES
        .iter()
        .copied()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| FromProtoError::UnknownPhase(s.to_string()))
}

/// Every phase, in order. `phase_list_is_complete` below keeps it in step with the enum.
const ALL_PHASES: [Phase; 7] = [
    Phase::Queued,
    Phase::Mark,
    Phase::SweepManifests,
    Phase::SweepBlobs,
    Phase::Purge,
    Phase::Uploads,
    Phase::Done,
];

fn status_to_proto(s: RunStatus) -> pb::GcRunStatus {
    match s {
        RunStatus::Running => pb::GcRunStatus::Running,
        RunStatus::Completed => pb::GcRunStatus::Completed,
        RunStatus::Failed => pb::GcRunStatus::Failed,
        RunStatus::Interrupted => pb::GcRunStatus::Interrupted,
    }
}

fn status_from_proto(v: i32) -> Result<RunStatus, FromProtoError> {
    match pb::GcRunStatus::try_from(v) {
        Ok(pb::GcRunStatus::Running) => Ok(RunStatus::Running),
        Ok(pb::GcRunStatus::Completed) => Ok(RunStatus::Completed),
        Ok(pb::GcRunStatus::Failed) => Ok(RunStatus::Failed),
        Ok(pb::GcRunStatus::Interrupted) => Ok(RunStatus::Interrupted),
        Ok(pb::GcRunStatus::Unspecified) | Err(_) => Err(FromProtoError::UnknownStatus(v)),
    }
}

/// A [`Counts`] on the wire.
pub fn counts_to_proto(c: &Counts) -> pb::GcCounts {
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
    pb::GcCounts {
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
    }
}

/// A [`Counts`] from the wire.
pub fn counts_from_proto(c: pb::GcCounts) -> Counts {
    let pb::GcCounts {
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
    } = c;
    Counts {
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
    }
}

/// A [`Report`] on the wire.
pub fn report_to_proto(r: &Report) -> pb::GcReport {
    let Report {
        run_id,
        dry_run,
        status,
        error,
        trigger,
        started_ms,
        finished_ms,
        grace_ms,
        quarantine_ms,
        upload_expiry_ms,
        delete_untagged,
        snapshot_seq,
        phases,
        totals,
        repos,
    } = r;
    pb::GcReport {
        run_id: *run_id,
        dry_run: *dry_run,
        status: status_to_proto(*status).into(),
        error: error.clone(),
        trigger: trigger.clone(),
        started_ms: *started_ms,
        finished_ms: *finished_ms,
        grace_ms: *grace_ms,
        quarantine_ms: *quarantine_ms,
        upload_expiry_ms: *upload_expiry_ms,
        delete_untagged: *delete_untagged,
        snapshot_seq: *snapshot_seq,
        phases: phases
            .iter()
            .map(|PhaseTime { phase, ms, batches }| pb::GcPhaseTime {
                phase: phase.as_str().to_string(),
                ms: *ms,
                batches: *batches,
            })
            .collect(),
        totals: Some(counts_to_proto(totals)),
        repos: repos
            .iter()
            .map(|(k, v)| (k.clone(), counts_to_proto(v)))
            .collect(),
    }
}

/// A [`Report`] from the wire.
pub fn report_from_proto(r: pb::GcReport) -> Result<Report, FromProtoError> {
    let pb::GcReport {
        run_id,
        dry_run,
        status,
        error,
        trigger,
        started_ms,
        finished_ms,
        grace_ms,
        quarantine_ms,
        upload_expiry_ms,
        delete_untagged,
        snapshot_seq,
        phases,
        totals,
        repos,
    } = r;
    Ok(Report {
        run_id,
        dry_run,
        status: status_from_proto(status)?,
        error,
        trigger,
        started_ms,
        finished_ms,
        grace_ms,
        quarantine_ms,
        upload_expiry_ms,
        delete_untagged,
        snapshot_seq,
        phases: phases
            .into_iter()
            .map(|p| {
                Ok(PhaseTime {
                    phase: phase_from_str(&p.phase)?,
                    ms: p.ms,
                    batches: p.batches,
                })
            })
            .collect::<Result<_, FromProtoError>>()?,
        totals: totals.map(counts_from_proto).unwrap_or_default(),
        repos: repos
            .into_iter()
            .map(|(k, v)| (k, counts_from_proto(v)))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// A [`Progress`] update on the wire.
pub fn progress_to_proto(p: &Progress) -> pb::GcProgress {
    let Progress {
        run_id,
        dry_run,
        phase,
        done,
        total,
        report,
    } = p;
    pb::GcProgress {
        run_id: *run_id,
        dry_run: *dry_run,
        phase: phase.as_str().to_string(),
        done: *done,
        total: *total,
        report: Some(report_to_proto(report)),
    }
}

/// A [`Progress`] update from the wire.
pub fn progress_from_proto(p: pb::GcProgress) -> Result<Progress, FromProtoError> {
    let pb::GcProgress {
        run_id,
        dry_run,
        phase,
        done,
        total,
        report,
    } = p;
    Ok(Progress {
        run_id,
        dry_run,
        phase: phase_from_str(&phase)?,
        done,
        total,
        report: report_from_proto(
            report.ok_or(FromProtoError::Missing("the progress update's report"))?,
        )?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn counts(seed: u64) -> Counts {
        // Distinct values in every field, so a swapped pair shows up.
        Counts {
            manifests_marked: seed + 1,
            blobs_marked: seed + 2,
            bytes_marked: seed + 3,
            manifests_swept: seed + 4,
            manifest_bytes_swept: seed + 5,
            blobs_swept: seed + 6,
            bytes_swept: seed + 7,
            blobs_quarantined: seed + 8,
            bytes_quarantined: seed + 9,
            blobs_purged: seed + 10,
            bytes_purged: seed + 11,
            uploads_expired: seed + 12,
            upload_bytes_expired: seed + 13,
            kept_on_recheck: seed + 14,
        }
    }

    fn report(status: RunStatus, error: Option<&str>) -> Report {
        Report {
            run_id: 42,
            dry_run: true,
            status,
            error: error.map(str::to_string),
            trigger: "cli".into(),
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_001_234,
            grace_ms: 3_600_000,
            quarantine_ms: 86_400_000,
            upload_expiry_ms: 7_200_000,
            delete_untagged: true,
            snapshot_seq: 977,
            phases: ALL_PHASES
                .iter()
                .enumerate()
                .map(|(i, &phase)| PhaseTime {
                    phase,
                    ms: i as u64 * 10,
                    batches: i as u64,
                })
                .collect(),
            totals: counts(100),
            repos: [
                ("app/one".to_string(), counts(200)),
                ("lib/base".to_string(), counts(300)),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn report_round_trips_through_proto_unchanged() {
        for (status, error) in [
            (RunStatus::Running, None),
            (RunStatus::Completed, None),
            (RunStatus::Failed, Some("index: disk full")),
            (RunStatus::Interrupted, Some("")),
        ] {
            let r = report(status, error);
            let wire = report_to_proto(&r);
            let back = report_from_proto(wire).unwrap();
            assert_eq!(back, r);
        }
        let empty = Report {
            phases: Vec::new(),
            repos: BTreeMap::new(),
            totals: Counts::default(),
            ..report(RunStatus::Completed, None)
        };
        assert_eq!(report_from_proto(report_to_proto(&empty)).unwrap(), empty);
    }

    #[test]
    fn progress_round_trips_through_proto_unchanged() {
        for phase in ALL_PHASES {
            let p = Progress {
                run_id: 7,
                dry_run: false,
                phase,
                done: 5,
                total: 9,
                report: report(RunStatus::Running, None),
            };
            assert_eq!(progress_from_proto(progress_to_proto(&p)).unwrap(), p);
        }
    }

    #[test]
    fn phase_list_is_complete() {
        // Exhaustive match: a new phase fails to compile here until ALL_PHASES lists it.
        for p in ALL_PHASES {
            match p {
                Phase::Queued
                | Phase::Mark
                | Phase::SweepManifests
                | Phase::SweepBlobs
                | Phase::Purge
                | Phase::Uploads
                | Phase::Done => {}
            }
            assert_eq!(phase_from_str(p.as_str()).unwrap(), p);
            // The wire name is also the stored (serde) name.
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::String(p.as_str().to_string())
            );
        }
    }

    #[test]
    fn unknown_values_are_errors_not_defaults() {
        let mut wire = report_to_proto(&report(RunStatus::Completed, None));
        wire.status = 99;
        assert_eq!(
            report_from_proto(wire.clone()).unwrap_err(),
            FromProtoError::UnknownStatus(99)
        );
        wire.status = pb::GcRunStatus::Unspecified.into();
        assert!(report_from_proto(wire.clone()).is_err());
        wire.status = pb::GcRunStatus::Completed.into();
        wire.phases[0].phase = "compact".into();
        assert_eq!(
            report_from_proto(wire).unwrap_err(),
            FromProtoError::UnknownPhase("compact".into())
        );
        let p = pb::GcProgress {
            phase: "mark".into(),
            report: None,
            ..Default::default()
        };
        assert!(matches!(
            progress_from_proto(p).unwrap_err(),
            FromProtoError::Missing(_)
        ));
    }
}
