//! `regbench`: side-by-side registry benchmark driver.
//!
//! Subcommands:
//! * `push-pull`   — push N pseudo-random blobs with C clients, optionally pull them back.
//! * `sha-speed`   — single-thread SHA-256 throughput.
//! * `fsync-speed` — fsynced sequential write throughput of a directory's filesystem.
//! * `sample`      — peak RSS and CPU of a process until it exits or a stop file appears.
//! * `login`       — one client's authentication handshake (as `docker login`), timed.
//!
//! `push-pull` and `login` authenticate as docker does (`--auth`, `--user`, password in
//! `REGBENCH_PASSWORD`): see `stowage_benches::regauth`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use stowage_benches::limits::{fsync_speed, sha_speed, SpeedReport};
use stowage_benches::procstat::Sampler;
use stowage_benches::pushpull::{self, PhaseReport, PushPullConfig};
use stowage_benches::regauth::{AuthConfig, AuthMode, Session};

#[derive(Debug, Parser)]
#[command(name = "regbench", about = "OCI registry push/pull benchmark driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Push N distinct blobs (monolithic upload), optionally pull them back.
    PushPull {
        /// Registry base URL, e.g. http://127.0.0.1:5000
        #[arg(long)]
        url: String,
        /// Repository name.
        #[arg(long)]
        repo: String,
        /// Size of each blob in bytes.
        #[arg(long)]
        blob_size: u64,
        /// Number of blobs.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Concurrent clients sharing the blob queue.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Pull every blob back (and verify it) after pushing.
        #[arg(long)]
        pull: bool,
        /// Seed for blob contents (blob i is a function of seed and i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// PID of the registry daemon: report its CPU per phase and peak RSS.
        #[arg(long)]
        server_pid: Option<u32>,
        /// RSS sampling interval in milliseconds (with --server-pid).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Send the PUT body chunked, without Content-Length.
        #[arg(long)]
        no_content_length: bool,
        #[command(flatten)]
        auth: AuthArgs,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One client's authentication handshake, as `docker login` does it: `GET /v2/`, then
    /// for a Bearer challenge a token from the realm (for --scope, or none), then `GET /v2/`
    /// with the credentials, which must answer 200. Prints the times as JSON.
    Login {
        /// Registry base URL.
        #[arg(long)]
        url: String,
        /// Scope of the token to ask for (empty: none, as `docker login`).
        #[arg(long, default_value = "")]
        scope: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Single-thread SHA-256 throughput (median of 5 runs).
    ShaSpeed {
        /// MiB hashed per run.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sequential write in 8 MiB writes then fsync (median of 3 runs).
    FsyncSpeed {
        /// Directory on the filesystem to test.
        #[arg(long)]
        dir: PathBuf,
        /// MiB written per run.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sample a process's RSS and CPU until it exits or --stop-file appears.
    Sample {
        /// Process to sample.
        #[arg(long)]
        pid: u32,
        /// Where to write the JSON report.
        #[arg(long)]
        out: PathBuf,
        /// Sampling interval in milliseconds.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Stop when this file exists.
        #[arg(long)]
        stop_file: Option<PathBuf>,
    },
}

/// Credentials and how to use them.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// Authentication: none (do not ask `/v2/`), auto (what its challenge asks for), basic or
    /// token (the same, but insist on that scheme).
    #[arg(long, default_value = "none")]
    auth: AuthMode,
    /// Account name.
    #[arg(long)]
    user: Option<String>,
    /// Password (better in the environment than on the command line).
    #[arg(long, env = "REGBENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl AuthArgs {
    fn config(self) -> AuthConfig {
        AuthConfig {
            mode: self.auth,
            user: self.user,
            password: self.password,
        }
    }
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}{unit}"))
}

fn print_phase(name: &str, p: &PhaseReport) {
    println!(
        "{name:5} {:>10.1} MiB in {:>8.2} s = {:>8.1} MiB/s  p50 {} p99 {} max {}  errors {}/{}  server cpu {} ({} /GiB)  client cpu {}",
        p.bytes as f64 / (1024.0 * 1024.0),
        p.wall_s,
        p.mib_s,
        fmt_opt(p.lat_p50_ms, "ms"),
        fmt_opt(p.lat_p99_ms, "ms"),
        fmt_opt(p.lat_max_ms, "ms"),
        p.errors,
        p.requests,
        fmt_opt(p.server_cpu_s, "s"),
        fmt_opt(p.server_cpu_s_per_gib, "s"),
        fmt_opt(p.client_cpu_s, "s"),
    );
    println!("      {:.1} blobs/s", p.ops_per_s);
    if let Some(a) = &p.auth {
        println!(
            "      auth {}: {} pings, {} tokens ({} refreshes), {} retries after 401, handshakes {:.3} s (max {:.1} ms)",
            a.scheme,
            a.pings,
            a.token_fetches,
            a.token_refreshes,
            a.reauth_retries,
            a.handshake_s,
            a.handshake_max_ms
        );
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("serialising report")?
    );
    Ok(())
}

fn print_speed(r: &SpeedReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let runs: Vec<String> = r.runs_mib_s.iter().map(|x| format!("{x:.0}")).collect();
    println!(
        "{}: median {:.1} MiB/s ({:.1} MB/s) over {} MiB; runs [{}] MiB/s",
        r.what,
        r.median_mib_s,
        r.median_mb_s,
        r.mib,
        runs.join(", ")
    );
    Ok(())
}

async fn real_main() -> Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::PushPull {
            url,
            repo,
            blob_size,
            count,
            clients,
            pull,
            seed,
            server_pid,
            interval_ms,
            no_content_length,
            auth,
            json,
        } => {
            if blob_size == 0 || count == 0 || clients == 0 {
                bail!("--blob-size, --count and --clients must be positive");
            }
            let cfg = PushPullConfig {
                url,
                repo,
                blob_size,
                count,
                clients,
                pull,
                seed,
                content_length: !no_content_length,
                server_pid,
                sample_interval: Duration::from_millis(interval_ms.max(1)),
                auth: auth.config(),
            };
            let r = pushpull::run(cfg).await?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} repo {}: {} x {} B, {} clients, seed {} (digests precomputed in {:.2} s)",
                    r.url, r.repo, r.count, r.blob_size, r.clients, r.seed, r.digest_s
                );
                print_phase("push", &r.push);
                if let Some(p) = &r.pull {
                    print_phase("pull", p);
                }
                if let Some(s) = &r.server {
                    println!(
                        "server pid {}: peak RSS {:.1} MiB (sampled {:.1}, hwm {}), cpu {:.2} s",
                        s.pid,
                        s.peak_rss_mib,
                        s.peak_rss_sampled_mib,
                        fmt_opt(s.peak_rss_hwm_mib, ""),
                        s.cpu_s
                    );
                }
            }
            Ok(if r.errors() > 0 { 2 } else { 0 })
        }
        Cmd::Login { url, scope, auth } => {
            let cfg = auth.config();
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .context("building HTTP client")?;
            let t = std::time::Instant::now();
            let mut sess = Session::new(&cfg, &url, scope);
            sess.ready(&client).await?;
            let handshake_ms = t.elapsed().as_secs_f64() * 1e3;
            let v2 = format!("{}/v2/", url.trim_end_matches('/'));
            let t2 = std::time::Instant::now();
            let resp = sess.send(&client, || client.get(&v2)).await?;
            let status = resp.status();
            let _ = resp.bytes().await;
            let check_ms = t2.elapsed().as_secs_f64() * 1e3;
            if !status.is_success() {
                bail!("GET {v2} with the credentials answered {status}");
            }
            print_json(&serde_json::json!({
                "scheme": sess.stats.scheme,
                "handshake_ms": handshake_ms,
                "check_ms": check_ms,
                "total_ms": handshake_ms + check_ms,
                "token_fetches": sess.stats.token_fetches,
            }))?;
            Ok(0)
        }
        Cmd::ShaSpeed { mib, json } => {
            let r = tokio::task::spawn_blocking(move || sha_speed(mib.max(1)))
                .await
                .context("sha-speed thread panicked")?;
            print_speed(&r, json)?;
            Ok(0)
        }
        Cmd::FsyncSpeed { dir, mib, json } => {
            let r = tokio::task::spawn_blocking(move || fsync_speed(&dir, mib.max(1)))
                .await
                .context("fsync-speed thread panicked")??;
            print_speed(&r, json)?;
            Ok(0)
        }
        Cmd::Sample {
            pid,
            out,
            interval_ms,
            stop_file,
        } => {
            let s = Sampler::start(pid, Duration::from_millis(interval_ms.max(1)), stop_file);
            let r = tokio::task::spawn_blocking(move || s.wait())
                .await
                .context("sampler thread panicked")??;
            let text = serde_json::to_string_pretty(&r).context("serialising sample")?;
            std::fs::write(&out, text + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(0)
        }
    }
}

#[tokio::main]
async fn main() {
    match real_main().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("regbench: {e:#}");
            std::process::exit(1);
        }
    }
}
