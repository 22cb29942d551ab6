//! gRPC types and service stubs generated from `proto/stowage/v1`. Nothing else lives here.
#![allow(missing_debug_implementations, clippy::unwrap_used)]

/// `stowage.v1` package.
pub mod v1 {
    tonic::include_proto!("stowage.v1");
}
