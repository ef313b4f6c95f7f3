//! ArtifactService: exports, blob downloads and uploads, MissingBlobs and garbage
//! collection, streaming the store's chunks as response messages. Builds only its own
//! `*Response` messages (chunks are bytes); never speaks SQL (it asks `Db`) and never
//! touches the store's files (it asks `Artifacts`).

use crate::Services;
use crate::artifacts::{Chunks, Collected, Upload, check_sha256};
use crate::db::{Exceeded, UploadCharge};
use crate::domain::{Caller, Role};
use crate::error::Error;
use futures::StreamExt;
use heirloom_proto::v1 as pb;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::Streaming;
use tonic::{Request, Response, Status};

pub struct ArtifactApi(pub Services);

/// Blobs younger than this are never collected: they may belong to a job still running.
const DEFAULT_GARBAGE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long MissingBlobs keeps the blobs it was asked about from garbage collection.
const HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportModelResponse, Status>> + Send>>;
type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadBlobResponse, Status>> + Send>>;

/// Turns the store's chunks into response messages; a store error ends the stream.
fn responses<T: Send + 'static>(
    chunks: Chunks,
    message: impl Fn(u64, bytes::Bytes) -> T + Send + 'static,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    Box::pin(chunks.map(move |chunk| match chunk {
        Ok((offset, data)) => Ok(message(offset, data)),
        Err(err) => Err(Status::from(err)),
    }))
}

#[tonic::async_trait]
impl pb::artifact_service_server::ArtifactService for ArtifactApi {
    type ExportModelStream = ExportStream;

    async fn export_model(
        &self,
        request: Request<pb::ExportModelRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let request = request.into_inner();
        let model = self.0.db.find_model(&request.model).await?;
        let manifest = self.0.db.manifest(model.id).await?;
        let (total, chunks) = self.0.artifacts.export(&manifest, request.offset)?;
        if total != model.weights_bytes {
            return Err(Error::DataLoss(format!(
                "model {}: its manifest gives a {total}-byte file, not {} bytes",
                model.name, model.weights_bytes
            ))
            .into());
        }
        let sha256 = model.weights_sha256;
        let metrics = self.0.metrics.clone();
        Ok(Response::new(responses(chunks, move |offset, data| {
            metrics.artifact_bytes("export", data.len() as u64);
            pb::ExportModelResponse {
                offset,
                data,
                total_bytes: total,
                sha256: sha256.clone(),
            }
        })))
    }

    type DownloadBlobStream = DownloadStream;

    async fn download_blob(
        &self,
        request: Request<pb::DownloadBlobRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        check_sha256("sha256", &request.sha256)?;
        if caller.role == Role::Worker
            && !self
                .0
                .db
                .lease_needs_blob(caller.token_id, &request.sha256)
                .await?
        {
            return Err(Error::PermissionDenied(format!(
                "sha256: blob {} is not needed by any job leased to this token's workers; \
                 a worker downloads only what its leases need",
                request.sha256
            ))
            .into());
        }
        let (total, chunks) = self
            .0
            .artifacts
            .download(&request.sha256, request.offset)
            .await?;
        let metrics = self.0.metrics.clone();
        Ok(Response::new(responses(chunks, move |offset, data| {
            metrics.artifact_bytes("download", data.len() as u64);
            pb::DownloadBlobResponse {
                offset,
                data,
                total_bytes: total,
            }
        })))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let request = request.into_inner();
        let min_age = request
            .min_age_seconds
            .map_or(DEFAULT_GARBAGE_AGE, std::time::Duration::from_secs);
        // The collection lock keeps MissingBlobs from reporting a blob present while it
        // is being deleted; every blob held or referenced before it was taken is kept.
        let (lock, referenced) = self.0.db.begin_garbage_collection().await?;
        let collected = self
            .0
            .artifacts
            .collect_garbage(&referenced, min_age, request.dry_run)
            .await?;
        lock.release().await?;
        let Collected {
            deleted_blobs,
            deleted_bytes,
            kept_blobs,
            deleted_staging_files,
            deleted_staging_bytes,
        } = collected;
        tracing::info!(
            deleted_blobs,
            deleted_bytes,
            kept_blobs,
            deleted_staging_files,
            deleted_staging_bytes,
            dry_run = request.dry_run,
            "garbage collected"
        );
        Ok(Response::new(pb::CollectGarbageResponse {
            deleted_blobs,
            deleted_bytes,
            kept_blobs,
            deleted_staging_files,
            deleted_staging_bytes,
        }))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let wanted = request.into_inner().sha256;
        for (i, sha256) in wanted.iter().enumerate() {
            check_sha256(&format!("sha256[{i}]"), sha256)?;
        }
        // Held first, looked up after: a collection either saw the hold, or finished
        // before the lookup (which then reports what it deleted as missing).
        self.0
            .db
            .hold_blobs(caller.token_id, &wanted, HOLD, self.0.quotas.max_held_blobs)
            .await?
            .map_err(refusal)?;
        let stored = self.0.artifacts.lens(&wanted).await?;
        let missing = wanted
            .into_iter()
            .zip(stored)
            .filter_map(|(sha256, stored)| stored.is_none().then_some(sha256))
            .collect();
        Ok(Response::new(pb::MissingBlobsResponse {
            sha256: missing,
            max_blob_bytes: Some(self.0.artifacts.max_blob_bytes()),
        }))
    }

    async fn upload_blobs(
        &self,
        request: Request<Streaming<pb::UploadBlobsRequest>>,
    ) -> Result<Response<pb::UploadBlobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut stream = request.into_inner();
        let mut stored = Vec::new();
        let mut open: Option<(Upload, UploadCharge)> = None;
        let result = async {
            while let Some(chunk) = stream.message().await.map_err(|status| {
                Error::InvalidArgument(format!("the upload stream broke: {}", status.message()))
            })? {
                if let Some((upload, _)) = &open
                    && upload.sha256() != chunk.sha256
                {
                    return Err(Error::InvalidArgument(format!(
                        "blob {} ended without a chunk marked last",
                        upload.sha256()
                    ))
                    .into());
                }
                let (upload, _) = match &mut open {
                    Some(open) => open,
                    None => open.insert(self.begin(&caller, &chunk).await?),
                };
                if chunk.offset != upload.written() {
                    return Err(Error::InvalidArgument(format!(
                        "blob {}: chunk at offset {}, expected {}",
                        chunk.sha256,
                        chunk.offset,
                        upload.written()
                    ))
                    .into());
                }
                if let Some(declared) = chunk.total_bytes
                    && declared != upload.total_bytes()
                {
                    return Err(Error::InvalidArgument(format!(
                        "blob {}: a chunk declares total_bytes {declared}, the first declared {}",
                        chunk.sha256,
                        upload.total_bytes()
                    ))
                    .into());
                }
                self.0
                    .metrics
                    .artifact_bytes("upload", chunk.data.len() as u64);
                upload.write(chunk.data).await?;
                if chunk.last {
                    let (upload, charge) = open.take().expect("a blob is open");
                    let (sha256, received) = (upload.sha256().to_string(), upload.written());
                    let finished = upload.finish().await;
                    self.settle(charge, received).await;
                    finished?;
                    stored.push(sha256);
                }
            }
            if let Some((upload, _)) = &open {
                return Err(Error::InvalidArgument(format!(
                    "the stream ended inside blob {}",
                    upload.sha256()
                ))
                .into());
            }
            Ok::<(), Status>(())
        }
        .await;
        // Whatever failed on the way, a blob left open is never stored, and what never
        // arrived of it is not charged.
        if let Some((upload, charge)) = open {
            let received = upload.written();
            upload.abort().await;
            self.settle(charge, received).await;
        }
        result?;
        Ok(Response::new(pb::UploadBlobsResponse { stored }))
    }
}

impl ArtifactApi {
    /// Opens the blob a first chunk starts: its declared size is checked against the
    /// largest blob taken and charged to the caller's upload quota before any byte of it
    /// is stored.
    async fn begin(
        &self,
        caller: &Caller,
        first: &pb::UploadBlobsRequest,
    ) -> Result<(Upload, UploadCharge), Status> {
        check_sha256("sha256", &first.sha256)?;
        if first.offset != 0 {
            return Err(Error::InvalidArgument(format!(
                "blob {}: its first chunk starts at offset {}; a blob is sent from offset 0",
                first.sha256, first.offset
            ))
            .into());
        }
        let Some(total_bytes) = first.total_bytes else {
            return Err(Error::InvalidArgument(format!(
                "blob {}: its first chunk declares no total_bytes; send the blob's size in \
                 bytes with its first chunk (at most {})",
                first.sha256,
                self.0.artifacts.max_blob_bytes()
            ))
            .into());
        };
        let upload = self.0.artifacts.begin_upload(&first.sha256, total_bytes)?;
        let charge = self
            .0
            .db
            .charge_upload(
                caller.token_id,
                &first.sha256,
                total_bytes,
                self.0.quotas.upload_bytes_per_hour,
            )
            .await?
            .map_err(refusal)?;
        Ok((upload, charge))
    }

    /// Ends an upload's charge at what arrived. A failure to record it is logged, not
    /// the caller's: the charge stays as declared and ages out within the hour.
    async fn settle(&self, charge: UploadCharge, received: u64) {
        if let Err(err) = self.0.db.settle_upload(charge, received).await {
            tracing::warn!(error = %err, "could not refund an unfinished upload's charge");
        }
    }
}

/// A quota's refusal: RESOURCE_EXHAUSTED, saying which quota, the usage and when it frees.
fn refusal(exceeded: Exceeded) -> Error {
    Error::ResourceExhausted(exceeded.to_string())
}
