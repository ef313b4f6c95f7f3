//! DatasetService: registers a dataset sent inline or uploaded first, checking its hash,
//! its format and that `x` is finite, and reading its statistics, all before anything is
//! stored or written; and lists datasets. Never builds a message but its own
//! `*Response` (`convert.rs` does); never speaks SQL.

use super::convert;
use crate::Services;
use crate::artifacts::check_sha256;
use crate::domain::{Dataset, check_name};
use crate::error::Error;
use heirloom_core::{Invalid, limits, read_dataset_info, sha256_hex};
use heirloom_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct DatasetApi(pub Services);

#[tonic::async_trait]
impl pb::dataset_service_server::DatasetService for DatasetApi {
    async fn register_dataset(
        &self,
        request: Request<pb::RegisterDatasetRequest>,
    ) -> Result<Response<pb::RegisterDatasetResponse>, Status> {
        let request = request.into_inner();
        check_name("name", &request.name).map_err(Error::from)?;
        // The file comes inline, or was uploaded first and is named by its sha256.
        let content = if request.content.is_empty() {
            check_sha256("sha256", &request.sha256)?;
            match self.0.artifacts.len(&request.sha256).await? {
                None => {
                    return Err(Error::from(Invalid::new(
                        "content",
                        format!(
                            "is empty and no blob {} was uploaded: send the file, or upload it first",
                            request.sha256
                        ),
                    ))
                    .into());
                }
                Some(bytes) if bytes > limits::MAX_DATASET_BYTES => {
                    return Err(Error::from(Invalid::new(
                        "sha256",
                        format!(
                            "the uploaded dataset is {bytes} bytes; a dataset may have at most {}",
                            limits::MAX_DATASET_BYTES
                        ),
                    ))
                    .into());
                }
                Some(_) => {}
            }
            self.0.artifacts.read(&request.sha256).await?
        } else {
            request.content
        };
        let sha256 = sha256_hex(&content);
        if request.sha256 != sha256 {
            return Err(Error::from(Invalid::new(
                "sha256",
                format!(
                    "the content hashes to {sha256}, not {:?}: the file changed or was cut short",
                    request.sha256
                ),
            ))
            .into());
        }
        // Every check (NaN and ±inf too) comes before the first write: a refusal leaves
        // no row, and no blob unless the client uploaded one (garbage collection's).
        let info = read_dataset_info("content", &content).map_err(Error::from)?;
        self.0.artifacts.put(&sha256, content.clone()).await?;
        let dataset = Dataset {
            id: Uuid::new_v4(),
            name: request.name,
            version: 0, // the database assigns it
            sha256,
            size_bytes: content.len() as u64,
            num_examples: info.num_examples,
            num_features: info.num_features,
            num_classes: info.num_classes,
            created_at: chrono::Utc::now(),
            statistics: Some(info.statistics),
        };
        let dataset = self.0.db.insert_dataset(&dataset).await?;
        tracing::info!(dataset_id = %dataset.id, name = %dataset.name, "dataset registered");
        Ok(Response::new(pb::RegisterDatasetResponse {
            dataset: Some(convert::dataset_to_proto(&dataset)),
        }))
    }

    async fn list_datasets(
        &self,
        _request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let datasets = self.0.db.datasets().await?;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: datasets.iter().map(convert::dataset_to_proto).collect(),
        }))
    }
}
