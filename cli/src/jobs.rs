use crate::output::{Output, out, outln};
use crate::{models, plan};
use clap::{Args, Subcommand};
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::job_service_client::JobServiceClient;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Submit(Submit),
    /// Show what a job would do, without queueing it: each tensor's status and origin,
    /// parameter counts, every check, the memory it needs, the data shift, and every
    /// reason it would be refused (exit status 1 if any). Takes any submit command.
    Plan {
        #[command(subcommand)]
        job: Submit,
    },
    /// Show one job.
    Get { job_id: String },
    /// List jobs, optionally in one state (queued, leased, running, succeeded, failed, cancelled).
    List {
        #[arg(long)]
        state: Option<String>,
    },
    /// Cancel a queued or running job.
    Cancel { job_id: String },
    /// Follow a job's progress until it ends.
    Watch { job_id: String },
}

/// The commands that make a job.
#[derive(Subcommand)]
pub enum Submit {
    /// Train a new root model from scratch.
    Train {
        #[command(flatten)]
        common: Common,
        /// The architecture as JSON, or a JSON file.
        #[arg(long)]
        arch: String,
    },
    /// Fine-tune a parent: train only the tensors matching --trainable (default all).
    Finetune {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        parent: String,
        /// A tensor-name pattern such as `fc.*`; repeat for more.
        #[arg(long)]
        trainable: Vec<String>,
        /// Blend with the parent after training: θp + α(θft − θp), α in (0, 1) (WiSE-FT).
        #[arg(long, default_value_t = 0.0)]
        wise_ft: f64,
    },
    /// Transfer a parent to a new task: frozen backbone, new head with --num-classes outputs.
    Transfer {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        parent: String,
        #[arg(long)]
        num_classes: u32,
        /// Also train the last N blocks of the backbone.
        #[arg(long, default_value_t = 0)]
        unfreeze_blocks: u32,
    },
    /// Take a parent's weights as they are, interpolated with a second model, or scaled.
    Direct {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        parent: String,
        /// A second model of the same architecture to interpolate with: θa + α(θb − θa).
        #[arg(long, requires = "alpha")]
        with: Option<String>,
        #[arg(long, default_value_t = 0.0)]
        alpha: f64,
        /// Multiply every tensor by this factor.
        #[arg(long, default_value_t = 0.0)]
        scale: f64,
    },
    /// Assemble a model from modules of several parents.
    Compose {
        #[command(flatten)]
        common: Common,
        /// The new model's architecture as JSON, or a JSON file.
        #[arg(long)]
        arch: String,
        /// TARGET=PARENT:SOURCE, such as `hidden.0=base:hidden.0`; repeat for more.
        #[arg(long = "module", required = true)]
        modules: Vec<String>,
        /// Patterns of the tensors to train (glue, head); tensors no module covers must match.
        #[arg(long)]
        trainable: Vec<String>,
    },
    /// Run a recipe on new inputs: its parents (in the recipe's slot order) and a dataset.
    FromRecipe {
        /// The new model's name.
        name: String,
        /// The recipe: name (its latest version), name@version or id.
        #[arg(long)]
        recipe: String,
        /// A parent model (name or id); repeat in the recipe's slot order.
        #[arg(long = "parent")]
        parents: Vec<String>,
        /// The dataset: its id, name@version, or name for its latest version.
        #[arg(long)]
        dataset: Option<String>,
        /// A JSON merge patch applied to the recipe for this job only, such as
        /// '{"hyperparameters": {"epochs": 3}}'.
        #[arg(long = "override")]
        overrides: Option<String>,
        #[command(flatten)]
        placement: Placement,
    },
}

/// The new model's name, its data and how it trains.
#[derive(Args)]
pub struct Common {
    /// The new model's name.
    name: String,
    /// The dataset: its id, name@version, or name for its latest version (optional for
    /// direct jobs, which only score on it).
    #[arg(long)]
    dataset: Option<String>,
    // The coordinator fills in what is left out and refuses what is out of range (0
    // included): these are sent as given, and left unset when not given.
    /// Default 10.
    #[arg(long)]
    epochs: Option<u32>,
    /// Default 64.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Default 0.001 (adam) or 0.05 (sgd).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// `adam` (default) or `sgd`.
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The held-out share the final accuracy is measured on; default 0.2.
    #[arg(long)]
    holdout_fraction: Option<f64>,
    /// `fp32` (default), `bf16`, `bf16-mixed` or `fp16-mixed`: a language model's
    /// arithmetic (mixed: float32 master weights).
    #[arg(long)]
    precision: Option<String>,
    #[command(flatten)]
    placement: Placement,
}

/// Where and how the job is queued (`plan` takes the requirements, and shows the gang of
/// a job on several ranks).
#[derive(Args)]
pub struct Placement {
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Makes the submission idempotent: the same id returns the same job.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Run only on a worker with this device kind: `cpu` or `cuda`.
    #[arg(long, default_value = "")]
    device: String,
    /// Run only on a worker with a device of at least this many bytes of memory.
    #[arg(long, default_value_t = 0)]
    min_device_memory: u64,
    /// Run only on a worker with this label, as key=value; repeat for more.
    #[arg(long = "require-label")]
    require_labels: Vec<String>,
    /// How many attempts may fail (retryable errors, lost workers) before the job does;
    /// default 3.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Train on this many ranks at once (data parallel: the batch is split between
    /// them), each a worker slot that meets the requirements above; default 1.
    #[arg(long)]
    ranks: Option<u32>,
    /// Elastic: a retry may run with as few as this many ranks when no more are free
    /// (keeping the global batch); default: every rank.
    #[arg(long)]
    min_ranks: Option<u32>,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
}

impl Placement {
    /// What a worker must offer, as the flags say.
    fn requirements(&self) -> anyhow::Result<pb::Requirements> {
        Ok(pb::Requirements {
            device: self.device.clone(),
            min_device_memory_bytes: self.min_device_memory,
            labels: self
                .require_labels
                .iter()
                .map(|label| {
                    label
                        .split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            crate::usage(format!("--require-label {label:?}: write key=value"))
                        })
                })
                .collect::<anyhow::Result<_>>()?,
            world_size: self.ranks,
            min_ranks: self.min_ranks,
        })
    }
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = JobServiceClient::new(channel.clone());
    match command {
        Command::Submit(job) => submit(&channel, job, output).await,
        Command::Plan { job } => {
            let (spec, placement) = spec_of(&channel, job).await?;
            let plan = client
                .plan_job(pb::PlanJobRequest {
                    spec: Some(spec),
                    requirements: Some(placement.requirements()?),
                })
                .await?
                .into_inner()
                .plan
                .unwrap_or_default();
            output.print(&plan, || plan::print(&plan))?;
            if !plan.refusals.is_empty() {
                anyhow::bail!(
                    "the coordinator would refuse this job: {} reason(s) above",
                    plan.refusals.len()
                );
            }
            Ok(())
        }
        Command::Get { job_id } => {
            let job = client
                .get_job(pb::GetJobRequest { job_id })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            output.print(&job, || {
                print_job(&job);
                print_placement(&job);
            })
        }
        Command::List { state } => {
            let state = match state.as_deref() {
                None => pb::JobState::Unspecified,
                Some(name) => pb::JobState::from_str_name(&format!("JOB_STATE_{}", name.to_uppercase()))
                    .ok_or_else(|| crate::usage(format!("--state {name:?}: use queued, leased, running, succeeded, failed or cancelled")))?,
            };
            let listed = client
                .list_jobs(pb::ListJobsRequest {
                    state: state as i32,
                })
                .await?
                .into_inner();
            output.print(&listed, || listed.jobs.iter().for_each(print_job))
        }
        Command::Cancel { job_id } => {
            let job = client
                .cancel_job(pb::CancelJobRequest { job_id })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            output.print(&job, || print_job(&job))
        }
        Command::Watch { job_id } => watch(&mut client, &job_id, output).await,
    }
}

/// The spec a submit command describes, and where to queue it.
async fn spec_of(channel: &Connection, job: Submit) -> anyhow::Result<(pb::JobSpec, Placement)> {
    let (common, spec) = match job {
        Submit::FromRecipe {
            name,
            recipe,
            parents,
            dataset,
            overrides,
            placement,
        } => {
            let mut parent_ids = Vec::new();
            for parent in &parents {
                parent_ids.push(model_id(channel, parent).await?);
            }
            let overrides = match overrides {
                Some(text) => crate::recipes::read_json("--override", &text)?,
                None => String::new(),
            };
            let spec = pb::JobSpec {
                model_name: name,
                recipe,
                parents: parent_ids,
                recipe_overrides_json: overrides,
                dataset_id: dataset.unwrap_or_default(),
                ..Default::default()
            };
            return Ok((spec, placement));
        }
        Submit::Train { common, arch } => {
            let architecture = models::parse_architecture(&arch)?;
            let spec = pb::JobSpec {
                kind: pb::JobKind::Train as i32,
                architecture: Some((&architecture).into()),
                ..Default::default()
            };
            (common, spec)
        }
        Submit::Finetune {
            common,
            parent,
            trainable,
            wise_ft,
        } => {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Finetune as i32,
                parent_id: model_id(channel, &parent).await?,
                trainable,
                alpha: wise_ft,
                ..Default::default()
            };
            (common, spec)
        }
        Submit::Transfer {
            common,
            parent,
            num_classes,
            unfreeze_blocks,
        } => {
            let spec = pb::JobSpec {
                kind: pb::JobKind::Transfer as i32,
                parent_id: model_id(channel, &parent).await?,
                num_classes,
                unfreeze_blocks,
                ..Default::default()
            };
            (common, spec)
        }
        Submit::Direct {
            common,
            parent,
            with,
            alpha,
            scale,
        } => {
            let second_parent_id = match with {
                Some(model) => model_id(channel, &model).await?,
                None => String::new(),
            };
            let spec = pb::JobSpec {
                kind: pb::JobKind::Direct as i32,
                parent_id: model_id(channel, &parent).await?,
                second_parent_id,
                alpha,
                scale,
                ..Default::default()
            };
            (common, spec)
        }
        Submit::Compose {
            common,
            arch,
            modules,
            trainable,
        } => {
            let architecture = models::parse_architecture(&arch)?;
            let mut mappings = Vec::new();
            for module in &modules {
                let parsed = module.split_once('=').and_then(|(target, source)| {
                    let (parent, prefix) = source.split_once(':')?;
                    Some((target, parent, prefix))
                });
                let Some((target, parent, prefix)) = parsed else {
                    return Err(crate::usage(format!(
                        "--module {module:?}: write TARGET=PARENT:SOURCE, such as hidden.0=base:hidden.0"
                    )));
                };
                mappings.push(pb::ModuleMapping {
                    target_prefix: target.to_string(),
                    parent_id: model_id(channel, parent).await?,
                    source_prefix: prefix.to_string(),
                });
            }
            let spec = pb::JobSpec {
                kind: pb::JobKind::Compose as i32,
                architecture: Some((&architecture).into()),
                modules: mappings,
                trainable,
                ..Default::default()
            };
            (common, spec)
        }
    };
    let optimizer = match common.optimizer.as_deref() {
        None => pb::Optimizer::Unspecified,
        Some("adam") => pb::Optimizer::Adam,
        Some("sgd") => pb::Optimizer::Sgd,
        Some(other) => {
            return Err(crate::usage(format!(
                "--optimizer {other:?}: use adam or sgd"
            )));
        }
    };
    let precision = match common.precision.as_deref() {
        None => pb::Precision::Unspecified,
        Some(text) => match heirloom_core::Precision::parse(text) {
            Some(precision) => pb::Precision::from(precision),
            None => {
                return Err(crate::usage(format!(
                    "--precision {text:?}: use fp32, bf16, bf16-mixed or fp16-mixed"
                )));
            }
        },
    };
    let spec = pb::JobSpec {
        model_name: common.name.clone(),
        // The coordinator resolves the reference, and says what to fix in one it cannot.
        dataset_id: common.dataset.unwrap_or_default(),
        hyperparameters: Some(pb::Hyperparameters {
            epochs: common.epochs,
            batch_size: common.batch_size,
            learning_rate: common.learning_rate,
            optimizer: optimizer as i32,
            seed: common.seed,
            holdout_fraction: common.holdout_fraction,
            precision: precision as i32,
        }),
        ..spec
    };
    Ok((spec, common.placement))
}

async fn submit(channel: &Connection, job: Submit, output: Output) -> anyhow::Result<()> {
    let mut client = JobServiceClient::new(channel.clone());
    let (spec, placement) = spec_of(channel, job).await?;
    let name = spec.model_name.clone();
    let job = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec),
            priority: placement.priority,
            requirements: Some(placement.requirements()?),
            request_id: placement.request_id,
            max_attempts: placement.max_attempts,
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    output.print_line(&job, || outln!("submitted job {} for model {name}", job.id))?;
    if placement.watch {
        watch(&mut client, &job.id, output).await?;
    }
    Ok(())
}

async fn model_id(channel: &Connection, model: &str) -> anyhow::Result<String> {
    let mut client = ModelServiceClient::new(channel.clone());
    Ok(models::get(&mut client, model).await?.id)
}

fn state_name(state: pb::JobState) -> String {
    state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

fn print_job(job: &pb::Job) {
    let spec = job.spec.clone().unwrap_or_default();
    let kind = crate::tree::kind(spec.kind());
    out!(
        "{}  {:<9} {:<10} model {}",
        job.id,
        kind,
        state_name(job.state()),
        spec.model_name
    );
    if !job.model_id.is_empty() {
        out!(" ({})", job.model_id);
    }
    if let Some(recipe) = &job.recipe {
        out!("  recipe {}@{}", recipe.name, recipe.version);
    }
    if !job.error.is_empty() {
        out!("  error: {}", job.error);
    }
    outln!();
    for shift in &job.data_shift {
        out!("  ");
        plan::print_shift(shift);
    }
    for attempt in &job.attempts {
        out!(
            "  attempt {} on worker {}: {} (started {}",
            attempt.attempt,
            attempt.worker_id,
            attempt.outcome,
            attempt.started_at
        );
        if !attempt.ended_at.is_empty() {
            out!(", ended {}", attempt.ended_at);
        }
        out!(")");
        if !attempt.error.is_empty() {
            out!(" {}", attempt.error);
        }
        outln!();
        if attempt.world_size > 1 {
            let ranks: Vec<String> = attempt
                .ranks
                .iter()
                .map(|rank| format!("{} on {} ({})", rank.rank, rank.worker_id, rank.device))
                .collect();
            out!(
                "    {} ranks over {}: {}",
                attempt.world_size,
                attempt.backend,
                ranks.join(", ")
            );
            if let Some(rank) = attempt.failed_rank {
                out!("; rank {rank} was lost");
            }
            outln!();
        }
    }
}

/// Where a job may run and why it has not yet: its priority, what a worker must offer,
/// and (GetJob fills it for a queued job) the reason it waits.
fn print_placement(job: &pb::Job) {
    let requirements = job.requirements.clone().unwrap_or_default();
    let mut needs = Vec::new();
    if !requirements.device.is_empty() {
        needs.push(format!("device {}", requirements.device));
    }
    if requirements.min_device_memory_bytes > 0 {
        needs.push(format!(
            "at least {} of device memory",
            heirloom_client::display::bytes(requirements.min_device_memory_bytes)
        ));
    }
    let mut labels: Vec<_> = requirements.labels.iter().collect();
    labels.sort();
    needs.extend(
        labels
            .iter()
            .map(|(key, value)| format!("label {key}={value}")),
    );
    let needs = if needs.is_empty() {
        "any worker".to_string()
    } else {
        needs.join(", ")
    };
    let ranks = match (requirements.world_size(), requirements.min_ranks()) {
        (0 | 1, _) => String::new(),
        (world, min) if min == 0 || min == world => format!("{world} ranks, each "),
        (world, min) => format!("{world} ranks (at least {min}), each "),
    };
    outln!(
        "  priority {}; runs {ranks}on {needs}; up to {} attempts",
        job.priority,
        job.max_attempts
    );
    if !job.waiting_reason.is_empty() {
        outln!("  waiting: {}", job.waiting_reason);
    }
}

/// Which progress reports get a line of their own when no bar is drawn: one line per
/// finished epoch, thinned to about five for long jobs, the last epoch always. A worker
/// reports `epoch` as the epochs finished, so every report during epoch n + 1 repeats
/// epoch n: only the first report of an epoch (the one sent as it ends, with the
/// epoch's loss and accuracy) is new. A retried attempt that goes back to an epoch
/// already printed prints nothing until it passes it.
#[derive(Debug, Default)]
struct EpochLines {
    printed: Option<u32>,
}

impl EpochLines {
    fn admit(&mut self, progress: &pb::Progress) -> bool {
        let (epoch, epochs) = (progress.epoch, progress.epochs);
        let stride = (epochs / 5).max(1);
        // The first report at or past each multiple of the stride: reports carry the
        // latest value, so a given epoch's own report may never come.
        let printed = self.printed.unwrap_or(0);
        let due = epoch > 0 && (epoch / stride > printed / stride || epoch == epochs);
        let new = self.printed.is_none_or(|printed| epoch > printed);
        if due && new {
            self.printed = Some(epoch);
        }
        due && new
    }
}

/// Prints state changes and shows training progress until the job ends; fails when the
/// job does not succeed.
async fn watch(
    client: &mut JobServiceClient<Connection>,
    job_id: &str,
    output: Output,
) -> anyhow::Result<()> {
    let mut events = client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    let interactive = output == Output::Text && std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    let mut lines = EpochLines::default();
    let mut final_state = pb::JobState::Unspecified;
    while let Some(response) = events.message().await? {
        let Some(event) = response.event else {
            continue;
        };
        if output == Output::Json {
            if let Some(pb::job_event::Event::State(state)) = event.event {
                final_state = pb::JobState::try_from(state).unwrap_or_default();
            }
            output.print_line(&event, || {})?;
            continue;
        }
        match event.event {
            Some(pb::job_event::Event::State(state)) => {
                let state = pb::JobState::try_from(state).unwrap_or_default();
                let line = match event.message.as_str() {
                    "" => format!("  {}", state_name(state)),
                    message => format!("  {}: {message}", state_name(state)),
                };
                bar.println(&line);
                if !interactive {
                    outln!("{line}");
                }
                final_state = state;
            }
            // A report before training has a plan (no epochs yet) says nothing.
            Some(pb::job_event::Event::Progress(progress)) if progress.epochs > 0 => {
                if interactive && bar.is_hidden() && progress.total_steps > 0 {
                    bar.set_length(progress.total_steps);
                    bar.set_style(
                        ProgressStyle::with_template("  {bar:30} {pos}/{len} steps  {msg}")
                            .expect("valid template"),
                    );
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                let message = format!(
                    "epoch {}/{}  loss {:.4}  accuracy {:.3}  {:.0} steps/s",
                    progress.epoch,
                    progress.epochs,
                    progress.loss,
                    progress.accuracy,
                    progress.steps_per_second
                );
                if interactive {
                    bar.set_position(progress.step);
                    bar.set_message(message);
                } else if lines.admit(&progress) {
                    outln!("  {message}");
                }
            }
            Some(pb::job_event::Event::Progress(_)) | None => {}
        }
    }
    bar.finish_and_clear();
    match final_state {
        pb::JobState::Succeeded => Ok(()),
        other => {
            let job = client
                .get_job(pb::GetJobRequest {
                    job_id: job_id.to_string(),
                })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            anyhow::bail!("job {job_id} ended {}: {}", state_name(other), job.error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reports` (epoch, epochs) in order; `expected` are the epochs that get a line.
    fn check(reports: &[(u32, u32)], expected: &[u32]) {
        let mut lines = EpochLines::default();
        let printed: Vec<u32> = reports
            .iter()
            .map(|&(epoch, epochs)| pb::Progress {
                epoch,
                epochs,
                ..Default::default()
            })
            .filter(|progress| lines.admit(progress))
            .map(|progress| progress.epoch)
            .collect();
        assert_eq!(printed, expected, "{reports:?}");
    }

    #[test]
    fn each_epoch_gets_one_line() {
        // A 3-epoch job: the start, reports during each epoch, the end of each epoch.
        check(
            &[
                (0, 3),
                (0, 3),
                (0, 3),
                (1, 3),
                (1, 3),
                (1, 3),
                (2, 3),
                (2, 3),
                (3, 3),
            ],
            &[1, 2, 3],
        );
        // Only epoch ends: every one is new.
        check(&[(1, 2), (2, 2)], &[1, 2]);
        // Long jobs print about five lines, and always the last epoch.
        let ten: Vec<(u32, u32)> = (0..=10).flat_map(|e| [(e, 10), (e, 10)]).collect();
        check(&ten, &[2, 4, 6, 8, 10]);
        check(&[(7, 7)], &[7]);
        let twelve: Vec<(u32, u32)> = (0..=12).map(|e| (e, 12)).collect();
        check(&twelve, &[2, 4, 6, 8, 10, 12]);
    }

    #[test]
    fn reports_without_a_finished_epoch_get_none() {
        check(&[(0, 0), (0, 0)], &[]);
        check(&[(0, 5), (0, 5)], &[]);
    }

    #[test]
    fn an_epoch_whose_own_report_never_came_is_covered_by_the_next() {
        // Reports carry the latest value: 30 epochs, stride 6, epoch 18's report skipped.
        check(
            &[(6, 30), (12, 30), (17, 30), (19, 30), (24, 30), (30, 30)],
            &[6, 12, 19, 24, 30],
        );
    }

    #[test]
    fn a_retry_prints_only_epochs_past_those_printed() {
        // The first attempt finished epochs 1 and 2; the retry resumes inside epoch 2.
        check(
            &[(1, 4), (2, 4), (2, 4), (1, 4), (2, 4), (3, 4), (4, 4)],
            &[1, 2, 3, 4],
        );
    }
}
