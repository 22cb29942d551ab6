//! The `Fsck` gRPC service (`proto/stowage/v1/fsck.proto`): runs the store's consistency check
//! for an admin caller and converts its report to protobuf. Served on the admin listener
//! behind the admin gate, like every admin service.

use stowage_rpc::v1 as pb;
use stowage_rpc::v1::fsck_server::{Fsck, FsckServer};
use stowage_store::{FsckOptions, FsckReport, Store};
use tonic::{Request, Response, Status};

/// The service.
#[derive(Debug, Clone)]
pub struct FsckService {
    store: Store,
}

impl FsckService {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The tonic server, to wrap in the admin gate.
    pub fn into_server(self) -> FsckServer<Self> {
        FsckServer::new(self)
    }
}

/// The protobuf form of a report.
pub fn report_to_proto(r: &FsckReport) -> Result<pb::RunFsckResponse, serde_json::Error> {
    let findings = r
        .findings
        .iter()
        .map(|f| {
            Ok(pb::FsckFinding {
                kind: f.defect.kind().to_string(),
                text: f.defect.to_string(),
                repairable: f.defect.repairable(),
                repaired: f.repaired.clone().unwrap_or_default(),
                json: serde_json::to_string(&f.defect)?,
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    Ok(pb::RunFsckResponse {
        blobs: r.blobs,
        manifests: r.manifests,
        stored_objects: r.stored_objects,
        bytes_verified: r.bytes_verified,
        feed_seq: r.feed_seq,
        in_flight: r.in_flight,
        findings,
    })
}

#[tonic::async_trait]
impl Fsck for FsckService {
    async fn run_fsck(
        &self,
        req: Request<pb::RunFsckRequest>,
    ) -> Result<Response<pb::RunFsckResponse>, Status> {
        let actor = crate::admin_auth::actor_of(&req);
        let req = req.into_inner();
        let mut opts = FsckOptions {
            verify_bytes: req.verify_bytes,
            repair: req.repair,
            ..FsckOptions::default()
        };
        if let Some(ms) = req.min_orphan_age_ms {
            opts.min_orphan_age = std::time::Duration::from_millis(ms);
        }
        tracing::info!(%actor, verify_bytes = opts.verify_bytes, repair = opts.repair, min_orphan_age = ?opts.min_orphan_age, "fsck started on request");
        let report = self.store.fsck(&actor, &opts).await.map_err(|e| {
            tracing::error!(error = %e, "fsck failed");
            Status::internal(format!("running the consistency check: {e}"))
        })?;
        let reply = report_to_proto(&report)
            .map_err(|e| Status::internal(format!("encoding the fsck report: {e}")))?;
        Ok(Response::new(reply))
    }
}
