//! Turns a submitted job into a [`Plan`]: resolves the parents and the dataset, derives
//! the child's architecture and its tensor plan, fills in defaults, checks the data
//! against the parents, measures how far it lies from their training data, estimates the
//! memory the job needs, and collects every reason a worker would fail on it. SubmitJob
//! queues a plan with no refusals; PlanJob shows any plan.

use crate::db::Db;
use crate::domain::{
    DataShift, Dataset, JobDraft, JobKind, JobSpec, Model, ModuleMapping, RecipeUse, Reference,
    Target, check_name, fields_that_do_not_apply,
};
use crate::error::{Error, Result};
use crate::recipes::{Recipe, RecipeInputs, merge_patch};
use heirloom_core::{
    Adjustment, Architecture, DatasetUse, Invalid, MemoryEstimate, Module, Shift, TensorPlan,
    TrainablePatterns, estimate_memory, plan_compose, plan_finetune, plan_inherit, plan_scratch,
    plan_transfer,
};
use serde_json::Value;
use std::collections::HashMap;

/// A submission that names a recipe: the recipe, the overrides, and the job's inputs.
pub struct RecipeSubmission {
    pub reference: String,
    pub overrides: Option<Value>,
    pub inputs: RecipeInputs,
}

/// One check the plan ran, passed or not.
#[derive(Debug, Clone)]
pub struct Check {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

/// What a job would do, and why it could not.
#[derive(Debug, Default)]
pub struct Plan {
    /// The spec as it would run: present once a tensor plan could be derived.
    pub spec: Option<JobSpec>,
    /// The parent models, in the order of `spec.parents`.
    pub parents: Vec<Model>,
    pub checks: Vec<Check>,
    pub memory: Option<MemoryEstimate>,
    /// Every reason SubmitJob would refuse the job; empty if it would queue it.
    pub refusals: Vec<Error>,
    /// For a job on several ranks: how the work splits, and whether it can be placed.
    pub gang: Option<GangPlan>,
}

/// A job on several ranks, as PlanJob shows it.
#[derive(Debug, Clone)]
pub struct GangPlan {
    pub world_size: u32,
    pub min_ranks: u32,
    /// Rows of each global batch one rank takes (the most any takes).
    pub batch_per_rank: u64,
    /// The memory estimate for one rank: its share of the activations, all the rest.
    pub memory_per_rank_bytes: u64,
    /// Whether the connected workers have the slots now, and if not why.
    pub placement: String,
}

impl GangPlan {
    /// The split of a job with `memory` (its estimate for the whole batch) over the ranks
    /// `requirements` ask for, and `placement` as the workers connected now allow it.
    pub fn new(
        requirements: &crate::domain::Requirements,
        memory: Option<&MemoryEstimate>,
        placement: String,
    ) -> GangPlan {
        let ranks = u64::from(requirements.world_size.max(1));
        let batch = memory.map_or(0, |memory| memory.batch_size);
        let batch_per_rank = batch.div_ceil(ranks);
        let memory_per_rank_bytes = memory.map_or(0, |memory| {
            let activations_per_row = memory.activations_bytes / batch.max(1);
            memory.total_bytes() - memory.activations_bytes + activations_per_row * batch_per_rank
        });
        GangPlan {
            world_size: requirements.world_size,
            min_ranks: requirements.min_ranks,
            batch_per_rank,
            memory_per_rank_bytes,
            placement,
        }
    }
}

impl Plan {
    /// The spec to queue, or the refusals as one error: the first one's kind, every
    /// message.
    pub fn into_spec(mut self) -> Result<JobSpec> {
        if self.refusals.is_empty() {
            return self
                .spec
                .ok_or_else(|| Error::Internal("a plan without refusals has a spec".into()));
        }
        let first = self.refusals.remove(0);
        if self.refusals.is_empty() {
            return Err(first);
        }
        let more: Vec<String> = self.refusals.iter().map(ToString::to_string).collect();
        let message = format!("{first} (and {} more: {})", more.len(), more.join("; "));
        Err(match first {
            Error::NotFound(_) => Error::NotFound(message),
            Error::AlreadyExists(_) => Error::AlreadyExists(message),
            Error::FailedPrecondition(_) => Error::FailedPrecondition(message),
            _ => Error::InvalidArgument(message),
        })
    }

    fn passed(&mut self, check: &str, detail: String) {
        self.checks.push(Check {
            check: check.into(),
            passed: true,
            detail,
        });
    }

    fn refuse(&mut self, check: &str, error: Error) {
        self.checks.push(Check {
            check: check.into(),
            passed: false,
            detail: error.to_string(),
        });
        self.refusals.push(error);
    }

    /// The value, or the error kept as a refusal of `check`; errors that say nothing
    /// about the job (the database away) end planning.
    fn take<T>(&mut self, check: &str, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(
                error @ (Error::InvalidArgument(_)
                | Error::NotFound(_)
                | Error::AlreadyExists(_)
                | Error::FailedPrecondition(_)),
            ) => {
                self.refuse(check, error);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

/// A recipe submission as a draft: the recipe version, with the overrides merged into
/// its body and checked like any recipe, and the inputs in its parent slots.
pub async fn draft_from_recipe(
    db: &Db,
    submission: RecipeSubmission,
) -> Result<(JobDraft, RecipeUse)> {
    let record = db.find_recipe(&submission.reference).await?;
    let mut body = record.body.clone();
    if let Some(overrides) = &submission.overrides {
        merge_patch(&mut body, overrides);
    }
    let recipe = Recipe::parse("spec.recipe_overrides_json", &body)?;
    let draft = recipe.draft(submission.inputs)?;
    Ok((
        draft,
        RecipeUse {
            recipe: record.reference,
            overrides: submission.overrides,
        },
    ))
}

/// Plans a job: never fails for a job that cannot run (that is what `refusals` holds),
/// only when the database does.
pub async fn plan_job(db: &Db, draft: JobDraft, recipe: Option<RecipeUse>) -> Result<Plan> {
    let mut plan = Plan::default();
    check_model_name(db, &draft.model_name, &mut plan).await?;
    for problem in fields_that_do_not_apply(&draft) {
        plan.refuse("fields", problem);
    }
    let dataset = match &draft.dataset {
        Some(reference) => plan.take("dataset", resolve_dataset(db, reference).await)?,
        None => None,
    };
    let derived = plan.take("tensor plan", derive(db, &draft).await)?;
    let Some(Derived {
        architecture,
        tensors,
        parents,
        adjustment,
        modules,
    }) = derived
    else {
        return Ok(plan);
    };
    check_patterns(&draft, &tensors, &mut plan);
    check_shapes(&architecture, &tensors, &parents, &mut plan);
    let precision = draft.hyperparameters.precision;
    if !precision.is_fp32() && !architecture.is_language_model() {
        plan.refuse(
            "precision",
            Invalid::new(
                "spec.hyperparameters.precision",
                format!(
                    "{} trains language models (llama, gpt2); this architecture trains in fp32: \
                     leave it unset",
                    precision.as_str()
                ),
            )
            .into(),
        );
    }
    let trains = tensors.iter().any(|tensor| tensor.trainable);
    let needs_data = match draft.kind.inputs().dataset {
        DatasetUse::Required => true,
        DatasetUse::WhenTraining => trains,
    };
    let mut data_shift = Vec::new();
    match &dataset {
        None if needs_data => plan.refuse(
            "dataset",
            Invalid::new(
                "spec.dataset_id",
                format!("a {} job that trains needs a dataset", draft.kind.as_str()),
            )
            .into(),
        ),
        None => {}
        Some(dataset) => {
            check_data_fits(dataset, &architecture, &draft, &parents, &mut plan);
            data_shift = measure_shift(db, dataset, &parents, &mut plan).await?;
        }
    }
    plan.memory = Some(estimate_memory(
        &architecture,
        &tensors,
        &draft.hyperparameters,
        dataset.as_ref().map_or(0, examples_held),
    ));
    plan.spec = Some(JobSpec {
        kind: draft.kind,
        model_name: draft.model_name,
        dataset_id: dataset.map(|dataset| dataset.id),
        parents: parents.iter().map(|parent| parent.id).collect(),
        architecture,
        hyperparameters: draft.hyperparameters,
        trainable: draft.trainable,
        num_classes: (draft.num_classes != 0).then_some(draft.num_classes),
        unfreeze_blocks: draft.unfreeze_blocks,
        modules,
        adjustment,
        tensors,
        recipe,
        data_shift,
    });
    plan.parents = parents;
    Ok(plan)
}

async fn check_model_name(db: &Db, name: &str, plan: &mut Plan) -> Result<()> {
    if let Err(invalid) = check_name("spec.model_name", name) {
        plan.refuse("model name", invalid.into());
        return Ok(());
    }
    // Jobs in progress hold their names through a unique index; models through this check.
    let taken = if db.model_name_exists(name).await? {
        Some(format!("a model named {name:?} exists already"))
    } else {
        db.job_holding_name(name)
            .await?
            .map(|job| format!("job {job} will create a model named {name:?}"))
    };
    match taken {
        Some(reason) => plan.refuse(
            "model name",
            Error::AlreadyExists(format!("spec.model_name: {reason}; choose another name")),
        ),
        None => plan.passed("model name", format!("{name:?} is free")),
    }
    Ok(())
}

/// A model reference looked up; a refusal names the field that gave it.
async fn resolve_model(db: &Db, reference: &Reference) -> Result<Model> {
    let found = match &reference.target {
        Target::Id(id) => db.model(*id).await,
        Target::Name(name) => db.model_named(name).await,
        // Reference::model refuses a version.
        Target::Version(..) => Err(Error::Internal("a model reference with a version".into())),
    };
    found.map_err(|error| in_field(&reference.field, error))
}

/// A dataset reference looked up (a bare name: its latest version).
async fn resolve_dataset(db: &Db, reference: &Reference) -> Result<Dataset> {
    let found = match &reference.target {
        Target::Id(id) => db.dataset(*id).await,
        Target::Name(name) => db.dataset_named(name, None).await,
        Target::Version(name, version) => db.dataset_named(name, Some(*version)).await,
    };
    found.map_err(|error| in_field(&reference.field, error))
}

/// A refusal about what a field names, with the field in front.
fn in_field(field: &str, error: Error) -> Error {
    match error {
        Error::NotFound(message) => Error::NotFound(format!("{field}: {message}")),
        other => other,
    }
}

/// The child's architecture, its tensor plan, its parents in plan order, the
/// weight-space adjustment and a compose's module map: everything that follows from the
/// kind.
struct Derived {
    architecture: Architecture,
    tensors: Vec<TensorPlan>,
    parents: Vec<Model>,
    adjustment: Option<Adjustment>,
    modules: Vec<ModuleMapping>,
}

async fn derive(db: &Db, draft: &JobDraft) -> Result<Derived> {
    let kind = draft.kind.as_str();
    let takes_parent = draft.kind.inputs().takes_parent();
    let parent = match &draft.parent {
        Some(reference) if takes_parent => Some(resolve_model(db, reference).await?),
        None if takes_parent => {
            return Err(invalid(
                "spec.parent_id",
                format!("a {kind} job needs the parent model (its id or name)"),
            ));
        }
        _ => None,
    };
    let architecture_required = || {
        draft.architecture.clone().ok_or_else(|| {
            invalid(
                "spec.architecture",
                format!("a {kind} job needs an architecture"),
            )
        })
    };
    let mut parents: Vec<Model> = parent.into_iter().collect();
    let mut adjustment = None;
    let mut mappings = Vec::new();
    let (architecture, tensors) = match draft.kind {
        JobKind::Train => {
            let architecture = architecture_required()?;
            let tensors = plan_scratch(&architecture);
            (architecture, tensors)
        }
        JobKind::Finetune => {
            let parent = &parents[0];
            let names = parent.architecture.names();
            let patterns = TrainablePatterns::parse("spec.trainable", &draft.trainable, &names)?;
            if !(0.0..=1.0).contains(&draft.alpha) {
                return Err(invalid(
                    "spec.alpha",
                    "the WiSE-FT blend must lie in [0, 1] (0: no blend)",
                ));
            }
            if draft.alpha > 0.0 && draft.alpha < 1.0 {
                adjustment = Some(Adjustment::WiseFt { alpha: draft.alpha });
            }
            (
                parent.architecture.clone(),
                plan_finetune(&parent.architecture, &patterns),
            )
        }
        JobKind::Transfer => {
            if draft.num_classes == 0 {
                return Err(invalid(
                    "spec.num_classes",
                    "a transfer job needs the new head's output size (greater than 0)",
                ));
            }
            let architecture = parents[0].architecture.with_num_classes(draft.num_classes);
            architecture.validate("spec.num_classes")?;
            let tensors =
                plan_transfer("spec.unfreeze_blocks", &architecture, draft.unfreeze_blocks)?;
            (architecture, tensors)
        }
        JobKind::Direct => {
            adjustment = direct_adjustment(db, draft, &mut parents).await?;
            let tensors = plan_inherit(&parents[0].architecture, |_| false);
            (parents[0].architecture.clone(), tensors)
        }
        JobKind::Compose => {
            let architecture = architecture_required()?;
            let names = architecture.names();
            let patterns = TrainablePatterns::parse("spec.trainable", &draft.trainable, &names)?;
            let mut modules = Vec::new();
            for module in &draft.modules {
                let model = resolve_model(db, &module.parent).await?;
                let index = match parents.iter().position(|p| p.id == model.id) {
                    Some(index) => index,
                    None => {
                        parents.push(model);
                        parents.len() - 1
                    }
                };
                modules.push(Module {
                    target_prefix: module.target_prefix.clone(),
                    parent: index,
                    source_prefix: module.source_prefix.clone(),
                });
                mappings.push(ModuleMapping {
                    target_prefix: module.target_prefix.clone(),
                    parent_id: parents[index].id,
                    source_prefix: module.source_prefix.clone(),
                });
            }
            let parent_architectures: Vec<Architecture> = parents
                .iter()
                .map(|model| model.architecture.clone())
                .collect();
            let tensors = plan_compose(
                "spec.modules",
                &architecture,
                &modules,
                &parent_architectures,
                &patterns,
            )?;
            (architecture, tensors)
        }
    };
    Ok(Derived {
        architecture,
        tensors,
        parents,
        adjustment,
        modules: mappings,
    })
}

/// A direct job's adjustment: interpolation with a second parent of the same
/// architecture (added to `parents`), a scale, or none (an exact copy).
async fn direct_adjustment(
    db: &Db,
    draft: &JobDraft,
    parents: &mut Vec<Model>,
) -> Result<Option<Adjustment>> {
    // Weights are float32: a factor float32 cannot hold makes every nonzero weight
    // infinite. Any other overflow shows in the output, which the coordinator checks is
    // finite before storing it (`dispatch.rs`).
    for (field, value) in [("spec.alpha", draft.alpha), ("spec.scale", draft.scale)] {
        if !value.is_finite() || value.abs() > f64::from(f32::MAX) {
            return Err(invalid(
                field,
                format!(
                    "{value:e} is out of range: weights are float32, so it must be finite \
                     and at most {:e} in magnitude",
                    f32::MAX
                ),
            ));
        }
    }
    let Some(reference) = &draft.second_parent else {
        if draft.alpha != 0.0 {
            return Err(invalid(
                "spec.alpha",
                "interpolation needs spec.second_parent_id",
            ));
        }
        return Ok((draft.scale != 0.0).then_some(Adjustment::Scale {
            factor: draft.scale,
        }));
    };
    if draft.scale != 0.0 {
        return Err(invalid("spec.scale", "interpolate or scale, not both"));
    }
    let parent = &parents[0];
    let second = resolve_model(db, reference).await?;
    if second.id == parent.id {
        return Err(invalid(
            &reference.field,
            "interpolation needs two different models",
        ));
    }
    if second.architecture != parent.architecture {
        return Err(invalid(
            &reference.field,
            format!(
                "cannot interpolate {:?} and {:?}: their architectures differ ({} vs {}); \
                 interpolation needs the same tensors with the same shapes",
                parent.name,
                second.name,
                serde_json::to_string(&parent.architecture).unwrap_or_default(),
                serde_json::to_string(&second.architecture).unwrap_or_default()
            ),
        ));
    }
    parents.push(second);
    Ok(Some(Adjustment::Interpolate { alpha: draft.alpha }))
}

fn check_patterns(draft: &JobDraft, tensors: &[TensorPlan], plan: &mut Plan) {
    if !draft.kind.inputs().patterns {
        return;
    }
    let trained = tensors.iter().filter(|tensor| tensor.trainable).count();
    let patterns = if draft.trainable.is_empty() {
        "(none given: all)".to_string()
    } else {
        draft.trainable.join(", ")
    };
    plan.passed(
        "trainable patterns",
        format!("{patterns}: {trained} of {} tensors train", tensors.len()),
    );
}

/// Every tensor taken from a parent has its origin's shape (the derivation refuses a
/// mismatch; this reports what was compared).
fn check_shapes(
    architecture: &Architecture,
    tensors: &[TensorPlan],
    parents: &[Model],
    plan: &mut Plan,
) {
    let shapes: HashMap<String, Vec<usize>> = architecture
        .parameters()
        .into_iter()
        .map(|tensor| (tensor.name, tensor.shape))
        .collect();
    let parent_shapes: Vec<HashMap<String, Vec<usize>>> = parents
        .iter()
        .map(|parent| {
            parent
                .architecture
                .parameters()
                .into_iter()
                .map(|tensor| (tensor.name, tensor.shape))
                .collect()
        })
        .collect();
    let mut compared = 0;
    for tensor in tensors {
        let Some(origin) = &tensor.origin else {
            continue;
        };
        let origin_shape = parent_shapes[origin.parent].get(&origin.tensor);
        if origin_shape != shapes.get(&tensor.name) {
            plan.refuse(
                "tensor shapes",
                Error::FailedPrecondition(format!(
                    "{} is {:?} but its origin {}'s {} is {:?}",
                    tensor.name,
                    shapes.get(&tensor.name),
                    parents[origin.parent].name,
                    origin.tensor,
                    origin_shape
                )),
            );
            return;
        }
        compared += 1;
    }
    let fresh = tensors.len() - compared;
    plan.passed(
        "tensor shapes",
        format!("{compared} tensors from parents have their origin's shape; {fresh} start fresh"),
    );
}

/// The dataset's rows must be the model's input, and its labels must fit the head.
fn check_data_fits(
    dataset: &Dataset,
    architecture: &Architecture,
    draft: &JobDraft,
    parents: &[Model],
    plan: &mut Plan,
) {
    let data = format!("dataset {:?}@{}", dataset.name, dataset.version);
    let input = match parents.first() {
        Some(parent) if !draft.kind.inputs().architecture => format!("parent {:?}", parent.name),
        _ => "the architecture".to_string(),
    };
    if architecture.is_language_model() || dataset.tokens.is_some() {
        return check_tokens_fit(dataset, architecture, &data, &input, plan);
    }
    let takes = architecture.input_features();
    if takes == u64::from(dataset.num_features) {
        plan.passed(
            "input shape",
            format!("{data} has {takes} float32 features per example, as {input} takes"),
        );
    } else {
        plan.refuse(
            "input shape",
            Error::FailedPrecondition(format!(
                "spec.dataset_id: {data} has {} features per example but {input} takes {takes}: \
                 use data of that shape, or another parent",
                dataset.num_features
            )),
        );
    }
    let head = architecture.num_classes();
    let head_name = if draft.kind.inputs().head {
        "the new head"
    } else {
        "the head"
    };
    let largest = dataset.num_classes - 1;
    if dataset.num_classes <= head {
        plan.passed(
            "label range",
            format!("{data} has labels up to {largest}; {head_name} has {head} outputs"),
        );
    } else {
        let fix = if draft.kind.inputs().head {
            format!("set num_classes to at least {}", dataset.num_classes)
        } else {
            format!(
                "transfer to a new head of at least {} outputs instead",
                dataset.num_classes
            )
        };
        plan.refuse(
            "label range",
            Error::FailedPrecondition(format!(
                "spec.dataset_id: {data} has labels up to {largest} but {head_name} has {head} \
                 outputs (labels 0..{}): {fix}",
                head - 1
            )),
        );
    }
}

/// The examples a worker holds in memory at once: a classification dataset whole, a
/// token dataset's two largest shards (it streams them).
fn examples_held(dataset: &Dataset) -> u64 {
    match &dataset.tokens {
        None => dataset.num_examples,
        Some(tokens) => {
            let mut sizes: Vec<u64> = tokens.shards.iter().map(|shard| shard.sequences).collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            sizes.iter().take(2).sum()
        }
    }
}

/// A language model trains on a token dataset: sequences no longer than the model's
/// positions, token ids inside its vocabulary.
fn check_tokens_fit(
    dataset: &Dataset,
    architecture: &Architecture,
    data: &str,
    input: &str,
    plan: &mut Plan,
) {
    match (architecture.is_language_model(), dataset.tokens.is_some()) {
        (true, true) => {}
        (true, false) => {
            return plan.refuse(
                "input shape",
                Error::FailedPrecondition(format!(
                    "spec.dataset_id: {data} is a classification dataset but {input} is a \
                     language model: register token shards (RegisterDataset with tokens) and \
                     train on those"
                )),
            );
        }
        (false, _) => {
            return plan.refuse(
                "input shape",
                Error::FailedPrecondition(format!(
                    "spec.dataset_id: {data} is a token dataset but {input} is no language \
                     model: train a llama or gpt2 architecture on it"
                )),
            );
        }
    }
    let (length, positions) = (dataset.num_features, architecture.input_features());
    if u64::from(length) <= positions {
        plan.passed(
            "input shape",
            format!("{data} has sequences of {length} tokens; {input} takes up to {positions}"),
        );
    } else {
        plan.refuse(
            "input shape",
            Error::FailedPrecondition(format!(
                "spec.dataset_id: {data} has sequences of {length} tokens but {input} takes at \
                 most {positions} (its maximum positions): cut the sequences, or use a model \
                 with more positions"
            )),
        );
    }
    let (vocabulary, head) = (dataset.num_classes, architecture.num_classes());
    if vocabulary <= head {
        plan.passed(
            "label range",
            format!("{data} has a vocabulary of {vocabulary}; the head has {head} outputs"),
        );
    } else {
        plan.refuse(
            "label range",
            Error::FailedPrecondition(format!(
                "spec.dataset_id: {data} has a vocabulary of {vocabulary} tokens but the head \
                 has {head} outputs: tokenise for this model's vocabulary, or transfer to a \
                 new head of {vocabulary}"
            )),
        );
    }
}

/// The shift from each parent's training data to the job's, where both have statistics.
async fn measure_shift(
    db: &Db,
    dataset: &Dataset,
    parents: &[Model],
    plan: &mut Plan,
) -> Result<Vec<DataShift>> {
    let mut shifts = Vec::new();
    for parent in parents {
        let reference = match &parent.dataset {
            Some(reference) if reference.role == "train" => reference,
            _ => {
                plan.passed(
                    "data shift",
                    format!(
                        "parent {:?} has no recorded training data to compare with",
                        parent.name
                    ),
                );
                continue;
            }
        };
        let reference_dataset = db.dataset(reference.id).await?;
        let (Some(before), Some(now)) = (&reference_dataset.statistics, &dataset.statistics) else {
            plan.passed(
                "data shift",
                "not measured: a dataset has no statistics (it predates them, or they do not parse)"
                    .into(),
            );
            continue;
        };
        let shift = Shift::between(before, now);
        plan.passed(
            "data shift",
            format!(
                "{} from {:?}'s training data {:?}@{}: mean shift {:.3} σ (largest {:.3} σ at \
                 feature {}), deviation ratio {:.3}, label distance {:.3}{}",
                shift.verdict(),
                parent.name,
                reference.name,
                reference.version,
                shift.mean_shift,
                shift.max_mean_shift,
                shift.max_mean_shift_feature,
                shift.std_ratio,
                shift.label_distance,
                if shift.new_labels.is_empty() {
                    String::new()
                } else {
                    format!(", new labels {:?}", shift.new_labels)
                }
            ),
        );
        shifts.push(DataShift {
            parent_id: parent.id,
            parent_name: parent.name.clone(),
            reference_dataset: reference.id,
            reference_name: reference.name.clone(),
            reference_version: reference.version,
            shift,
        });
    }
    Ok(shifts)
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Invalid::new(field, reason).into()
}
