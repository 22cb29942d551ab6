//! Hardware limits a registry push cannot beat: single-core SHA-256 and
//! fsynced sequential writes.

use crate::prng::WyRand;
use crate::stats::median;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const MIB: f64 = 1024.0 * 1024.0;

/// Throughput measurement over several runs.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    /// What was measured.
    pub what: String,
    /// MiB processed per run.
    pub mib: u64,
    /// Per-run throughput, MiB/s.
    pub runs_mib_s: Vec<f64>,
    /// Median throughput, MiB/s.
    pub median_mib_s: f64,
    /// Median throughput, MB/s (10^6 bytes).
    pub median_mb_s: f64,
}

fn report(what: &str, mib: u64, runs: Vec<f64>) -> SpeedReport {
    let m = median(&runs).unwrap_or(0.0);
    SpeedReport {
        what: what.to_string(),
        mib,
        runs_mib_s: runs,
        median_mib_s: m,
        median_mb_s: m * MIB / 1e6,
    }
}

/// Single-thread SHA-256 over `mib` MiB (1 MiB random buffer hashed
/// repeatedly), median of 5 runs.
pub fn sha_speed(mib: u64) -> SpeedReport {
    let mut buf = vec![0u8; 1 << 20];
    WyRand::for_blob(1, 1).fill(&mut buf);
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut h = Sha256::new();
        for _ in 0..mib {
            h.update(&buf);
        }
        let d = h.finalize();
        std::hint::black_box(d);
        runs.push(mib as f64 / t.elapsed().as_secs_f64());
    }
    report("sha256 single thread", mib, runs)
}

/// Sequential write of `mib` MiB in 8 MiB writes followed by fsync, median
/// of 3 runs. The test file is removed after each run.
pub fn fsync_speed(dir: &Path, mib: u64) -> Result<SpeedReport> {
    const W: usize = 8 << 20;
    let mut buf = vec![0u8; W];
    WyRand::for_blob(2, 2).fill(&mut buf);
    let path = dir.join(format!(".regbench-fsync-{}", std::process::id()));
    let total = mib * MIB as u64;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let res = (|| -> Result<f64> {
            let t = Instant::now();
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut written = 0u64;
            while written < total {
                let n = usize::try_from((total - written).min(W as u64)).unwrap_or(W);
                f.write_all(&buf[..n])
                    .with_context(|| format!("writing {}", path.display()))?;
                written += n as u64;
            }
            f.sync_all()
                .with_context(|| format!("fsync {}", path.display()))?;
            Ok(mib as f64 / t.elapsed().as_secs_f64())
        })();
        let _ = std::fs::remove_file(&path);
        runs.push(res?);
    }
    Ok(report("sequential write + fsync", mib, runs))
}
