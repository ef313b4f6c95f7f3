//! `heirloom recipe …`: create, derive, show, list and diff recipes, and the models
//! made with a recipe and every version derived from it.

use crate::output::{Output, outln};
use clap::Subcommand;
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::recipe_service_client::RecipeServiceClient;

#[derive(Subcommand)]
pub enum Command {
    /// A new recipe from JSON (--json or --file), or the recipe a past job ran.
    Create {
        name: String,
        /// The recipe as JSON, such as '{"kind": "finetune", "trainable": ["fc.*"]}'.
        #[arg(long, conflicts_with_all = ["file", "from_model", "from_job"])]
        json: Option<String>,
        /// A file holding the recipe as JSON.
        #[arg(long, conflicts_with_all = ["from_model", "from_job"])]
        file: Option<std::path::PathBuf>,
        /// A model (name or id): take the recipe of the job that made it.
        #[arg(long, conflicts_with = "from_job")]
        from_model: Option<String>,
        /// A job's id (in any state): take the recipe it ran.
        #[arg(long)]
        from_job: Option<String>,
    },
    /// A new version of a recipe with a JSON merge patch applied (null removes a key).
    Derive {
        /// The recipe to start from: name, name@version or id.
        base: String,
        /// The patch, such as '{"hyperparameters": {"learning_rate": 0.01}}', or a JSON file.
        #[arg(long)]
        set: String,
        /// Give the result a new name instead of the next version of the base's.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a recipe: its body, and what it was derived or taken from.
    Show { recipe: String },
    /// List every recipe version.
    List,
    /// What differs between two recipes, key by key.
    Diff { a: String, b: String },
    /// The models made with a recipe or any version derived from it.
    Models {
        recipe: String,
        /// Only this version, not those derived from it.
        #[arg(long)]
        exact: bool,
    },
}

/// JSON given inline or as a file, checked and passed on as text.
pub fn read_json(flag: &str, text: &str) -> anyhow::Result<String> {
    let json = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        std::fs::read_to_string(text)
            .map_err(|err| crate::usage(format!("{flag}: reading {text}: {err}")))?
    };
    serde_json::from_str::<serde_json::Value>(&json)
        .map_err(|err| crate::usage(format!("{flag}: not valid JSON: {err}")))?;
    Ok(json)
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = RecipeServiceClient::new(channel);
    match command {
        Command::Create {
            name,
            json,
            file,
            from_model,
            from_job,
        } => {
            let body_json = match (json, file) {
                (Some(json), _) => read_json("--json", &json)?,
                (None, Some(file)) => read_json("--file", &file.to_string_lossy())?,
                (None, None) if from_model.is_some() || from_job.is_some() => String::new(),
                (None, None) => {
                    return Err(crate::usage(
                        "give the recipe: --json, --file, --from-model or --from-job",
                    ));
                }
            };
            let recipe = client
                .create_recipe(pb::CreateRecipeRequest {
                    name,
                    body_json,
                    from_model: from_model.unwrap_or_default(),
                    from_job: from_job.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .recipe
                .unwrap_or_default();
            output.print(&recipe, || print_recipe(&recipe))
        }
        Command::Derive { base, set, name } => {
            let recipe = client
                .derive_recipe(pb::DeriveRecipeRequest {
                    base,
                    patch_json: read_json("--set", &set)?,
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .recipe
                .unwrap_or_default();
            output.print(&recipe, || print_recipe(&recipe))
        }
        Command::Show { recipe } => {
            let recipe = client
                .get_recipe(pb::GetRecipeRequest { recipe })
                .await?
                .into_inner()
                .recipe
                .unwrap_or_default();
            output.print(&recipe, || print_recipe(&recipe))
        }
        Command::List => {
            let listed = client
                .list_recipes(pb::ListRecipesRequest {})
                .await?
                .into_inner();
            output.print(&listed, || {
                for recipe in &listed.recipes {
                    outln!("{}", summary(recipe));
                }
            })
        }
        Command::Diff { a, b } => {
            let diff = client
                .diff_recipes(pb::DiffRecipesRequest { a, b })
                .await?
                .into_inner();
            output.print(&diff, || print_diff(&diff))
        }
        Command::Models { recipe, exact } => {
            let listed = client
                .list_recipe_models(pb::ListRecipeModelsRequest { recipe, exact })
                .await?
                .into_inner();
            output.print(&listed, || print_recipe_models(&listed))
        }
    }
}

fn version(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}

fn summary(recipe: &pb::Recipe) -> String {
    let mut line = format!(
        "{:<24} {:<9} {}",
        version(&recipe.name, recipe.version),
        recipe.kind,
        recipe.id
    );
    if let Some(parent) = &recipe.derived_from {
        line += &format!("  derived from {}", version(&parent.name, parent.version));
    }
    if !recipe.source_model_name.is_empty() {
        line += &format!("  taken from model {}", recipe.source_model_name);
    }
    line
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| json.to_string())
}

fn print_recipe(recipe: &pb::Recipe) {
    outln!(
        "recipe {} ({})",
        version(&recipe.name, recipe.version),
        recipe.id
    );
    outln!("  kind: {}", recipe.kind);
    if let Some(parent) = &recipe.derived_from {
        outln!(
            "  derived from {} with {}",
            version(&parent.name, parent.version),
            recipe.patch_json
        );
    }
    if !recipe.source_model_name.is_empty() {
        outln!(
            "  taken from the job that made {}",
            recipe.source_model_name
        );
    }
    outln!("  created {}", recipe.created_at);
    for line in pretty(&recipe.body_json).lines() {
        outln!("  {line}");
    }
}

fn print_diff(diff: &pb::DiffRecipesResponse) {
    let (a, b) = (
        diff.a.clone().unwrap_or_default(),
        diff.b.clone().unwrap_or_default(),
    );
    let (a_name, b_name) = (version(&a.name, a.version), version(&b.name, b.version));
    if diff.changes.is_empty() {
        outln!("{a_name} and {b_name} are the same recipe");
        return;
    }
    let width = diff.changes.iter().map(|c| c.path.len()).max().unwrap_or(0);
    outln!("{:<width$}  {a_name}  →  {b_name}", "");
    let shown = |json: &str| {
        if json.is_empty() {
            "(absent)".to_string()
        } else {
            json.to_string()
        }
    };
    for change in &diff.changes {
        outln!(
            "{:<width$}  {}  →  {}",
            change.path,
            shown(&change.a_json),
            shown(&change.b_json)
        );
    }
    outln!("patch: {}", diff.patch_json);
}

/// The recipes as a derivation tree, each with the models made with it.
fn print_recipe_models(listed: &pb::ListRecipeModelsResponse) {
    fn walk(listed: &pb::ListRecipeModelsResponse, recipe: &pb::Recipe, depth: usize) {
        let indent = "  ".repeat(depth);
        outln!("{indent}{}", summary(recipe));
        for made in listed
            .models
            .iter()
            .filter(|made| made.recipe.as_ref().is_some_and(|r| r.id == recipe.id))
        {
            let model = made.model.clone().unwrap_or_default();
            let accuracy = model
                .metrics
                .map(|m| format!("  accuracy {:.3}", m.holdout_accuracy))
                .unwrap_or_default();
            outln!("{indent}  └ model {} ({}){accuracy}", model.name, model.id);
        }
        for child in listed.recipes.iter().filter(|child| {
            child
                .derived_from
                .as_ref()
                .is_some_and(|parent| parent.id == recipe.id)
        }) {
            walk(listed, child, depth + 1);
        }
    }
    if let Some(root) = listed.recipes.first() {
        walk(listed, root, 0);
    }
    outln!(
        "{} model(s) made with {} recipe version(s)",
        listed.models.len(),
        listed.recipes.len()
    );
}
