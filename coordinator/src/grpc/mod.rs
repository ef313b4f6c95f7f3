//! The gRPC surface: one file per service, each a thin layer that converts the request
//! (`convert.rs`), calls the domain and the database, and converts the answer back; and
//! the server itself (transport, TLS, reflection, health, layers). Only `convert.rs`
//! builds or reads a message beyond a service's own requests and responses (its `//!`
//! header states the rule, `tests/tidy.rs` checks it); nothing here speaks SQL.

mod artifacts;
mod convert;
mod datasets;
mod jobs;
mod lineage;
mod models;
mod observe;
mod recipes;
mod tokens;
mod workers;

use crate::Services;
use crate::auth::AuthLayer;
use crate::config::Config;
use crate::connections::{GuardedListener, TrackCallsLayer};
use crate::error::StartupError;
use heirloom_client::connection::CALL_DEADLINE;
use heirloom_proto::v1 as pb;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::ServerTlsConfig;
use tonic::transport::{Certificate, Identity};

/// Weights and datasets sent inline travel in one message of at most this size; larger
/// ones are uploaded in chunks first (ArtifactService.UploadBlobs).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// HTTP/2 flow-control windows for bulk transfers; clients use the same.
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// The largest HTTP/2 frame this server accepts; clients use the same.
pub const MAX_FRAME_BYTES: u32 = 4 << 20;

/// How the server meets its clients: TLS (mutual for workers, optionally), or plain
/// text when asked for explicitly.
pub struct Transport {
    tls: Option<ServerTlsConfig>,
    require_worker_certificates: bool,
}

impl Transport {
    pub fn from_config(config: &Config) -> Result<Transport, StartupError> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|err| StartupError::Setting(format!("{flag} {}: {err}", path.display())))
        };
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            if !config.insecure_plaintext {
                return Err(StartupError::Setting(
                    "TLS is required: pass --tls-cert and --tls-key (`heirloom certs DIR` makes \
                     a local CA and certificates), or --insecure-plaintext to serve without it"
                        .into(),
                ));
            }
            tracing::warn!(
                "serving WITHOUT TLS (--insecure-plaintext): tokens and weights cross the \
                 network in the clear"
            );
            return Ok(Transport {
                tls: None,
                require_worker_certificates: false,
            });
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
        if let Some(ca) = &config.worker_client_ca {
            // Other clients (people, with tokens) need no certificate; worker tokens do.
            tls = tls
                .client_ca_root(Certificate::from_pem(read("--worker-client-ca", ca)?))
                .client_auth_optional(true);
        }
        Ok(Transport {
            tls: Some(tls),
            require_worker_certificates: config.worker_client_ca.is_some(),
        })
    }
}

/// Reflection that describes every service this server answers: Heirloom's, health and
/// both versions of reflection itself.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

pub async fn serve(
    services: Services,
    transport: Transport,
    listener: GuardedListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_database_health(
        services.db.clone(),
        health_reporter,
        shutdown.child_token(),
    ));
    // Both reflection versions: grpcurl asks v1 first, Python's grpcio-reflection only v1alpha.
    let reflection = reflection_builder()
        .build_v1()
        .expect("the compiled descriptor sets are valid");
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .expect("the compiled descriptor sets are valid");
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = transport.tls {
        server = server.tls_config(tls)?;
    }
    server
        .timeout(CALL_DEADLINE)
        // HTTP/2's default 64 KiB windows cap a loopback stream far below the disk's speed.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        // Frames as large as a chunk: a 2 MiB message crosses in one frame, not 128.
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Pings find dead peers; the connection deadlines (`connections`) live idle ones.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(TrackCallsLayer)
        .layer(observe::ObserveLayer(services.metrics.clone()))
        .layer(AuthLayer {
            db: services.db.clone(),
            cache: services.tokens.clone(),
            require_worker_certificates: transport.require_worker_certificates,
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::model_service_server::ModelServiceServer::new(models::ModelApi(services.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::dataset_service_server::DatasetServiceServer::new(datasets::DatasetApi(
                services.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(pb::job_service_server::JobServiceServer::new(jobs::JobApi(
            services.clone(),
        )))
        .add_service(pb::artifact_service_server::ArtifactServiceServer::new(
            artifacts::ArtifactApi(services.clone()),
        ))
        .add_service(pb::worker_service_server::WorkerServiceServer::new(
            workers::WorkerApi(services.clone()),
        ))
        .add_service(pb::recipe_service_server::RecipeServiceServer::new(
            recipes::RecipeApi(services.clone()),
        ))
        .add_service(pb::token_service_server::TokenServiceServer::new(
            tokens::TokenApi(services),
        ))
        .serve_with_incoming_shutdown(listener.into_incoming(), shutdown.cancelled_owned())
        .await
}

/// Every service, and the server as a whole (""), as health checks name them.
const HEALTH_NAMES: [&str; 7] = [
    "",
    "heirloom.v1.ModelService",
    "heirloom.v1.DatasetService",
    "heirloom.v1.JobService",
    "heirloom.v1.WorkerService",
    "heirloom.v1.ArtifactService",
    "heirloom.v1.TokenService",
];

/// Health follows the database: NOT_SERVING while PostgreSQL cannot be reached (every
/// call needs it), SERVING again once it answers — the pool reconnects by itself.
async fn report_database_health(
    db: crate::db::Db,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = None;
    loop {
        let reachable = tokio::time::timeout(Duration::from_secs(2), db.ping())
            .await
            .is_ok_and(|result| result.is_ok());
        if serving != Some(reachable) {
            let status = if reachable {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            if serving.is_some() {
                tracing::warn!(database_reachable = reachable, "health changed");
            }
            for name in HEALTH_NAMES {
                reporter.set_service_status(name, status).await;
            }
            serving = Some(reachable);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
