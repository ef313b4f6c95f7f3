use crate::Services;
use crate::artifacts::BlobKind;
use crate::error::Error;
use heirloom_proto::v1 as pb;
use heirloom_spec::sha256_hex;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;
use tokio_stream::Stream;
use tonic::Streaming;
use tonic::{Request, Response, Status};

/// Well under the message limit, and large enough that per-message costs vanish.
pub const CHUNK_BYTES: usize = 1 << 20;

pub struct ArtifactApi(pub Services);

/// Blobs younger than this are never collected: they may belong to a job still running.
const DEFAULT_GARBAGE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportModelResponse, Status>> + Send>>;
type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadBlobResponse, Status>> + Send>>;

/// Splits `file` from `offset` into chunks of at most CHUNK_BYTES, without copying.
fn chunks_from(file: Vec<u8>, offset: u64) -> Result<Vec<(u64, bytes::Bytes)>, Error> {
    let file = bytes::Bytes::from(file);
    let total = file.len() as u64;
    if offset > total {
        return Err(Error::InvalidArgument(format!(
            "offset: {offset} is past the end of the {total}-byte file"
        )));
    }
    Ok((offset as usize..file.len())
        .step_by(CHUNK_BYTES)
        .map(|start| {
            let end = (start + CHUNK_BYTES).min(file.len());
            (start as u64, file.slice(start..end))
        })
        .collect())
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
        let file = self.0.artifacts.assemble(&manifest).await?;
        if sha256_hex(&file) != model.weights_sha256 {
            return Err(Error::DataLoss(format!(
                "model {}: its assembled weights no longer hash to {}",
                model.name, model.weights_sha256
            ))
            .into());
        }
        let total = file.len() as u64;
        let sha256 = model.weights_sha256;
        let chunks: Vec<Result<pb::ExportModelResponse, Status>> =
            chunks_from(file, request.offset)?
                .into_iter()
                .map(|(offset, data)| {
                    Ok(pb::ExportModelResponse {
                        offset,
                        data,
                        total_bytes: total,
                        sha256: sha256.clone(),
                    })
                })
                .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    type DownloadBlobStream = DownloadStream;

    async fn download_blob(
        &self,
        request: Request<pb::DownloadBlobRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let request = request.into_inner();
        let kind = match pb::BlobKind::try_from(request.kind) {
            Ok(pb::BlobKind::Tensor) => BlobKind::Tensor,
            Ok(pb::BlobKind::Dataset) => BlobKind::Dataset,
            Ok(pb::BlobKind::Program) => BlobKind::Program,
            _ => {
                return Err(Error::InvalidArgument(
                    "kind: must be tensor, dataset or program".into(),
                )
                .into());
            }
        };
        let path = self.0.artifacts.blob_file(kind, &request.sha256)?;
        let file = tokio::fs::read(&path).await.map_err(|_| {
            Error::NotFound(format!("no {kind:?} blob {} is stored", request.sha256).to_lowercase())
        })?;
        if sha256_hex(&file) != request.sha256 {
            return Err(Error::DataLoss(format!(
                "the stored blob {} no longer matches its hash",
                request.sha256
            ))
            .into());
        }
        let total = file.len() as u64;
        let chunks: Vec<Result<pb::DownloadBlobResponse, Status>> =
            chunks_from(file, request.offset)?
                .into_iter()
                .map(|(offset, data)| {
                    Ok(pb::DownloadBlobResponse {
                        offset,
                        data,
                        total_bytes: total,
                    })
                })
                .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let request = request.into_inner();
        let min_age = match request.min_age_seconds {
            0 => DEFAULT_GARBAGE_AGE,
            seconds => std::time::Duration::from_secs(seconds),
        };
        // References are read before the scan. A blob that becomes referenced after that
        // read was uploaded, or reported present by MissingBlobs (which refreshes its
        // age), within the job that references it: it is younger than min_age and kept.
        let referenced = self.0.db.referenced_blobs().await?;
        let (deleted_blobs, deleted_bytes, kept_blobs) = self
            .0
            .artifacts
            .collect_garbage(&referenced, min_age, request.dry_run)
            .await?;
        tracing::info!(
            deleted_blobs,
            deleted_bytes,
            kept_blobs,
            dry_run = request.dry_run,
            "garbage collected"
        );
        Ok(Response::new(pb::CollectGarbageResponse {
            deleted_blobs,
            deleted_bytes,
            kept_blobs,
        }))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let mut missing = Vec::new();
        for sha256 in request.into_inner().sha256 {
            // A blob a worker will rely on instead of uploading is refreshed, so garbage
            // collection spares it until the job that needs it is recorded.
            if !self.0.artifacts.touch_tensor(&sha256).await? {
                missing.push(sha256);
            }
        }
        Ok(Response::new(pb::MissingBlobsResponse { sha256: missing }))
    }

    async fn upload_blobs(
        &self,
        request: Request<Streaming<pb::UploadBlobsRequest>>,
    ) -> Result<Response<pb::UploadBlobsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut stored = Vec::new();
        let mut open: Option<Upload> = None;
        let result = async {
            while let Some(chunk) = stream.message().await.map_err(|status| {
                Error::InvalidArgument(format!("the upload stream broke: {}", status.message()))
            })? {
                // The blob in flight stays in `open` until it is stored, so that any
                // failure on the way leaves its partial file to the cleanup below.
                if let Some(upload) = &open
                    && upload.sha256 != chunk.sha256
                {
                    return Err(Error::InvalidArgument(format!(
                        "blob {} ended without a chunk marked last",
                        upload.sha256
                    )));
                }
                if open.is_none() {
                    // Checks the hash's form before anything is written.
                    self.0
                        .artifacts
                        .blob_file(BlobKind::Tensor, &chunk.sha256)?;
                    let path = self.0.artifacts.upload_file();
                    open = Some(Upload {
                        file: tokio::fs::File::create(&path).await?,
                        path,
                        sha256: chunk.sha256.clone(),
                        written: 0,
                    });
                }
                let upload = open.as_mut().expect("a blob is open");
                if chunk.offset != upload.written {
                    return Err(Error::InvalidArgument(format!(
                        "blob {}: chunk at offset {}, expected {}",
                        chunk.sha256, chunk.offset, upload.written
                    )));
                }
                upload.file.write_all(&chunk.data).await?;
                upload.written += chunk.data.len() as u64;
                if chunk.last {
                    upload.file.flush().await?;
                    self.0
                        .artifacts
                        .store_upload(&upload.sha256, &upload.path)
                        .await?;
                    stored.push(upload.sha256.clone());
                    open = None;
                }
            }
            if let Some(upload) = &open {
                return Err(Error::InvalidArgument(format!(
                    "the stream ended inside blob {}",
                    upload.sha256
                )));
            }
            Ok(())
        }
        .await;
        if let Some(upload) = open {
            let _ = tokio::fs::remove_file(&upload.path).await;
        }
        result?;
        Ok(Response::new(pb::UploadBlobsResponse { stored }))
    }
}

/// A blob being received.
struct Upload {
    file: tokio::fs::File,
    path: std::path::PathBuf,
    sha256: String,
    written: u64,
}
