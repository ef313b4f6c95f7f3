//! RecipeService: creating recipes (from JSON, a model or a job), deriving versions by
//! merge patch, reading, diffing, and listing the models a recipe family made. Builds
//! only its own `*Response` messages and never speaks SQL.

use super::convert;
use crate::Services;
use crate::db::NewRecipe;
use crate::error::Error;
use crate::recipes::{Recipe, diff, merge_patch, parse_json, patch_between};
use heirloom_core::{Invalid, limits};
use heirloom_proto::v1 as pb;
use tonic::{Request, Response, Status};

pub struct RecipeApi(pub Services);

/// Recipe bodies and patches are small: a few keys and an architecture.
const MAX_RECIPE_JSON_BYTES: usize = 64 * 1024;

fn check_json_length(field: &str, text: &str) -> Result<(), Error> {
    Ok(limits::check_length(field, text, MAX_RECIPE_JSON_BYTES)?)
}

#[tonic::async_trait]
impl pb::recipe_service_server::RecipeService for RecipeApi {
    async fn create_recipe(
        &self,
        request: Request<pb::CreateRecipeRequest>,
    ) -> Result<Response<pb::CreateRecipeResponse>, Status> {
        let request = request.into_inner();
        crate::domain::check_name("name", &request.name).map_err(Error::from)?;
        check_json_length("body_json", &request.body_json)?;
        let sources = [
            !request.body_json.is_empty(),
            !request.from_model.is_empty(),
            !request.from_job.is_empty(),
        ];
        if sources.iter().filter(|given| **given).count() != 1 {
            return Err(Error::from(Invalid::new(
                "body_json",
                "give exactly one of body_json (the recipe as JSON), from_model and from_job",
            ))
            .into());
        }
        let (body, source_model_id) = if sources[0] {
            (parse_json("body_json", &request.body_json)?, None)
        } else if sources[1] {
            let model = self.0.db.find_model(&request.from_model).await?;
            let Some(job_id) = model.job_id else {
                return Err(Error::FailedPrecondition(format!(
                    "from_model: {:?} was imported, not made by a job: no recipe made it",
                    model.name
                ))
                .into());
            };
            let job = self.0.db.job(job_id).await?;
            (Recipe::from_spec(&job.spec).to_json(), Some(model.id))
        } else {
            let job_id = convert::parse_id("from_job", &request.from_job)?;
            let job = self.0.db.job(job_id).await?;
            (Recipe::from_spec(&job.spec).to_json(), job.model_id)
        };
        let recipe = Recipe::parse("body_json", &body)?;
        let body = recipe.to_json();
        let record = self
            .0
            .db
            .insert_recipe(&NewRecipe {
                name: &request.name,
                kind: recipe.kind,
                body: &body,
                derived_from: None,
                source_model_id,
                next_version: false,
            })
            .await?;
        tracing::info!(recipe_id = %record.reference.id, name = %request.name, "recipe created");
        Ok(Response::new(pb::CreateRecipeResponse {
            recipe: Some(convert::recipe_to_proto(&record)),
        }))
    }

    async fn derive_recipe(
        &self,
        request: Request<pb::DeriveRecipeRequest>,
    ) -> Result<Response<pb::DeriveRecipeResponse>, Status> {
        let request = request.into_inner();
        check_json_length("patch_json", &request.patch_json)?;
        let patch = parse_json("patch_json", &request.patch_json)?;
        if !patch.is_object() {
            return Err(Error::from(Invalid::new(
                "patch_json",
                "must be a JSON object of the keys to change (a merge patch)",
            ))
            .into());
        }
        if !request.name.is_empty() {
            crate::domain::check_name("name", &request.name).map_err(Error::from)?;
        }
        let base = self.0.db.find_recipe(&request.base).await?;
        let mut body = base.body.clone();
        merge_patch(&mut body, &patch);
        let recipe = Recipe::parse("patch_json", &body)?;
        let body = recipe.to_json();
        if body == base.body {
            return Err(Error::from(Invalid::new(
                "patch_json",
                format!(
                    "changes nothing in {}@{}: a new version must differ",
                    base.reference.name, base.reference.version
                ),
            ))
            .into());
        }
        // What really changed, after defaults: the patch recorded on the edge.
        let effective_patch = patch_between(&base.body, &body);
        let same_name = request.name.is_empty();
        let name = if same_name {
            base.reference.name.clone()
        } else {
            request.name.clone()
        };
        let record = self
            .0
            .db
            .insert_recipe(&NewRecipe {
                name: &name,
                kind: recipe.kind,
                body: &body,
                derived_from: Some((base.reference.id, &effective_patch)),
                source_model_id: None,
                next_version: same_name,
            })
            .await?;
        tracing::info!(recipe_id = %record.reference.id, name = %name, "recipe derived");
        Ok(Response::new(pb::DeriveRecipeResponse {
            recipe: Some(convert::recipe_to_proto(&record)),
        }))
    }

    async fn get_recipe(
        &self,
        request: Request<pb::GetRecipeRequest>,
    ) -> Result<Response<pb::GetRecipeResponse>, Status> {
        let recipe = self.0.db.find_recipe(&request.into_inner().recipe).await?;
        Ok(Response::new(pb::GetRecipeResponse {
            recipe: Some(convert::recipe_to_proto(&recipe)),
        }))
    }

    async fn list_recipes(
        &self,
        _request: Request<pb::ListRecipesRequest>,
    ) -> Result<Response<pb::ListRecipesResponse>, Status> {
        let recipes = self.0.db.recipes().await?;
        Ok(Response::new(pb::ListRecipesResponse {
            recipes: recipes.iter().map(convert::recipe_to_proto).collect(),
        }))
    }

    async fn diff_recipes(
        &self,
        request: Request<pb::DiffRecipesRequest>,
    ) -> Result<Response<pb::DiffRecipesResponse>, Status> {
        let request = request.into_inner();
        let a = self.0.db.find_recipe(&request.a).await?;
        let b = self.0.db.find_recipe(&request.b).await?;
        Ok(Response::new(pb::DiffRecipesResponse {
            changes: diff(&a.body, &b.body)
                .into_iter()
                .map(convert::recipe_change_to_proto)
                .collect(),
            patch_json: patch_between(&a.body, &b.body).to_string(),
            a: Some(convert::recipe_to_proto(&a)),
            b: Some(convert::recipe_to_proto(&b)),
        }))
    }

    async fn list_recipe_models(
        &self,
        request: Request<pb::ListRecipeModelsRequest>,
    ) -> Result<Response<pb::ListRecipeModelsResponse>, Status> {
        let request = request.into_inner();
        // A bare name means all of its versions: every later one derives from the first.
        let is_bare_name =
            !request.recipe.contains('@') && uuid::Uuid::parse_str(&request.recipe).is_err();
        let reference = if is_bare_name && !request.exact {
            format!("{}@1", request.recipe)
        } else {
            request.recipe.clone()
        };
        let recipe = self.0.db.find_recipe(&reference).await?;
        let family = if request.exact {
            vec![(recipe, 0)]
        } else {
            self.0.db.recipe_family(recipe.reference.id).await?
        };
        let ids: Vec<uuid::Uuid> = family.iter().map(|(r, _)| r.reference.id).collect();
        let models = self.0.db.models_made_with(&ids).await?;
        let depth_of = |id| {
            family
                .iter()
                .find(|(r, _)| r.reference.id == id)
                .map_or(0, |(_, depth)| *depth)
        };
        Ok(Response::new(pb::ListRecipeModelsResponse {
            models: models
                .iter()
                .map(|model| {
                    let recipe = model.recipe.as_ref().expect("made with a recipe");
                    convert::recipe_model_to_proto(model, recipe, depth_of(recipe.id))
                })
                .collect(),
            recipes: family
                .iter()
                .map(|(recipe, _)| convert::recipe_to_proto(recipe))
                .collect(),
        }))
    }
}
