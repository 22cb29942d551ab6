//! The admin gRPC service (`proto/stowage/v1/admin.proto`) and the standard gRPC health
//! service, served on `--admin-listen`; and the `stowage info` client.

use stowage_rpc::v1::admin_client::AdminClient;
use stowage_rpc::v1::admin_server::{Admin, AdminServer};
use stowage_rpc::v1::{GetInfoRequest, GetInfoResponse};
use stowage_store::Store;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config::Settings;

#[derive(Debug)]
struct AdminService {
    store: Store,
    data_dir: String,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_info(
        &self,
        _req: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let idx = self.store.index();
        let internal = |e: stowage_index::IndexError| Status::internal(e.to_string());
        Ok(Response::new(GetInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.data_dir.clone(),
            feed_sequence: idx.last_seq().map_err(internal)?,
            blob_count: idx.estimate_blobs().map_err(internal)?,
            manifest_count: idx.estimate_manifests().map_err(internal)?,
        }))
    }
}

/// Starts the admin server on `listener`; it stops when `stop` turns true.
pub fn spawn(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, String> {
    let svc = AdminService {
        store,
        data_dir: settings.data_dir.display().to_string(),
    };
    Ok(stowage_store::task::spawn_named("admin-grpc", async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<AdminServer<AdminService>>().await;
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(AdminServer::new(svc))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stop.wait_for(|v| *v).await;
                },
            )
            .await
    }))
}

/// `stowage info`.
pub fn info_command(server: &str, json: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    let endpoint = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let info = rt.block_on(async {
        let mut client = AdminClient::connect(endpoint.clone())
            .await
            .map_err(|e| format!("connecting to {endpoint}: {e}"))?;
        client
            .get_info(GetInfoRequest {})
            .await
            .map(Response::into_inner)
            .map_err(|e| format!("GetInfo from {endpoint}: {}", e.message()))
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "version": info.version,
                "data_dir": info.data_dir,
                "feed_sequence": info.feed_sequence,
                "blob_count": info.blob_count,
                "manifest_count": info.manifest_count,
            })
        );
    } else {
        println!("{:<20}{}", "version", info.version);
        println!("{:<20}{}", "data dir", info.data_dir);
        println!("{:<20}{}", "feed sequence", info.feed_sequence);
        println!("{:<20}{}", "blobs (approx)", info.blob_count);
        println!("{:<20}{}", "manifests (approx)", info.manifest_count);
    }
    Ok(())
}
