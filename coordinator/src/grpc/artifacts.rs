use crate::Services;
use crate::error::Error;
use heirloom_proto::v1 as pb;
use heirloom_spec::sha256_hex;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Well under the message limit, and large enough that per-message costs vanish.
pub const CHUNK_BYTES: usize = 1 << 20;

pub struct ArtifactApi(pub Services);

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportModelResponse, Status>> + Send>>;

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
        if request.offset > total {
            return Err(Error::InvalidArgument(format!(
                "offset: {} is past the end of the {total}-byte file",
                request.offset
            ))
            .into());
        }
        let sha256 = model.weights_sha256;
        let start = request.offset as usize;
        let chunks: Vec<Result<pb::ExportModelResponse, Status>> = file[start..]
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, data)| {
                Ok(pb::ExportModelResponse {
                    offset: (start + i * CHUNK_BYTES) as u64,
                    data: data.to_vec(),
                    total_bytes: total,
                    sha256: sha256.clone(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
