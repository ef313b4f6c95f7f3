//! A job names its models and datasets the way GetModel and the CLI take them — an id, a
//! name, or a dataset's `name@version` (a bare name: the latest version) — in every field
//! that names one, and the spec it queues holds the ids they resolved to. A name that
//! names nothing is NOT_FOUND, a malformed one INVALID_ARGUMENT, each naming the field,
//! and neither writes anything. Its events, watched, come in the order the contract
//! promises.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use std::time::Duration;
use support::{Cluster, blobs, hyperparameters, import_model_at, mlp, refused};
use tonic::Code;

/// Two models of one architecture, `base` and `other`, and two versions of `digits`.
struct Fixture {
    base: pb::Model,
    other: pb::Model,
    digits_1: pb::Dataset,
    digits_2: pb::Dataset,
}

async fn fixture(cluster: &Cluster) -> Fixture {
    let import = |name: &'static str, fill: f32| {
        import_model_at(
            &cluster.channel,
            name,
            mlp(64, vec![16], 5),
            support::mlp_weights(64, 16, 5, [fill; 4]),
        )
    };
    let base = import("base", 0.01).await;
    let other = import("other", 0.02).await;
    let digits_1 = cluster.register_dataset("digits", blobs(0..5, 40, 1)).await;
    let digits_2 = cluster.register_dataset("digits", blobs(0..5, 40, 2)).await;
    assert_eq!((digits_1.version, digits_2.version), (1, 2));
    Fixture {
        base,
        other,
        digits_1,
        digits_2,
    }
}

fn finetune(name: &str, parent: &str, dataset: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Finetune as i32,
        model_name: name.into(),
        parent_id: parent.into(),
        dataset_id: dataset.into(),
        trainable: vec!["fc.*".into()],
        hyperparameters: hyperparameters(2, 0.01),
        ..Default::default()
    }
}

fn interpolate(name: &str, a: &str, b: &str, dataset: &str) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Direct as i32,
        model_name: name.into(),
        parent_id: a.into(),
        second_parent_id: b.into(),
        alpha: 0.5,
        dataset_id: dataset.into(),
        ..Default::default()
    }
}

fn compose(name: &str, hidden_from: &str, head_from: &str) -> pb::JobSpec {
    let module = |prefix: &str, parent: &str| pb::ModuleMapping {
        target_prefix: prefix.into(),
        parent_id: parent.into(),
        source_prefix: prefix.into(),
    };
    pb::JobSpec {
        kind: pb::JobKind::Compose as i32,
        model_name: name.into(),
        architecture: Some(mlp(64, vec![16], 5)),
        modules: vec![module("hidden.0", hidden_from), module("fc", head_from)],
        ..Default::default()
    }
}

fn from_recipe(name: &str, recipe: &str, parents: &[&str], dataset: &str) -> pb::JobSpec {
    pb::JobSpec {
        model_name: name.into(),
        recipe: recipe.into(),
        parents: parents.iter().map(|parent| parent.to_string()).collect(),
        dataset_id: dataset.into(),
        ..Default::default()
    }
}

async fn create_recipe(cluster: &Cluster, name: &str, body: &str) {
    cluster
        .recipes()
        .create_recipe(pb::CreateRecipeRequest {
            name: name.into(),
            body_json: body.into(),
            ..Default::default()
        })
        .await
        .expect("create the recipe");
}

async fn plan(cluster: &Cluster, spec: pb::JobSpec) -> Result<pb::JobPlan, tonic::Status> {
    let response = cluster
        .jobs()
        .plan_job(pb::PlanJobRequest {
            spec: Some(spec),
            requirements: None,
        })
        .await?;
    Ok(response.into_inner().plan.expect("a plan"))
}

/// The job's events after `after`, to the end of the stream.
async fn watch(cluster: &Cluster, job_id: &str, after: i64) -> Vec<pb::JobEvent> {
    let follow = async {
        let mut stream = cluster
            .jobs()
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
                after_sequence: after,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut events = Vec::new();
        while let Some(response) = stream.message().await.expect("the watch stream") {
            events.push(response.event.expect("an event"));
        }
        events
    };
    tokio::time::timeout(Duration::from_secs(300), follow)
        .await
        .expect("the job ends within 5 minutes")
}

fn state(event: &pb::JobEvent) -> Option<pb::JobState> {
    match event.event {
        Some(pb::job_event::Event::State(state)) => pb::JobState::try_from(state).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_versions_and_ids_resolve_alike_in_every_reference() {
    let cluster = Cluster::start().await;
    let Fixture {
        base,
        other,
        digits_1,
        digits_2,
    } = fixture(&cluster).await;
    create_recipe(
        &cluster,
        "head-tune",
        r#"{"kind": "finetune", "trainable": ["fc.*"], "hyperparameters": {"epochs": 1}}"#,
    )
    .await;

    // (spec, the parents and the dataset its queued spec must hold)
    let cases = [
        (
            finetune("by-name", "base", "digits"),
            vec![&base.id],
            &digits_2.id,
        ),
        (
            finetune("by-version", &base.id, "digits@1"),
            vec![&base.id],
            &digits_1.id,
        ),
        (
            finetune("by-id", "base", &digits_1.id),
            vec![&base.id],
            &digits_1.id,
        ),
        (
            interpolate("mixed", "base", "other", "digits@2"),
            vec![&base.id, &other.id],
            &digits_2.id,
        ),
        (
            from_recipe("from-recipe", "head-tune", &["other"], "digits@1"),
            vec![&other.id],
            &digits_1.id,
        ),
    ];
    let mut jobs = Vec::new();
    for (spec, parents, dataset) in cases {
        let name = spec.model_name.clone();
        let planned = plan(&cluster, spec.clone()).await.expect("plan");
        assert!(
            planned.refusals.is_empty(),
            "{name}: {:?}",
            planned.refusals
        );
        let planned = planned.spec.expect("a planned spec");
        let job = cluster.submit(spec).await;
        let queued = job.spec.clone().expect("a spec");
        for spec in [&planned, &queued] {
            assert_eq!(&spec.dataset_id, dataset, "{name}: the dataset's id");
            assert_eq!(
                spec.parents.iter().collect::<Vec<_>>(),
                parents,
                "{name}: the parents' ids"
            );
        }
        let named: Vec<&String> = [&queued.parent_id, &queued.second_parent_id]
            .into_iter()
            .filter(|id| !id.is_empty())
            .collect();
        assert_eq!(
            named, parents,
            "{name}: parent_id and second_parent_id are ids"
        );
        assert_eq!(
            cluster.job(&job.id).await.spec,
            job.spec,
            "{name}: GetJob shows the ids"
        );
        jobs.push(job);
    }

    // A compose job names its modules' parents the same ways.
    let composed = cluster.submit(compose("composed", "base", &other.id)).await;
    let modules: Vec<String> = composed
        .spec
        .as_ref()
        .unwrap()
        .modules
        .iter()
        .map(|module| module.parent_id.clone())
        .collect();
    assert_eq!(modules, [base.id.clone(), other.id.clone()]);
    jobs.push(composed);

    // Each runs on the models and data it resolved to, and records them in its lineage.
    for job in &jobs {
        let (_, done) = cluster.wait(&job.id).await;
        assert_eq!(done.state(), pb::JobState::Succeeded, "{}", done.error);
    }
    let by_version = cluster.model("by-version").await;
    assert_eq!(by_version.parents[0].parent_id, base.id);
    assert_eq!(by_version.dataset_id, digits_1.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_references_are_refused_naming_the_field() {
    let cluster = Cluster::coordinator_only().await;
    let Fixture { base, .. } = fixture(&cluster).await;
    create_recipe(&cluster, "halfway", r#"{"kind": "direct", "alpha": 0.5}"#).await;

    let not_found = [
        (
            finetune("a", "nobody", "digits"),
            "spec.parent_id: no model is named \"nobody\"",
        ),
        (
            finetune("a", "base", "digits@7"),
            "spec.dataset_id: no dataset is \"digits@7\"",
        ),
        (
            finetune("a", "base", "nothing"),
            "spec.dataset_id: no dataset is named \"nothing\"",
        ),
        (
            interpolate("a", "base", "nobody", ""),
            "spec.second_parent_id: no model is named \"nobody\"",
        ),
        (
            compose("a", "base", "nobody"),
            "spec.modules[1].parent_id: no model is named \"nobody\"",
        ),
        (
            from_recipe("a", "halfway", &["base", "nobody"], ""),
            "spec.parents[1]: no model is named \"nobody\"",
        ),
    ];
    for (spec, message) in not_found {
        refused(
            &cluster,
            cluster.try_submit(spec.clone()),
            Code::NotFound,
            message,
        )
        .await;
        // PlanJob shows the same refusal, and writes nothing either.
        let before = cluster.row_counts().await;
        let planned = plan(&cluster, spec).await.expect("a plan with refusals");
        assert!(
            planned
                .refusals
                .iter()
                .any(|r| r.code == "NOT_FOUND" && r.message.contains(message)),
            "{message}: {:?}",
            planned.refusals
        );
        assert_eq!(cluster.row_counts().await, before);
    }

    let long = "a".repeat(600);
    let malformed = [
        (finetune("a", "base", "digits@x"), "spec.dataset_id"),
        (finetune("a", "base", "digits@"), "spec.dataset_id"),
        (finetune("a", "base@1", "digits"), "spec.parent_id"),
        (finetune("a", &long, "digits"), "spec.parent_id"),
        (finetune("a", "has space", "digits"), "spec.parent_id"),
        (interpolate("a", "base", "@1", ""), "spec.second_parent_id"),
        (compose("a", "base", "a b"), "spec.modules[1].parent_id"),
        (
            from_recipe("a", "halfway", &["base", "x y"], ""),
            "spec.parents[1]",
        ),
    ];
    for (spec, field) in malformed {
        refused(
            &cluster,
            cluster.try_submit(spec.clone()),
            Code::InvalidArgument,
            field,
        )
        .await;
        refused(&cluster, plan(&cluster, spec), Code::InvalidArgument, field).await;
    }
    // Nothing was queued under any of those names; the references that do resolve still
    // plan.
    let planned = plan(&cluster, finetune("a", &base.name, "digits@2"))
        .await
        .unwrap();
    assert!(planned.refusals.is_empty(), "{:?}", planned.refusals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_job_s_events_increase_and_say_something() {
    let cluster = Cluster::start().await;
    fixture(&cluster).await;
    let job = cluster.submit(finetune("watched", "base", "digits")).await;
    let events = watch(&cluster, &job.id, 0).await;

    let sequences: Vec<i64> = events.iter().map(|event| event.sequence).collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "sequences increase strictly: {sequences:?}"
    );
    let states: Vec<pb::JobState> = events.iter().filter_map(state).collect();
    assert_eq!(
        states,
        [
            pb::JobState::Queued,
            pb::JobState::Leased,
            pb::JobState::Running,
            pb::JobState::Succeeded
        ]
    );
    assert_eq!(
        events.last().and_then(state),
        Some(pb::JobState::Succeeded),
        "the stream ends after the final state"
    );
    let progress: Vec<&pb::Progress> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(pb::job_event::Event::Progress(progress)) => Some(progress),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty(), "a training job reports progress");
    for progress in &progress {
        assert!(
            progress.epochs == 2 && progress.total_steps > 0,
            "every progress event says something: {progress:?}"
        );
    }

    // Resuming after any event gives exactly the ones after it; after the last, none.
    for (index, event) in events.iter().enumerate() {
        let rest: Vec<i64> = watch(&cluster, &job.id, event.sequence)
            .await
            .iter()
            .map(|event| event.sequence)
            .collect();
        assert_eq!(rest, sequences[index + 1..], "after {}", event.sequence);
    }
}
