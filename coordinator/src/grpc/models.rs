//! ModelService: importing a model (inline or from uploaded tensors), reading models and
//! their tensors, and the lineage questions (ancestors, descendants, paths, common
//! ancestors, blame, dataset impact, the graph). Builds only its own `*Response`
//! messages (`convert.rs` builds the rest) and never speaks SQL.

use super::{convert, lineage};
use crate::Services;
use crate::artifacts::ManifestEntry;
use crate::domain::TensorRecord;
use crate::domain::{Model, check_name};
use crate::error::Error;
use heirloom_core::{
    Architecture, Invalid, ProgramParameter, TensorStatus, Torchscript, check_manifest, limits,
    sha256_hex, under_prefix,
};
use heirloom_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct ModelApi(pub Services);

#[tonic::async_trait]
impl pb::model_service_server::ModelService for ModelApi {
    async fn import_model(
        &self,
        request: Request<pb::ImportModelRequest>,
    ) -> Result<Response<pb::ImportModelResponse>, Status> {
        let request = request.into_inner();
        check_name("name", &request.name).map_err(Error::from)?;
        // Before any blob is stored: a refused import leaves nothing behind.
        self.0.db.check_model_name_free(&request.name).await?;
        let mut architecture =
            convert::architecture_from_proto("architecture", request.architecture)?
                .ok_or_else(|| Error::from(Invalid::new("architecture", "is required")))?;
        // The tensors come inline (`weights`) or were uploaded first (`tensors`).
        let manifest = match (request.weights.is_empty(), request.tensors.is_empty()) {
            (false, true) => heirloom_core::tensor_hashes("weights", &request.weights)
                .map_err(Error::from)?
                .into_iter()
                .map(|tensor| {
                    let entry = ManifestEntry {
                        info: tensor.info,
                        sha256: tensor.sha256,
                    };
                    (entry, Some(tensor.range))
                })
                .collect::<Vec<_>>(),
            (true, false) => {
                let mut manifest = convert::manifest_from_proto("tensors", &request.tensors)?;
                manifest.sort_by(|a, b| a.info.name.cmp(&b.info.name));
                self.0.artifacts.check_stored("tensors", &manifest).await?;
                manifest.into_iter().map(|entry| (entry, None)).collect()
            }
            (true, true) => {
                return Err(Error::from(Invalid::new(
                    "weights",
                    "is empty: send a safetensors file, or upload the tensors and list them in `tensors`",
                ))
                .into());
            }
            (false, false) => {
                return Err(Error::from(Invalid::new(
                    "tensors",
                    "send `weights` or `tensors`, not both",
                ))
                .into());
            }
        };
        // Each entry with where its bytes lie in `weights`, when they came inline.
        let (manifest, inline): (Vec<ManifestEntry>, Vec<_>) = manifest.into_iter().unzip();
        let infos: Vec<heirloom_core::TensorInfo> =
            manifest.iter().map(|e| e.info.clone()).collect();
        if let Architecture::Torchscript(script) = &mut architecture {
            describe_program(script, &request.program, &infos)?;
            self.0
                .artifacts
                .put(
                    &script.program_sha256,
                    bytes::Bytes::from(request.program.clone()),
                )
                .await?;
        } else if !request.program.is_empty() {
            return Err(Error::from(Invalid::new(
                "program",
                "only a torchscript architecture takes a program; leave it empty",
            ))
            .into());
        }
        check_manifest("weights", &infos, &architecture).map_err(Error::from)?;
        // Inline weights are checked before any tensor is stored; uploaded ones as they
        // are read to hash the file, below (their blobs stay until garbage collection).
        let inline: Vec<_> = manifest
            .iter()
            .zip(inline)
            .filter_map(|(entry, range)| Some((entry, range?)))
            .collect();
        for (entry, range) in &inline {
            let data = &request.weights[range.clone()];
            heirloom_core::check_finite("weights", &entry.info.name, &entry.info.dtype, data)
                .map_err(Error::from)?;
        }
        for (entry, range) in inline {
            let data = request.weights.slice(range);
            self.0.artifacts.put(&entry.sha256, data).await?;
        }
        let field = if request.weights.is_empty() {
            "tensors"
        } else {
            "weights"
        };
        let (weights_sha256, weights_bytes) =
            self.0.artifacts.canonical_digest(field, &manifest).await?;
        let tensors = new_tensors(manifest);
        let model = Model {
            id: Uuid::new_v4(),
            name: request.name,
            architecture,
            weights_sha256,
            weights_bytes,
            source: "import".into(),
            job_id: None,
            dataset: None,
            metrics: None,
            parents: Vec::new(),
            created_at: chrono::Utc::now(),
            recipe: None,
        };
        let model = self.0.db.insert_imported_model(&model, &tensors).await?;
        tracing::info!(model_id = %model.id, name = %model.name, "model imported");
        Ok(Response::new(pb::ImportModelResponse {
            model: Some(convert::model_to_proto(&model)),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let model = self.0.db.find_model(&request.into_inner().model).await?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(convert::model_to_proto(&model)),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.0.db.all_models().await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(convert::model_to_proto).collect(),
        }))
    }

    async fn list_ancestors(
        &self,
        request: Request<pb::ListAncestorsRequest>,
    ) -> Result<Response<pb::ListAncestorsResponse>, Status> {
        let request = request.into_inner();
        let walk = lineage::Walk {
            direction: lineage::Direction::Up,
            model: &request.model,
            max_depth: request.max_depth,
            relations: &request.relations,
            page_token: &request.page_token,
            page_size: request.page_size,
            view: convert::lineage_view_from_proto(request.view)?,
        };
        let (page, models) = walk.page(&self.0.db).await?;
        Ok(Response::new(pb::ListAncestorsResponse {
            entries: convert::lineage_entries_to_proto(&page, models),
            next_page_token: lineage::next_token(page.next),
        }))
    }

    async fn find_path(
        &self,
        request: Request<pb::FindPathRequest>,
    ) -> Result<Response<pb::FindPathResponse>, Status> {
        let request = request.into_inner();
        let from = self.0.db.find_model(&request.from).await?;
        let to = self.0.db.find_model(&request.to).await?;
        let (steps, reversed) = match self.0.db.path(from.id, to.id).await? {
            Some(steps) => (steps, false),
            None => match self.0.db.path(to.id, from.id).await? {
                Some(steps) => (steps, true),
                None => {
                    return Err(Error::NotFound(format!(
                        "neither {} nor {} descends from the other; CommonAncestors finds \
                         what they share",
                        from.name, to.name
                    ))
                    .into());
                }
            },
        };
        let ids: Vec<Uuid> = steps.iter().map(|(id, _)| *id).collect();
        let mut models = self.0.db.models_with_ids(&ids).await?;
        let steps = steps
            .into_iter()
            .filter_map(|(id, relation)| {
                Some(convert::path_step_to_proto(&models.remove(&id)?, relation))
            })
            .collect();
        Ok(Response::new(pb::FindPathResponse { steps, reversed }))
    }

    async fn common_ancestors(
        &self,
        request: Request<pb::CommonAncestorsRequest>,
    ) -> Result<Response<pb::CommonAncestorsResponse>, Status> {
        let request = request.into_inner();
        let a = self.0.db.find_model(&request.a).await?;
        let b = self.0.db.find_model(&request.b).await?;
        let common = self.0.db.common_ancestors(a.id, b.id).await?;
        let ids: Vec<Uuid> = common.iter().map(|(id, _, _)| *id).collect();
        let mut models = self.0.db.models_with_ids(&ids).await?;
        let ancestors = common
            .into_iter()
            .filter_map(|(id, depth_from_a, depth_from_b)| {
                let model = models.remove(&id)?;
                Some(convert::common_ancestor_to_proto(
                    &model,
                    depth_from_a,
                    depth_from_b,
                ))
            })
            .collect();
        Ok(Response::new(pb::CommonAncestorsResponse { ancestors }))
    }

    async fn lineage_graph(
        &self,
        request: Request<pb::LineageGraphRequest>,
    ) -> Result<Response<pb::LineageGraphResponse>, Status> {
        let request = request.into_inner();
        let format = convert::graph_format_from_proto(request.format)?;
        let model = self.0.db.find_model(&request.model).await?;
        let graph = self
            .0
            .db
            .graph(model.id, request.ancestors_depth, request.descendants_depth)
            .await?;
        let (nodes, edges) = convert::graph_to_proto(&graph, model.id);
        let rendered = lineage::render(format, &graph, model.id);
        Ok(Response::new(pb::LineageGraphResponse {
            nodes,
            edges,
            rendered,
        }))
    }

    async fn blame_tensor(
        &self,
        request: Request<pb::BlameTensorRequest>,
    ) -> Result<Response<pb::BlameTensorResponse>, Status> {
        let request = request.into_inner();
        limits::check_length("tensor", &request.tensor, limits::MAX_TENSOR_NAME_BYTES)
            .map_err(Error::from)?;
        let model = self.0.db.find_model(&request.model).await?;
        let steps = self.0.db.blame(model.id, &request.tensor).await?;
        if steps.is_empty() {
            return Err(Error::NotFound(format!(
                "model {} has no tensor {:?}; `heirloom model tensors {}` lists them",
                model.name, request.tensor, model.name
            ))
            .into());
        }
        Ok(Response::new(pb::BlameTensorResponse {
            steps: steps
                .into_iter()
                .map(convert::blame_step_to_proto)
                .collect(),
        }))
    }

    async fn dataset_impact(
        &self,
        request: Request<pb::DatasetImpactRequest>,
    ) -> Result<Response<pb::DatasetImpactResponse>, Status> {
        let request = request.into_inner();
        let (offset, size) = lineage::paging(&request.page_token, request.page_size)?;
        let dataset = self.0.db.find_dataset(&request.dataset).await?;
        let page = self.0.db.dataset_impact(dataset.id, offset, size).await?;
        let view = convert::lineage_view_from_proto(request.view)?;
        let models = lineage::page_models(&self.0.db, &page, view).await?;
        Ok(Response::new(pb::DatasetImpactResponse {
            entries: convert::lineage_entries_to_proto(&page, models),
            next_page_token: lineage::next_token(page.next),
        }))
    }

    async fn list_model_tensors(
        &self,
        request: Request<pb::ListModelTensorsRequest>,
    ) -> Result<Response<pb::ListModelTensorsResponse>, Status> {
        let model = self.0.db.find_model(&request.into_inner().model).await?;
        let tensors = self.0.db.model_tensors(model.id).await?;
        Ok(Response::new(pb::ListModelTensorsResponse {
            tensors: convert::tensors_to_proto(&tensors),
        }))
    }

    async fn list_descendants(
        &self,
        request: Request<pb::ListDescendantsRequest>,
    ) -> Result<Response<pb::ListDescendantsResponse>, Status> {
        let request = request.into_inner();
        let walk = lineage::Walk {
            direction: lineage::Direction::Down,
            model: &request.model,
            max_depth: request.max_depth,
            relations: &request.relations,
            page_token: &request.page_token,
            page_size: request.page_size,
            view: convert::lineage_view_from_proto(request.view)?,
        };
        let (page, models) = walk.page(&self.0.db).await?;
        Ok(Response::new(pb::ListDescendantsResponse {
            entries: convert::lineage_entries_to_proto(&page, models),
            next_page_token: lineage::next_token(page.next),
        }))
    }
}

/// Completes a TorchScript architecture from what was imported: the program's hash and
/// its parameters as the weights name them.
fn describe_program(
    script: &mut Torchscript,
    program: &[u8],
    weights: &[heirloom_core::TensorInfo],
) -> Result<(), Error> {
    if program.is_empty() {
        return Err(Invalid::new(
            "program",
            "a torchscript architecture needs the module file torch.jit.save wrote",
        )
        .into());
    }
    // torch.jit.save writes a zip archive.
    if !program.starts_with(b"PK\x03\x04") {
        return Err(Invalid::new(
            "program",
            "is not a TorchScript archive: send the file torch.jit.save wrote",
        )
        .into());
    }
    script.program_sha256 = sha256_hex(program);
    script.parameters = weights
        .iter()
        .filter(|info| script.head.is_none() || !under_prefix(&info.name, "head"))
        .map(|info| ProgramParameter {
            name: info.name.clone(),
            shape: info.shape.clone(),
        })
        .collect();
    Ok(())
}

/// An imported model's tensors: all new, with no origin.
fn new_tensors(manifest: Vec<ManifestEntry>) -> Vec<TensorRecord> {
    manifest
        .into_iter()
        .map(|entry| TensorRecord {
            name: entry.info.name,
            sha256: entry.sha256,
            dtype: entry.info.dtype,
            shape: entry.info.shape.iter().map(|&d| d as u64).collect(),
            status: TensorStatus::New,
            origin: None,
        })
        .collect()
}
