//! Reading CPU time and memory of another process from `/proc`.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Kernel clock ticks per second (`getconf CLK_TCK`, default 100).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// utime+stime of `pid` (all threads) in seconds.
pub fn cpu_seconds(pid: u32, tck: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .with_context(|| format!("malformed {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    if f.len() < 13 {
        bail!("malformed {path}: too few fields");
    }
    let utime: u64 = f[11].parse().with_context(|| format!("utime in {path}"))?;
    let stime: u64 = f[12].parse().with_context(|| format!("stime in {path}"))?;
    Ok((utime + stime) as f64 / tck)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix(key) {
            let num = v
                .trim_start_matches(':')
                .split_whitespace()
                .next()
                .with_context(|| format!("{key} in {path}"))?;
            return num.parse().with_context(|| format!("{key} in {path}"));
        }
    }
    bail!("{key} not found in {path}")
}

/// Current resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident set size (high-water mark) of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Reset the kernel's RSS high-water mark of `pid` (writes 5 to clear_refs).
/// Returns whether it worked.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Is `pid` still alive (and not a zombie)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Result of sampling a process.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    /// Sampled process.
    pub pid: u32,
    /// Highest VmRSS seen by polling, MiB.
    pub peak_rss_sampled_mib: f64,
    /// VmHWM at the end (only meaningful when `hwm_reset` is true), MiB.
    pub peak_rss_hwm_mib: Option<f64>,
    /// Whether the kernel high-water mark was reset at the start.
    pub hwm_reset: bool,
    /// max(sampled, hwm if reset), MiB.
    pub peak_rss_mib: f64,
    /// utime+stime consumed during sampling, seconds.
    pub cpu_s: f64,
    /// Wall time sampled, seconds.
    pub wall_s: f64,
    /// Number of samples taken.
    pub samples: u64,
}

/// Background RSS/CPU sampler of a process.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<SampleReport>,
}

impl Sampler {
    /// Start sampling `pid` every `interval`. Also stops by itself when the
    /// process exits or `stop_file` appears.
    pub fn start(pid: u32, interval: Duration, stop_file: Option<PathBuf>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let tck = clk_tck();
            let hwm_reset = reset_hwm(pid);
            let t0 = Instant::now();
            let cpu0 = cpu_seconds(pid, tck).unwrap_or(0.0);
            let mut cpu_last = cpu0;
            let mut peak = 0u64;
            let mut hwm_last = None;
            let mut samples = 0u64;
            loop {
                if let Ok(r) = rss_kib(pid) {
                    peak = peak.max(r);
                    samples += 1;
                }
                if let Ok(c) = cpu_seconds(pid, tck) {
                    cpu_last = c;
                }
                if let Ok(h) = hwm_kib(pid) {
                    hwm_last = Some(h);
                }
                let stop_now = stop2.load(Ordering::Relaxed)
                    || !alive(pid)
                    || stop_file.as_ref().is_some_and(|p| p.exists());
                if stop_now {
                    break;
                }
                std::thread::sleep(interval);
            }
            let sampled = peak as f64 / 1024.0;
            let hwm = if hwm_reset {
                hwm_last.map(|h| h as f64 / 1024.0)
            } else {
                None
            };
            SampleReport {
                pid,
                peak_rss_sampled_mib: sampled,
                peak_rss_hwm_mib: hwm,
                hwm_reset,
                peak_rss_mib: hwm.map_or(sampled, |h| h.max(sampled)),
                cpu_s: cpu_last - cpu0,
                wall_s: t0.elapsed().as_secs_f64(),
                samples,
            }
        });
        Self { stop, handle }
    }

    /// Stop sampling and return the report.
    pub fn finish(self) -> Result<SampleReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("sampler thread panicked"))
    }

    /// Wait until the sampler stops by itself (process exit or stop file).
    pub fn wait(self) -> Result<SampleReport> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("sampler thread panicked"))
    }
}
