//! Zero means zero: a field left unset takes its documented default, and one that is set
//! is used as given or refused naming it, never silently replaced or clamped. The same
//! for the files and references a request names: a dataset's extra tensor, a tensor's
//! dtype and size, a dataset version that is not a whole number.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, mlp, refused};
use tonic::Code;

fn train(dataset_id: &str, hyperparameters: Option<pb::Hyperparameters>) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Train as i32,
        model_name: "child".into(),
        dataset_id: dataset_id.into(),
        architecture: Some(mlp(64, vec![16], 5)),
        hyperparameters,
        ..Default::default()
    }
}

/// A safetensors file with the tensors of `file` and `tensor`, which replaces the one of
/// its name.
fn with_tensor(file: &[u8], tensor: (&str, safetensors::Dtype, Vec<usize>, Vec<u8>)) -> Vec<u8> {
    let file = safetensors::SafeTensors::deserialize(file).unwrap();
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != tensor.0)
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    let mut tensors: Vec<_> = kept
        .iter()
        .map(|(name, dtype, shape, data)| (name.as_str(), *dtype, shape.clone(), data.clone()))
        .collect();
    tensors.push(tensor);
    support::safetensors_file(&tensors)
}

/// Submitting `hyperparameters` is refused with INVALID_ARGUMENT and `message`, nothing
/// written; planning them is refused the same way.
async fn check(
    cluster: &Cluster,
    dataset_id: &str,
    hyperparameters: pb::Hyperparameters,
    message: &str,
) {
    let spec = train(dataset_id, Some(hyperparameters));
    refused(
        cluster,
        cluster.try_submit(spec.clone()),
        Code::InvalidArgument,
        message,
    )
    .await;
    let mut jobs = cluster.jobs();
    let plan = jobs.plan_job(pb::PlanJobRequest {
        spec: Some(spec),
        requirements: None,
    });
    refused(cluster, plan, Code::InvalidArgument, message).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_hyperparameters_out_of_range_are_refused_naming_the_field() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let field = "spec.hyperparameters";
    for (hyperparameters, message) in [
        (
            pb::Hyperparameters {
                epochs: Some(0),
                ..Default::default()
            },
            format!(
                "{field}.epochs: must be between 1 and 100000, got 0; leave it unset for the default 10"
            ),
        ),
        (
            pb::Hyperparameters {
                epochs: Some(100_001),
                ..Default::default()
            },
            format!("{field}.epochs: must be between 1 and 100000, got 100001"),
        ),
        (
            pb::Hyperparameters {
                batch_size: Some(0),
                ..Default::default()
            },
            format!(
                "{field}.batch_size: must be between 1 and 1048576, got 0; leave it unset for the default 64"
            ),
        ),
        (
            pb::Hyperparameters {
                learning_rate: Some(0.0),
                ..Default::default()
            },
            format!(
                "{field}.learning_rate: must be a number in (0, 10], got 0; leave it unset for adam's default 0.001"
            ),
        ),
        (
            pb::Hyperparameters {
                learning_rate: Some(-0.01),
                optimizer: pb::Optimizer::Sgd as i32,
                ..Default::default()
            },
            format!(
                "{field}.learning_rate: must be a number in (0, 10], got -0.01; leave it unset for sgd's default 0.05"
            ),
        ),
        (
            pb::Hyperparameters {
                learning_rate: Some(f64::NAN),
                ..Default::default()
            },
            format!("{field}.learning_rate: must be a number in (0, 10], got NaN"),
        ),
        (
            pb::Hyperparameters {
                holdout_fraction: Some(0.0),
                ..Default::default()
            },
            format!(
                "{field}.holdout_fraction: must be in (0, 0.5], got 0; leave it unset for the default 0.2"
            ),
        ),
        (
            pb::Hyperparameters {
                holdout_fraction: Some(0.75),
                ..Default::default()
            },
            format!("{field}.holdout_fraction: must be in (0, 0.5], got 0.75"),
        ),
    ] {
        check(&cluster, &dataset.id, hyperparameters, &message).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_of_zero_or_too_many_is_refused_not_replaced() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    for (attempts, message) in [
        (
            0,
            "max_attempts: must be between 1 and 100, got 0; leave it unset for the default 3",
        ),
        (101, "max_attempts: must be between 1 and 100, got 101"),
        (
            4_000_000_000,
            "max_attempts: must be between 1 and 100, got 4000000000",
        ),
    ] {
        let mut jobs = cluster.jobs();
        let submit = jobs.submit_job(pb::SubmitJobRequest {
            spec: Some(train(&dataset.id, None)),
            max_attempts: Some(attempts),
            ..Default::default()
        });
        refused(&cluster, submit, Code::InvalidArgument, message).await;
    }
    let submitted = |max_attempts: Option<u32>, name: &str| {
        let mut jobs = cluster.jobs();
        let spec = pb::JobSpec {
            model_name: name.into(),
            ..train(&dataset.id, None)
        };
        async move {
            jobs.submit_job(pb::SubmitJobRequest {
                spec: Some(spec),
                max_attempts,
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner()
            .job
            .expect("a job")
        }
    };
    assert_eq!(
        submitted(None, "unset").await.max_attempts,
        3,
        "unset: the default"
    );
    assert_eq!(submitted(Some(1), "one").await.max_attempts, 1);
    assert_eq!(submitted(Some(100), "most").await.max_attempts, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_hyperparameters_take_the_defaults_that_the_plan_shows() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let defaults = pb::Hyperparameters {
        epochs: Some(10),
        batch_size: Some(64),
        learning_rate: Some(0.001),
        optimizer: pb::Optimizer::Adam as i32,
        seed: 0,
        holdout_fraction: Some(0.2),
        precision: pb::Precision::Fp32 as i32,
    };
    // No message, and a message with nothing set, mean the same.
    for hyperparameters in [None, Some(pb::Hyperparameters::default())] {
        let plan = cluster
            .jobs()
            .plan_job(pb::PlanJobRequest {
                spec: Some(train(&dataset.id, hyperparameters)),
                requirements: None,
            })
            .await
            .expect("plan")
            .into_inner()
            .plan
            .expect("a plan");
        assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
        let spec = plan.spec.expect("the spec as it would run");
        assert_eq!(spec.hyperparameters, Some(defaults));
    }
    // The optimizer's own learning rate; set values exactly as given.
    let sgd = pb::Hyperparameters {
        epochs: Some(1),
        batch_size: Some(1),
        optimizer: pb::Optimizer::Sgd as i32,
        seed: 7,
        ..Default::default()
    };
    let job = cluster.submit(train(&dataset.id, Some(sgd))).await;
    let hyperparameters = job.spec.unwrap().hyperparameters.unwrap();
    assert_eq!(
        hyperparameters,
        pb::Hyperparameters {
            epochs: Some(1),
            batch_size: Some(1),
            learning_rate: Some(0.05),
            optimizer: pb::Optimizer::Sgd as i32,
            seed: 7,
            holdout_fraction: Some(0.2),
            precision: pb::Precision::Fp32 as i32,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_leaves_out_what_takes_a_default_and_refuses_a_zero() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 10, 1)).await;
    let body = |hyperparameters: &str| {
        format!(
            r#"{{"kind": "train", "architecture": {{"mlp": {{"input_features": 64, "hidden": [16], "num_classes": 5}}}}, "hyperparameters": {hyperparameters}}}"#
        )
    };
    let mut recipes = cluster.recipes();
    let zero = recipes.create_recipe(pb::CreateRecipeRequest {
        name: "zero".into(),
        body_json: body(r#"{"epochs": 0}"#),
        ..Default::default()
    });
    refused(
        &cluster,
        zero,
        Code::InvalidArgument,
        "body_json.hyperparameters.epochs: must be between 1 and 100000, got 0",
    )
    .await;
    let recipe = recipes
        .create_recipe(pb::CreateRecipeRequest {
            name: "small-batches".into(),
            body_json: body(r#"{"batch_size": 8}"#),
            ..Default::default()
        })
        .await
        .expect("create the recipe")
        .into_inner()
        .recipe
        .expect("a recipe");
    let stored: serde_json::Value = serde_json::from_str(&recipe.body_json).unwrap();
    assert_eq!(stored["hyperparameters"]["batch_size"], 8);
    assert_eq!(
        stored["hyperparameters"]["epochs"], 10,
        "the default, written out"
    );

    let from_recipe = |overrides: &str| pb::JobSpec {
        model_name: "from-recipe".into(),
        recipe: "small-batches".into(),
        dataset_id: dataset.id.clone(),
        recipe_overrides_json: overrides.into(),
        ..Default::default()
    };
    refused(
        &cluster,
        cluster.try_submit(from_recipe(r#"{"hyperparameters": {"epochs": 0}}"#)),
        Code::InvalidArgument,
        "spec.recipe_overrides_json.hyperparameters.epochs: must be between 1 and 100000, got 0",
    )
    .await;
    // Removing a key with the patch's null leaves it to the default.
    let job = cluster
        .submit(from_recipe(r#"{"hyperparameters": {"batch_size": null}}"#))
        .await;
    let hyperparameters = job.spec.unwrap().hyperparameters.unwrap();
    assert_eq!(
        (hyperparameters.epochs, hyperparameters.batch_size),
        (Some(10), Some(64))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_a_tensor_besides_x_and_y_is_refused_naming_it() {
    let cluster = Cluster::coordinator_only().await;
    let content = with_tensor(
        &blobs(0..2, 5, 1),
        (
            "labels_text",
            safetensors::Dtype::U8,
            vec![3],
            b"abc".to_vec(),
        ),
    );
    let mut datasets = cluster.datasets();
    let register = datasets.register_dataset(pb::RegisterDatasetRequest {
        name: "extra".into(),
        sha256: heirloom_core::sha256_hex(&content),
        content: content.into(),
        tokens: None,
    });
    refused(
        &cluster,
        register,
        Code::InvalidArgument,
        "content: holds tensor `labels_text`; a dataset holds only `x` and `y`: remove it",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_f64_tensor_is_refused_with_its_true_size() {
    let cluster = Cluster::coordinator_only().await;
    let bias = [0.5f64; 5];
    let data: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    // Refused before the store is asked for the blob: none needs uploading. The size
    // used to be counted at 4 bytes an element whatever the dtype ("holds 40 bytes, but
    // f64 [5] takes 20").
    let mut models = cluster.models();
    let import = models.import_model(pb::ImportModelRequest {
        name: "doubles".into(),
        architecture: Some(mlp(64, vec![16], 5)),
        tensors: vec![pb::ManifestTensor {
            name: "fc.bias".into(),
            dtype: "f64".into(),
            shape: vec![5],
            sha256: heirloom_core::sha256_hex(&data),
        }],
        ..Default::default()
    });
    refused(
        &cluster,
        import,
        Code::InvalidArgument,
        "tensors[0].dtype: tensor fc.bias is f64 [5], 40 bytes; Heirloom stores weights as f32",
    )
    .await;
    // Inline, the file says the dtype itself, and the architecture's check names both.
    let weights = with_tensor(
        &support::mlp_weights(64, 16, 5, [0.0; 4]),
        ("fc.bias", safetensors::Dtype::F64, vec![5], data),
    );
    let mut models = cluster.models();
    let import = models.import_model(pb::ImportModelRequest {
        name: "doubles".into(),
        architecture: Some(mlp(64, vec![16], 5)),
        weights: weights.into(),
        ..Default::default()
    });
    refused(
        &cluster,
        import,
        Code::InvalidArgument,
        "tensor fc.bias is f64 [5]; the architecture needs f32 [5]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_version_that_is_not_a_whole_number_from_1_says_what_to_fix() {
    let cluster = Cluster::coordinator_only().await;
    let dataset = cluster.register_dataset("ds", blobs(0..5, 10, 1)).await;
    for version in ["-1", "0", "x", ""] {
        let reference = format!("ds@{version}");
        refused(
            &cluster,
            cluster.try_submit(train(&reference, None)),
            Code::InvalidArgument,
            &format!(
                "spec.dataset_id: \"{reference}\": the version after @ must be a whole number from 1, e.g. ds@3"
            ),
        )
        .await;
    }
    let job = cluster.submit(train("ds@1", None)).await;
    assert_eq!(job.spec.unwrap().dataset_id, dataset.id);

    // The CLI sends what it is given, and shows the coordinator's answer.
    let cli = |args: &[&str]| {
        let mut all = vec!["job", "plan", "train", "cli-child", "--arch"];
        all.push(r#"{"mlp": {"input_features": 64, "hidden": [16], "num_classes": 5}}"#);
        all.extend_from_slice(args);
        support::cli(&cluster, &cluster.admin_token, &all)
    };
    let (ok, _, stderr) = cli(&["--dataset", "ds@-1"]);
    assert!(!ok);
    assert!(
        stderr.contains("the version after @ must be a whole number from 1, e.g. ds@3"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&["--dataset", "ds", "--epochs", "0"]);
    assert!(!ok, "--epochs 0 reaches the coordinator and is refused");
    assert!(
        stderr.contains("spec.hyperparameters.epochs: must be between 1 and 100000, got 0"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = cli(&["--dataset", "ds"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("would be queued"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_s_concurrency_of_zero_is_refused_and_unset_is_one() {
    use heirloom_proto::v1::worker_service_client::WorkerServiceClient;
    let cluster = Cluster::coordinator_only().await;
    let register = |concurrency: Option<u32>, name: &str| {
        let mut workers = WorkerServiceClient::new(cluster.worker_connection());
        let request = pb::RegisterWorkerRequest {
            name: name.into(),
            concurrency,
            ..Default::default()
        };
        async move { workers.register_worker(request).await }
    };
    for (concurrency, message) in [
        (
            0,
            "concurrency: must be between 1 and 256, got 0; leave it unset for 1",
        ),
        (257, "concurrency: must be between 1 and 256, got 257"),
    ] {
        let attempt = register(Some(concurrency), "refused");
        refused(&cluster, attempt, Code::InvalidArgument, message).await;
    }
    for (concurrency, name, expected) in [(None, "unset", 1), (Some(4), "four", 4)] {
        register(concurrency, name).await.expect("registered");
        let stored: i32 = sqlx::query_scalar("SELECT concurrency FROM workers WHERE name = $1")
            .bind(name)
            .fetch_one(&cluster.pool)
            .await
            .unwrap();
        assert_eq!(stored, expected, "{name}");
    }
}
