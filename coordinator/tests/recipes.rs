//! Recipes and plans against a real coordinator, PostgreSQL and worker: deriving and
//! diffing recipes, models traced by recipe, plans that match what jobs then do, and
//! data that does not fit refused before anything is queued.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, hyperparameters, mlp, refused};
use tonic::Code;

/// A 64-feature, 5-class base model trained on `data`.
async fn base_model(cluster: &Cluster, name: &str, dataset: &pb::Dataset) -> pb::Model {
    let job = cluster
        .submit(pb::JobSpec {
            kind: pb::JobKind::Train as i32,
            model_name: name.into(),
            dataset_id: dataset.id.clone(),
            architecture: Some(mlp(64, vec![32], 5)),
            hyperparameters: hyperparameters(2, 0.01),
            ..Default::default()
        })
        .await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    cluster.model(&job.model_id).await
}

fn from_recipe(name: &str, recipe: &str, parents: &[&str], dataset: &str) -> pb::JobSpec {
    pb::JobSpec {
        model_name: name.into(),
        recipe: recipe.into(),
        parents: parents.iter().map(|id| id.to_string()).collect(),
        dataset_id: dataset.into(),
        ..Default::default()
    }
}

async fn create(cluster: &Cluster, name: &str, body: &str) -> Result<pb::Recipe, tonic::Status> {
    cluster
        .recipes()
        .create_recipe(pb::CreateRecipeRequest {
            name: name.into(),
            body_json: body.into(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().recipe.unwrap())
}

async fn derive(
    cluster: &Cluster,
    base: &str,
    patch: &str,
    name: &str,
) -> Result<pb::Recipe, tonic::Status> {
    cluster
        .recipes()
        .derive_recipe(pb::DeriveRecipeRequest {
            base: base.into(),
            patch_json: patch.into(),
            name: name.into(),
        })
        .await
        .map(|response| response.into_inner().recipe.unwrap())
}

async fn plan(cluster: &Cluster, spec: pb::JobSpec) -> pb::JobPlan {
    cluster
        .jobs()
        .plan_job(pb::PlanJobRequest {
            spec: Some(spec),
            requirements: None,
        })
        .await
        .expect("plan")
        .into_inner()
        .plan
        .unwrap()
}

async fn made_with(cluster: &Cluster, recipe: &str, exact: bool) -> Vec<(String, u32)> {
    let listed = cluster
        .recipes()
        .list_recipe_models(pb::ListRecipeModelsRequest {
            recipe: recipe.into(),
            exact,
        })
        .await
        .unwrap()
        .into_inner();
    let mut models: Vec<(String, u32)> = listed
        .models
        .into_iter()
        .map(|made| (made.model.unwrap().name, made.depth))
        .collect();
    models.sort();
    models
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_derive_diff_and_trace_the_models_made_with_them() {
    let cluster = Cluster::start().await;
    let old_data = cluster.register_dataset("old", blobs(0..5, 40, 1)).await;
    let new_data = cluster.register_dataset("new", blobs(0..5, 40, 2)).await;
    let base = base_model(&cluster, "base", &old_data).await;

    let v1 = create(
        &cluster,
        "head-tune",
        r#"{"kind": "finetune", "trainable": ["fc.*"],
            "hyperparameters": {"epochs": 2, "learning_rate": 0.01, "seed": 3}}"#,
    )
    .await
    .unwrap();
    assert_eq!((v1.name.as_str(), v1.version), ("head-tune", 1));
    let body = json(&v1.body_json);
    assert_eq!(
        body["hyperparameters"]["batch_size"], 64,
        "defaults filled in"
    );
    assert_eq!(body["hyperparameters"]["optimizer"], "adam");
    assert_eq!(body["hyperparameters"]["holdout_fraction"], 0.2);

    // Two models from one recipe; the second with a one-off override.
    let one = cluster
        .submit(from_recipe(
            "tuned-1",
            "head-tune",
            &[&base.id],
            &new_data.id,
        ))
        .await;
    let two = cluster
        .submit(pb::JobSpec {
            recipe_overrides_json: r#"{"hyperparameters": {"epochs": 1}}"#.into(),
            ..from_recipe("tuned-2", "head-tune@1", &[&base.id], &new_data.id)
        })
        .await;

    let v2 = derive(
        &cluster,
        "head-tune",
        r#"{"trainable": ["hidden.0.*", "fc.*"], "hyperparameters": {"learning_rate": 0.005}}"#,
        "",
    )
    .await
    .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.derived_from.as_ref().unwrap().id, v1.id);
    assert_eq!(
        json(&v2.patch_json),
        json(
            r#"{"trainable": ["hidden.0.*", "fc.*"], "hyperparameters": {"learning_rate": 0.005}}"#
        )
    );
    let diff = cluster
        .recipes()
        .diff_recipes(pb::DiffRecipesRequest {
            a: "head-tune@1".into(),
            b: "head-tune@2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = diff.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["hyperparameters.learning_rate", "trainable"]);
    assert_eq!(diff.changes[0].a_json, "0.01");
    assert_eq!(diff.changes[0].b_json, "0.005");
    // A derived recipe under a new name starts at version 1 and still records its parent.
    let sgd = derive(
        &cluster,
        "head-tune@2",
        r#"{"hyperparameters": {"optimizer": "sgd"}}"#,
        "head-tune-sgd",
    )
    .await
    .unwrap();
    assert_eq!((sgd.name.as_str(), sgd.version), ("head-tune-sgd", 1));
    assert_eq!(sgd.derived_from.unwrap().id, v2.id);

    let three = cluster
        .submit(from_recipe(
            "tuned-3",
            "head-tune",
            &[&base.id],
            &new_data.id,
        ))
        .await;
    for job in [&one, &two, &three] {
        let (_, job) = cluster.wait(&job.id).await;
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    }
    let (one, two, three) = (
        cluster.job(&one.id).await,
        cluster.job(&two.id).await,
        cluster.job(&three.id).await,
    );
    assert_eq!(one.recipe.as_ref().unwrap().version, 1);
    assert_eq!(
        three.recipe.as_ref().unwrap().version,
        2,
        "a name means its latest version"
    );
    let two_spec = two.spec.unwrap();
    assert_eq!(
        two_spec.hyperparameters.unwrap().epochs,
        Some(1),
        "the override ran"
    );
    assert_eq!(
        json(&two_spec.recipe_overrides_json),
        json(r#"{"hyperparameters": {"epochs": 1}}"#)
    );
    assert_eq!(
        cluster.model("tuned-3").await.recipe.unwrap().id,
        v2.id,
        "the model records the recipe version"
    );
    // What each version trains is what the models' provenance says trained.
    let status = |tensors: &std::collections::BTreeMap<String, pb::TensorProvenance>,
                  name: &str| { tensors[name].status() };
    let tuned_1 = cluster.tensors_of("tuned-1").await;
    let tuned_3 = cluster.tensors_of("tuned-3").await;
    assert_eq!(
        status(&tuned_1, "hidden.0.weight"),
        pb::TensorStatus::Inherited
    );
    assert_eq!(status(&tuned_1, "fc.weight"), pb::TensorStatus::Trained);
    assert_eq!(
        status(&tuned_3, "hidden.0.weight"),
        pb::TensorStatus::Trained
    );

    // Lineage by recipe: the version asked for and every one derived from it.
    assert_eq!(
        made_with(&cluster, "head-tune@1", false).await,
        [
            ("tuned-1".into(), 0),
            ("tuned-2".into(), 0),
            ("tuned-3".into(), 1)
        ]
    );
    assert_eq!(
        made_with(&cluster, "head-tune", false).await,
        [
            ("tuned-1".into(), 0),
            ("tuned-2".into(), 0),
            ("tuned-3".into(), 1)
        ],
        "a bare name means every version of it"
    );
    assert_eq!(
        made_with(&cluster, "head-tune@1", true).await,
        [("tuned-1".into(), 0), ("tuned-2".into(), 0)]
    );
    assert_eq!(
        made_with(&cluster, "head-tune@2", false).await,
        [("tuned-3".into(), 0)]
    );

    // The recipe that made a model is the one its job ran.
    let taken = cluster
        .recipes()
        .create_recipe(pb::CreateRecipeRequest {
            name: "from-tuned-3".into(),
            from_model: "tuned-3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .recipe
        .unwrap();
    assert_eq!(json(&taken.body_json), json(&v2.body_json));
    assert_eq!(taken.source_model_name, "tuned-3");
    let trained = cluster
        .recipes()
        .create_recipe(pb::CreateRecipeRequest {
            name: "from-base".into(),
            from_job: base.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .recipe
        .unwrap();
    let trained = json(&trained.body_json);
    assert_eq!(trained["kind"], "train");
    assert_eq!(trained["architecture"]["mlp"]["hidden"], json("[32]"));

    // Bad recipes and bad uses of them: refused, naming what to fix, nothing written.
    refused(
        &cluster,
        create(&cluster, "typo", r#"{"kind": "finetune", "epochs": 2}"#),
        Code::InvalidArgument,
        "unknown field `epochs`",
    )
    .await;
    refused(
        &cluster,
        cluster.recipes().create_recipe(pb::CreateRecipeRequest {
            name: "two-sources".into(),
            body_json: r#"{"kind": "finetune"}"#.into(),
            from_model: "base".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        "give exactly one of body_json",
    )
    .await;
    refused(
        &cluster,
        create(&cluster, "head-tune", r#"{"kind": "finetune"}"#),
        Code::AlreadyExists,
        "derive a new version",
    )
    .await;
    refused(
        &cluster,
        create(&cluster, "no-head", r#"{"kind": "transfer"}"#),
        Code::InvalidArgument,
        "body_json.num_classes",
    )
    .await;
    refused(
        &cluster,
        derive(
            &cluster,
            "head-tune@2",
            r#"{"hyperparameters": {"epochs": 2}}"#,
            "",
        ),
        Code::InvalidArgument,
        "changes nothing",
    )
    .await;
    refused(
        &cluster,
        derive(
            &cluster,
            "head-tune",
            r#"{"hyperparameters": {"learning_rate": -1}}"#,
            "",
        ),
        Code::InvalidArgument,
        "patch_json.hyperparameters.learning_rate",
    )
    .await;
    refused(
        &cluster,
        derive(&cluster, "no-such-recipe", r#"{"alpha": 0.5}"#, ""),
        Code::NotFound,
        "no recipe is \"no-such-recipe\"",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            hyperparameters: hyperparameters(5, 0.1),
            ..from_recipe("t4", "head-tune", &[&base.id], &new_data.id)
        }),
        Code::InvalidArgument,
        "spec.hyperparameters: comes from the recipe",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(from_recipe(
            "t4",
            "head-tune",
            &[&base.id, &base.id],
            &new_data.id,
        )),
        Code::InvalidArgument,
        "takes 1 parent model(s) in order, 2 given",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(pb::JobSpec {
            recipe_overrides_json: r#"{"hyperparameters": {"batch_size": 0.5}}"#.into(),
            ..from_recipe("t4", "head-tune", &[&base.id], &new_data.id)
        }),
        Code::InvalidArgument,
        "spec.recipe_overrides_json",
    )
    .await;
}

/// Plans, submits, waits: the plan's statuses and origins are the new model's provenance.
async fn plan_then_run(cluster: &Cluster, spec: pb::JobSpec) -> pb::JobPlan {
    let plan = plan(cluster, spec.clone()).await;
    assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
    let job = cluster.submit(spec).await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    let made = cluster.tensors_of(&job.model_id).await;
    assert_eq!(made.len(), plan.tensors.len());
    let mut total = 0;
    let mut trained = 0;
    for planned in &plan.tensors {
        let actual = &made[&planned.name];
        assert_eq!(actual.status(), planned.status(), "{}", planned.name);
        assert_eq!(
            actual.origin_model_id, planned.origin_model_id,
            "{}",
            planned.name
        );
        assert_eq!(
            actual.origin_tensor, planned.origin_tensor,
            "{}",
            planned.name
        );
        assert_eq!(actual.shape, planned.shape, "{}", planned.name);
        let elements: u64 = actual.shape.iter().product();
        total += elements;
        if matches!(
            actual.status(),
            pb::TensorStatus::Trained | pb::TensorStatus::New
        ) {
            trained += elements;
        }
    }
    assert_eq!(plan.trainable_parameters + plan.frozen_parameters, total);
    assert_eq!(
        plan.trainable_parameters, trained,
        "every trainable tensor trained"
    );
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_exactly_what_the_job_then_does() {
    let cluster = Cluster::start().await;
    let data = cluster.register_dataset("data", blobs(0..5, 40, 1)).await;
    let more = cluster.register_dataset("more", blobs(0..5, 40, 3)).await;
    let left = base_model(&cluster, "left", &data).await;
    let right = base_model(&cluster, "right", &more).await;

    let finetune = plan_then_run(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "ft".into(),
            parent_id: left.id.clone(),
            dataset_id: more.id.clone(),
            trainable: vec!["hidden.*".into()],
            hyperparameters: hyperparameters(1, 0.01),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finetune.trainable_parameters, 64 * 32 + 32);
    let memory = finetune.memory.clone().unwrap();
    assert_eq!(memory.weights_bytes, (64 * 32 + 32 + 32 * 5 + 5) * 4);
    assert_eq!(memory.gradients_bytes, (64 * 32 + 32) * 4);
    assert_eq!(
        memory.optimizer_bytes,
        2 * (64 * 32 + 32) * 4,
        "adam keeps two moments"
    );
    plan_then_run(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "tr".into(),
            parent_id: left.id.clone(),
            dataset_id: data.id.clone(),
            num_classes: 7,
            hyperparameters: hyperparameters(1, 0.01),
            ..Default::default()
        },
    )
    .await;
    plan_then_run(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "mid".into(),
            parent_id: left.id.clone(),
            second_parent_id: right.id.clone(),
            alpha: 0.5,
            ..Default::default()
        },
    )
    .await;
    let compose = pb::JobSpec {
        kind: pb::JobKind::Compose as i32,
        model_name: "glued".into(),
        dataset_id: data.id.clone(),
        architecture: Some(mlp(64, vec![32], 5)),
        modules: vec![
            pb::ModuleMapping {
                target_prefix: "hidden.0".into(),
                parent_id: left.id.clone(),
                source_prefix: "hidden.0".into(),
            },
            pb::ModuleMapping {
                target_prefix: "fc".into(),
                parent_id: right.id.clone(),
                source_prefix: "fc".into(),
            },
        ],
        trainable: vec!["fc.*".into()],
        hyperparameters: hyperparameters(1, 0.01),
        ..Default::default()
    };
    // The CLI prints the same plan for people.
    let (ok, stdout, stderr) = support::cli(
        &cluster,
        &cluster.admin_token,
        &[
            "job",
            "plan",
            "compose",
            "glued-cli",
            "--dataset",
            "data",
            "--arch",
            r#"{"mlp": {"input_features": 64, "hidden": [32], "num_classes": 5}}"#,
            "--module",
            "hidden.0=left:hidden.0",
            "--module",
            "fc=right:fc",
            "--trainable",
            "fc.*",
            "--epochs",
            "1",
        ],
    );
    assert!(ok, "{stderr}");
    println!("{stdout}");
    for expected in [
        "plan: compose job making \"glued-cli\"",
        "verdict: would be queued",
        "hidden.0.weight  inherited  frozen",
        "left:hidden.0.weight",
        "fc.weight        trained    trains",
        "parameters: 165 trainable, 2,080 frozen",
        "ok   tensor shapes",
        "memory at batch size 64",
        "ok   data shift         none from \"left\"'s training data \"data\"@1",
        "from \"right\"'s training data \"more\"@1",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    plan_then_run(&cluster, compose).await;

    // A recipe's plan is its expansion: the same statuses as the spec written out.
    create(
        &cluster,
        "tune-hidden",
        r#"{"kind": "finetune", "trainable": ["hidden.*"],
        "hyperparameters": {"epochs": 1, "learning_rate": 0.01}}"#,
    )
    .await
    .unwrap();
    let by_recipe = plan_then_run(
        &cluster,
        from_recipe("ft-r", "tune-hidden", &[&left.id], &more.id),
    )
    .await;
    assert_eq!(by_recipe.recipe.as_ref().unwrap().name, "tune-hidden");
    let statuses =
        |plan: &pb::JobPlan| -> Vec<i32> { plan.tensors.iter().map(|t| t.status).collect() };
    assert_eq!(statuses(&by_recipe), statuses(&finetune));
}

/// A dataset of `features` features with labels 0..`classes`, its values shifted by `shift`.
fn data(features: usize, classes: i64, shift: f32, seed: u64) -> Vec<u8> {
    let mut rng = support::Rng::new(seed);
    let rows = 100;
    let x: Vec<u8> = (0..rows * features)
        .flat_map(|_| (rng.normal() + shift).to_le_bytes())
        .collect();
    let y: Vec<u8> = (0..rows as i64)
        .flat_map(|i| (i % classes).to_le_bytes())
        .collect();
    support::safetensors_file(&[
        ("x", safetensors::Dtype::F32, vec![rows, features], x),
        ("y", safetensors::Dtype::I64, vec![rows], y),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_does_not_fit_is_refused_and_shift_is_measured() {
    let cluster = Cluster::start().await;
    let reference = cluster
        .register_dataset("reference", data(64, 5, 0.0, 1))
        .await;
    let statistics = reference.statistics.clone().unwrap();
    assert_eq!(statistics.labels, [0, 1, 2, 3, 4]);
    assert_eq!(statistics.label_counts, [20, 20, 20, 20, 20]);
    assert!(statistics.per_feature && statistics.std > 0.9 && statistics.std < 1.1);
    let base = base_model(&cluster, "base", &reference).await;

    let narrow = cluster
        .register_dataset("narrow", data(32, 5, 0.0, 2))
        .await;
    let ten_labels = cluster
        .register_dataset("ten-labels", data(64, 10, 0.0, 3))
        .await;
    let same = cluster.register_dataset("same", data(64, 5, 0.0, 4)).await;
    let moved = cluster.register_dataset("moved", data(64, 5, 2.0, 5)).await;
    let finetune = |name: &str, dataset: &pb::Dataset| pb::JobSpec {
        kind: pb::JobKind::Finetune as i32,
        model_name: name.into(),
        parent_id: base.id.clone(),
        dataset_id: dataset.id.clone(),
        hyperparameters: hyperparameters(1, 0.01),
        ..Default::default()
    };
    refused(
        &cluster,
        cluster.try_submit(finetune("narrow-ft", &narrow)),
        Code::FailedPrecondition,
        "dataset \"narrow\"@1 has 32 features per example but parent \"base\" takes 64",
    )
    .await;
    refused(
        &cluster,
        cluster.try_submit(finetune("ten-ft", &ten_labels)),
        Code::FailedPrecondition,
        "has labels up to 9 but the head has 5 outputs (labels 0..4): transfer to a new head",
    )
    .await;
    // Every reason at once: the name is taken and the data fits in neither way.
    let wide_and_many = cluster.register_dataset("wide", data(32, 10, 0.0, 6)).await;
    let everything = finetune("base", &wide_and_many);
    let planned = plan(&cluster, everything.clone()).await;
    let codes: Vec<&str> = planned.refusals.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "ALREADY_EXISTS",
            "FAILED_PRECONDITION",
            "FAILED_PRECONDITION"
        ]
    );
    assert_eq!(
        planned.tensors.len(),
        4,
        "the tensor plan is shown all the same"
    );
    refused(
        &cluster,
        cluster.try_submit(everything),
        Code::AlreadyExists,
        "(and 2 more: ",
    )
    .await;
    // A transfer to a head wide enough takes the ten labels.
    let transfer = plan(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "ten".into(),
            parent_id: base.id.clone(),
            dataset_id: ten_labels.id.clone(),
            num_classes: 10,
            ..Default::default()
        },
    )
    .await;
    assert!(transfer.refusals.is_empty(), "{:?}", transfer.refusals);
    assert_eq!(transfer.data_shift[0].new_labels, [5, 6, 7, 8, 9]);
    assert_eq!(transfer.data_shift[0].verdict, "large");

    // Data from the same distribution shows no shift; data moved by two deviations does,
    // and the job records it.
    let quiet = cluster.submit(finetune("same-ft", &same)).await;
    let loud = cluster.submit(finetune("moved-ft", &moved)).await;
    for job in [&quiet, &loud] {
        let (_, job) = cluster.wait(&job.id).await;
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    }
    let quiet = cluster.job(&quiet.id).await.data_shift[0].clone();
    let loud = cluster.job(&loud.id).await.data_shift[0].clone();
    assert_eq!(quiet.reference.as_ref().unwrap().name, "reference");
    assert!(quiet.mean_shift < 0.2, "{quiet:?}");
    assert!((quiet.std_ratio - 1.0).abs() < 0.1, "{quiet:?}");
    assert_eq!(quiet.label_distance, 0.0);
    assert!(
        matches!(quiet.verdict.as_str(), "none" | "small"),
        "{quiet:?}"
    );
    assert!(loud.mean_shift > 1.7 && loud.mean_shift < 2.3, "{loud:?}");
    assert_eq!(loud.verdict, "large");
}
