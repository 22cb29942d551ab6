//! bench support
//!
//! Helpers shared by the `regbench` binary: a deterministic incompressible
//! byte generator, `/proc` sampling of a daemon, throughput limits and the
//! OCI push/pull load generator with registry authentication (Basic and bearer tokens).

pub mod limits;
pub mod prng;
pub mod procstat;
pub mod pushpull;
pub mod regauth;
pub mod stats;
