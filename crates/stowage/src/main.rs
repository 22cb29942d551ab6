//! `stowage`: the daemon (`stowage serve`) and the operator's command line.

mod access_cli;
mod access_rpc;
mod access_text;
mod admin;
mod admin_auth;
mod audit_tasks;
mod cli_table;
mod client;
mod config;
mod feed_trim;
mod fsck_cli;
mod fsck_rpc;
mod gc_cli;
mod gc_rpc;
mod metrics;
mod repl_cli;
mod repl_metrics;
mod scrub_cli;
mod scrub_rpc;
mod serve;
mod upload_expiry;

use clap::{Parser, Subcommand};

// Request bodies arrive as many short-lived buffers of a few hundred KiB; glibc's allocator
// serves each from a fresh mmap, paying page faults and zeroing on every one (7% of push CPU
// in a profile). mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stowage: a storage backend for container registries. Content-addressed blobs on a local
/// file system or object storage, a RocksDB reference index, and the OCI Distribution API.
#[derive(Parser, Debug)]
#[command(name = "stowage", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: the OCI Distribution API on --listen and the admin gRPC service on
    /// --admin-listen. Stops gracefully on SIGTERM or Ctrl-C.
    Serve(config::ServeArgs),
    /// Ask a running daemon for its identity and index figures (admin gRPC).
    Info {
        #[command(flatten)]
        conn: client::ClientArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Garbage collection on a running daemon (admin gRPC): start and follow runs, list past
    /// runs, restore quarantined blobs.
    Gc(gc_cli::GcArgs),
    /// Check the index against the blob store on a running daemon (admin gRPC), read-only
    /// unless --repair. Exit status 2 when defects were found.
    Fsck(fsck_cli::FsckArgs),
    /// Replication on a running daemon (gRPC): per-peer status and on-demand anti-entropy.
    Repl(repl_cli::ReplArgs),
    /// Integrity scrub on a running daemon (admin gRPC): run one now and wait for its report,
    /// or show the run in progress and the last report.
    Scrub(scrub_cli::ScrubArgs),
    /// Users: add, change passwords, grant roles in projects, remove.
    User(access_cli::UserArgs),
    /// Robot accounts: machine credentials bound to one project.
    Robot(access_cli::RobotArgs),
    /// Project settings: public (anyone may pull) or private.
    Project(access_cli::ProjectArgs),
    /// The audit log: query it (by time, actor, repository, action), export it as JSON lines,
    /// and verify its hash chain.
    Audit(access_cli::AuditArgs),
    /// Get a bearer token from a registry's token service (for --token, or curl).
    Token(access_cli::TokenArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Info { conn, json } => admin::info_command(&conn, json),
        Command::Gc(args) => gc_cli::command(args),
        Command::Fsck(args) => return fsck_cli::command(args),
        Command::Repl(args) => repl_cli::command(args),
        Command::Scrub(args) => scrub_cli::command(args),
        Command::User(args) => access_cli::user(args),
        Command::Robot(args) => access_cli::robot(args),
        Command::Project(args) => access_cli::project(args),
        Command::Audit(args) => access_cli::audit(args),
        Command::Token(args) => access_cli::token(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stowage: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
