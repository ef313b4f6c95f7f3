//! The lineage explorer in a real browser: a coordinator serving it over TLS, a worker
//! making a small family of models with real jobs, and Debian's Chromium driven by
//! playwright-core (`tests/browser/explorer.mjs`) through every view, checking what each
//! shows against what the gRPC API answers, following a job live, and saving
//! screenshots to `target/explorer-screenshots/`.

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use support::{Cluster, blobs, hyperparameters, mlp};

async fn run_job(cluster: &Cluster, spec: pb::JobSpec) -> pb::Job {
    let job = cluster.submit(spec).await;
    let (_, job) = cluster.wait(&job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.error);
    job
}

fn finetune(name: &str, parent: &str, dataset: &str, trainable: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        kind: pb::JobKind::Finetune as i32,
        model_name: name.into(),
        parent_id: parent.into(),
        dataset_id: dataset.into(),
        trainable: trainable.iter().map(|p| p.to_string()).collect(),
        hyperparameters: hyperparameters(2, 0.01),
        ..Default::default()
    }
}

/// What the explorer must show, read over gRPC.
async fn expectations(
    cluster: &Cluster,
    graph_focus: &pb::Model,
    chart_job: &str,
) -> serde_json::Value {
    let models = cluster
        .models()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let mut listed = Vec::new();
    for model in &models {
        let tensors: serde_json::Map<String, serde_json::Value> = cluster
            .tensors_of(&model.id)
            .await
            .into_iter()
            .map(|(name, tensor)| {
                let status = tensor
                    .status()
                    .as_str_name()
                    .trim_start_matches("TENSOR_STATUS_")
                    .to_lowercase();
                (name, json!(status))
            })
            .collect();
        let relations: Vec<String> = model
            .parents
            .iter()
            .map(|p| {
                p.relation()
                    .as_str_name()
                    .trim_start_matches("RELATION_")
                    .to_lowercase()
            })
            .collect();
        listed.push(json!({
            "id": model.id,
            "name": model.name,
            "source": model.source,
            "accuracy": model.metrics.as_ref().map(|m| m.holdout_accuracy),
            "relations": relations,
            "parents": model.parents.iter().map(|p| p.parent_name.clone()).collect::<Vec<_>>(),
            "tensors": tensors,
        }));
    }
    let graph = |depth: u32| {
        let mut models = cluster.models();
        let focus = graph_focus.id.clone();
        async move {
            models
                .lineage_graph(pb::LineageGraphRequest {
                    model: focus,
                    ancestors_depth: depth,
                    descendants_depth: depth,
                    format: 0,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deep = graph(3).await;
    let shallow = graph(1).await;
    let click = deep
        .nodes
        .iter()
        .find(|node| !node.focus)
        .expect("the graph has more than its focus")
        .name
        .clone();
    let impact = cluster
        .models()
        .dataset_impact(pb::DatasetImpactRequest {
            dataset: "blobs-a".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let jobs = cluster
        .jobs()
        .list_jobs(pb::ListJobsRequest { state: 0 })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let (events, _) = cluster.wait(chart_job).await;
    let reports = events
        .iter()
        .filter(|e| matches!(&e.event, Some(pb::job_event::Event::Progress(p)) if p.step > 0))
        .count();
    json!({
        "models": listed,
        "search": "tuned",
        "provenance_model": "glued",
        "live_model": "tuned-live",
        "graph": {
            "focus": graph_focus.id,
            "depth": 3,
            "nodes": deep.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
            "edges": deep.edges.iter().map(|e| format!("{}>{}:{}", e.parent_id, e.child_id, e.relation)).collect::<Vec<_>>(),
            "click": click,
            "nodes_at_depth_1": shallow.nodes.len(),
        },
        "jobs": jobs.iter().map(|j| (j.id.clone(), json!(j.state().as_str_name().trim_start_matches("JOB_STATE_").to_lowercase()))).collect::<serde_json::Map<_, _>>(),
        "chart": { "job": chart_job, "points": reports, "ranks": "2 ranks over gloo" },
        "impact": {
            "dataset": "blobs-a@1",
            "models": impact.entries.iter().map(|e| e.model.as_ref().unwrap().name.clone()).collect::<Vec<_>>(),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_shows_every_view_in_a_real_browser() {
    let playwright = std::env::var("HEIRLOOM_PLAYWRIGHT")
        .expect("HEIRLOOM_PLAYWRIGHT names playwright-core's index.mjs: run the tests with ./scripts/test.sh, which installs it");
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("Debian's chromium is installed (./scripts/test.sh installs it)");

    let mut cluster = Cluster::with_explorer().await;
    // A second worker: the first model trains on two ranks, and its page says so.
    cluster.start_worker();
    let a = cluster
        .register_dataset("blobs-a", blobs(0..5, 40, 1))
        .await;
    let b = cluster
        .register_dataset("blobs-b", blobs(5..10, 40, 2))
        .await;
    let base_job = cluster
        .jobs()
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                kind: pb::JobKind::Train as i32,
                model_name: "base".into(),
                dataset_id: a.id.clone(),
                architecture: Some(mlp(64, vec![32, 16], 5)),
                hyperparameters: hyperparameters(3, 0.01),
                ..Default::default()
            }),
            requirements: Some(pb::Requirements {
                world_size: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (_, base_job) = cluster.wait(&base_job.id).await;
    assert_eq!(
        base_job.state(),
        pb::JobState::Succeeded,
        "{}",
        base_job.error
    );
    let base = cluster.model(&base_job.model_id).await;
    let transfer = run_job(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Transfer as i32,
            model_name: "moved".into(),
            parent_id: base.id.clone(),
            dataset_id: b.id.clone(),
            num_classes: 5,
            unfreeze_blocks: 1,
            hyperparameters: hyperparameters(2, 0.01),
            ..Default::default()
        },
    )
    .await;
    let moved = cluster.model(&transfer.model_id).await;
    let head = run_job(
        &cluster,
        finetune("tuned-head", &moved.id, &b.id, &["fc.*"]),
    )
    .await;
    let deep = run_job(
        &cluster,
        finetune("tuned-deep", &moved.id, &b.id, &["hidden.1.*", "fc.*"]),
    )
    .await;
    run_job(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Direct as i32,
            model_name: "blend".into(),
            parent_id: head.model_id.clone(),
            second_parent_id: deep.model_id.clone(),
            alpha: 0.5,
            dataset_id: b.id.clone(),
            ..Default::default()
        },
    )
    .await;
    run_job(
        &cluster,
        pb::JobSpec {
            kind: pb::JobKind::Compose as i32,
            model_name: "glued".into(),
            dataset_id: b.id.clone(),
            architecture: Some(mlp(64, vec![32, 16], 5)),
            modules: vec![
                pb::ModuleMapping {
                    target_prefix: "hidden.0".into(),
                    parent_id: base.id.clone(),
                    source_prefix: "hidden.0".into(),
                },
                pb::ModuleMapping {
                    target_prefix: "hidden.1".into(),
                    parent_id: deep.model_id.clone(),
                    source_prefix: "hidden.1".into(),
                },
            ],
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(2, 0.01),
            ..Default::default()
        },
    )
    .await;
    let reader = support::create_token(&cluster.channel, "explorer-reader", pb::Role::Reader).await;
    let expected = expectations(&cluster, &moved, &base_job.id).await;
    let scratch = tempfile::tempdir().unwrap();
    let expected_file = scratch.path().join("expected.json");
    std::fs::write(
        &expected_file,
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("explorer-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();

    // A client that connects and never says a word: the explorer must serve the browser
    // meanwhile (handshakes do not wait for each other).
    let explorer_address = cluster
        .explorer
        .as_ref()
        .unwrap()
        .trim_start_matches("https://");
    let _silent = std::net::TcpStream::connect(explorer_address).expect("connect to the explorer");
    let mut browser = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/explorer.mjs"
        ))
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", chromium)
        .env("EXPLORER", cluster.explorer.as_ref().unwrap())
        .env("TOKEN", &reader)
        .env("WORKER_TOKEN", &cluster.worker_token)
        .env("EXPECTED", &expected_file)
        .env("SCREENSHOTS", &screenshots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (./scripts/test.sh installs Node.js)");
    let mut stdin = browser.stdin.take().unwrap();
    let stdout = BufReader::new(browser.stdout.take().unwrap());
    // Lines from the browser script, read on a thread of their own.
    let (lines, mut incoming) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            println!("browser: {line}");
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut output = Vec::new();
    while let Some(line) =
        tokio::time::timeout(std::time::Duration::from_secs(240), incoming.recv())
            .await
            .expect("the browser script answers within 4 minutes")
    {
        if line == "ready for a job" {
            // A job submitted while the jobs page is open: the page must show it arrive and
            // succeed without a reload by hand.
            let live = cluster
                .submit(finetune("tuned-live", &moved.id, &b.id, &["fc.*"]))
                .await;
            writeln!(stdin, "{}", live.id).unwrap();
        }
        output.push(line);
    }
    let status = browser.wait().unwrap();
    assert!(
        status.success(),
        "the browser checks failed:\n{}",
        output.join("\n")
    );
    assert!(
        output.iter().any(|line| line.ends_with("checks passed")),
        "{}",
        output.join("\n")
    );
    for view in [
        "login",
        "models",
        "model-provenance",
        "graph",
        "jobs",
        "job",
        "impact",
    ] {
        assert!(
            screenshots
                .join(format!("{view}.png"))
                .metadata()
                .unwrap()
                .len()
                > 10_000,
            "a screenshot of {view}"
        );
    }
}
