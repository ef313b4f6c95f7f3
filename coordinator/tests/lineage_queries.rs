//! Lineage questions on a known graph, with exact answers:
//!
//! ```text
//!            root (imported)
//!           /     \
//!      a (copy)   b (scale 2)         direct edges
//!        |  \    /  |
//!        |   \  /   |
//!        |    \/    |
//!        |    /\    |
//!   c (interpolate a, b)   d (compose: hidden.0 from a, fc from b)
//!        |
//!   e (fine-tune c's fc on the dataset)
//!        |
//!   f (copy of e)
//! ```

use heirloom_testing as support;

use heirloom_proto::v1 as pb;
use support::{Cluster, blobs, hyperparameters, mlp};
use tonic::Code;

struct Graph {
    cluster: Cluster,
    dataset: pb::Dataset,
    ids: std::collections::HashMap<String, String>,
}

async fn known_graph() -> Graph {
    let cluster = Cluster::start().await;
    let dataset = cluster.register_dataset("blobs", blobs(0..5, 20, 1)).await;
    let root = support::import_model_at(
        &cluster.channel,
        "root",
        mlp(64, vec![8], 5),
        support::mlp_weights(64, 8, 5, [0.1, 0.2, 0.3, 0.4]),
    )
    .await;
    let mut ids = std::collections::HashMap::from([("root".to_string(), root.id.clone())]);
    let direct = |name: &str, parent: &str| pb::JobSpec {
        kind: pb::JobKind::Direct as i32,
        model_name: name.into(),
        parent_id: parent.into(),
        ..Default::default()
    };
    let a = cluster.run(direct("a", &ids["root"])).await;
    ids.insert("a".into(), a.id);
    let b = cluster
        .run(pb::JobSpec {
            scale: 2.0,
            ..direct("b", &ids["root"])
        })
        .await;
    ids.insert("b".into(), b.id);
    let c = cluster
        .run(pb::JobSpec {
            second_parent_id: ids["b"].clone(),
            alpha: 0.5,
            ..direct("c", &ids["a"])
        })
        .await;
    ids.insert("c".into(), c.id);
    let module = |target: &str, parent: &str| pb::ModuleMapping {
        target_prefix: target.into(),
        parent_id: parent.into(),
        source_prefix: target.into(),
    };
    let d = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Compose as i32,
            model_name: "d".into(),
            architecture: Some(mlp(64, vec![8], 5)),
            modules: vec![module("hidden.0", &ids["a"]), module("fc", &ids["b"])],
            ..Default::default()
        })
        .await;
    ids.insert("d".into(), d.id);
    let e = cluster
        .run(pb::JobSpec {
            kind: pb::JobKind::Finetune as i32,
            model_name: "e".into(),
            parent_id: ids["c"].clone(),
            dataset_id: dataset.id.clone(),
            trainable: vec!["fc.*".into()],
            hyperparameters: hyperparameters(2, 0.01),
            ..Default::default()
        })
        .await;
    ids.insert("e".into(), e.id);
    let f = cluster.run(direct("f", &ids["e"])).await;
    ids.insert("f".into(), f.id);
    Graph {
        cluster,
        dataset,
        ids,
    }
}

fn names(entries: &[pb::LineageEntry]) -> Vec<(String, u32)> {
    entries
        .iter()
        .map(|e| (e.model.as_ref().unwrap().name.clone(), e.depth))
        .collect()
}

fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(n, d)| (n.to_string(), *d)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_questions_have_exact_answers() {
    let graph = known_graph().await;
    let mut models = graph.cluster.models();
    let ids = &graph.ids;

    // Ancestors and descendants: shortest distances, nearest first, depth limits,
    // relation filters, pages.
    let ancestors = |model: &str, max_depth: u32, relations: &[&str]| pb::ListAncestorsRequest {
        model: model.into(),
        max_depth,
        relations: relations.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    let up = |response: tonic::Response<pb::ListAncestorsResponse>| {
        names(&response.into_inner().entries)
    };
    assert_eq!(
        up(models.list_ancestors(ancestors("c", 0, &[])).await.unwrap()),
        pairs(&[("a", 1), ("b", 1), ("root", 2)])
    );
    let basic = models
        .list_ancestors(pb::ListAncestorsRequest {
            view: pb::LineageView::Basic as i32,
            ..ancestors("c", 0, &[])
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(names(&basic), pairs(&[("a", 1), ("b", 1), ("root", 2)]));
    assert!(
        basic
            .iter()
            .all(|e| e.model.as_ref().unwrap().architecture.is_none()),
        "the basic view leaves the rest of each model out"
    );
    assert_eq!(
        up(models.list_ancestors(ancestors("f", 2, &[])).await.unwrap()),
        pairs(&[("e", 1), ("c", 2)])
    );
    assert_eq!(
        up(models
            .list_ancestors(ancestors("f", 0, &["direct"]))
            .await
            .unwrap()),
        pairs(&[("e", 1)]),
        "the finetune edge e ← c is not followed"
    );
    assert_eq!(
        up(models
            .list_ancestors(ancestors("d", 0, &["module"]))
            .await
            .unwrap()),
        pairs(&[("a", 1), ("b", 1)])
    );
    let everything_below = pairs(&[("a", 1), ("b", 1), ("c", 2), ("d", 2), ("e", 3), ("f", 4)]);
    let mut paged = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = models
            .list_descendants(pb::ListDescendantsRequest {
                model: ids["root"].clone(),
                page_size: 4,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(names(&page.entries));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!((paged, pages), (everything_below, 2));

    // A shortest line of descent, either way round.
    let path = models
        .find_path(pb::FindPathRequest {
            from: "f".into(),
            to: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(path.reversed, "root is the ancestor");
    let steps: Vec<(String, String)> = path
        .steps
        .iter()
        .map(|s| (s.model.as_ref().unwrap().name.clone(), s.relation.clone()))
        .collect();
    assert_eq!(steps.len(), 5);
    assert_eq!(steps[0], ("root".to_string(), String::new()));
    assert!(["a", "b"].contains(&steps[1].0.as_str()));
    assert_eq!(
        steps[1..]
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>(),
        ["direct", "direct", "finetune", "direct"]
    );
    assert_eq!(
        steps[2..]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["c", "e", "f"]
    );
    let unrelated = models
        .find_path(pb::FindPathRequest {
            from: "d".into(),
            to: "e".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unrelated.code(), Code::NotFound);
    assert!(
        unrelated.message().contains("CommonAncestors"),
        "{}",
        unrelated.message()
    );

    // Nearest common ancestors: the diamond's two sides, not the root above them.
    let common = |a: &str, b: &str| {
        let mut models = models.clone();
        let request = pb::CommonAncestorsRequest {
            a: a.into(),
            b: b.into(),
        };
        async move {
            models
                .common_ancestors(request)
                .await
                .unwrap()
                .into_inner()
                .ancestors
                .iter()
                .map(|c| {
                    (
                        c.model.as_ref().unwrap().name.clone(),
                        c.depth_from_a,
                        c.depth_from_b,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let triple = |n: &str, a: u32, b: u32| (n.to_string(), a, b);
    assert_eq!(
        common("e", "d").await,
        [triple("a", 2, 1), triple("b", 2, 1)]
    );
    assert_eq!(common("a", "b").await, [triple("root", 1, 1)]);
    assert_eq!(common("f", "c").await, [triple("c", 2, 0)]);
    assert_eq!(common("f", "f").await, [triple("f", 0, 0)]);

    // The graph around c, one generation each way, in three formats.
    let around = |format: pb::GraphFormat| pb::LineageGraphRequest {
        model: "c".into(),
        ancestors_depth: 1,
        descendants_depth: 1,
        format: format as i32,
    };
    let json = models
        .lineage_graph(around(pb::GraphFormat::Json))
        .await
        .unwrap()
        .into_inner();
    let mut nodes: Vec<&str> = json.nodes.iter().map(|n| n.name.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c", "e"]);
    assert_eq!(json.edges.len(), 3);
    let parsed: serde_json::Value = serde_json::from_str(&json.rendered).unwrap();
    assert_eq!(parsed["edges"].as_array().unwrap().len(), 3);
    let focus: Vec<&str> = json
        .nodes
        .iter()
        .filter(|n| n.focus)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(focus, ["c"]);
    let dot = models
        .lineage_graph(around(pb::GraphFormat::Dot))
        .await
        .unwrap()
        .into_inner()
        .rendered;
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 3, "{dot}");
    assert!(dot.contains(&format!(
        "\"{}\" -> \"{}\" [label=\"finetune\"]",
        ids["c"], ids["e"]
    )));
    let mermaid = models
        .lineage_graph(around(pb::GraphFormat::Mermaid))
        .await
        .unwrap()
        .into_inner()
        .rendered;
    assert!(mermaid.starts_with("graph TD\n"), "{mermaid}");
    assert_eq!(mermaid.matches(" -->|").count(), 3, "{mermaid}");

    // Blame: where each tensor last changed.
    let blame = |model: &str, tensor: &str| {
        let mut models = models.clone();
        let request = pb::BlameTensorRequest {
            model: model.into(),
            tensor: tensor.into(),
        };
        async move { models.blame_tensor(request).await }
    };
    let chain = |response: tonic::Response<pb::BlameTensorResponse>| {
        response
            .into_inner()
            .steps
            .iter()
            .map(|s| (s.model_name.clone(), s.status()))
            .collect::<Vec<_>>()
    };
    use pb::TensorStatus::{Inherited, Interpolated, New, Trained};
    assert_eq!(
        chain(blame("f", "fc.weight").await.unwrap()),
        [("f".to_string(), Inherited), ("e".to_string(), Trained)]
    );
    assert_eq!(
        chain(blame("f", "hidden.0.weight").await.unwrap()),
        [
            ("f".to_string(), Inherited),
            ("e".to_string(), Inherited),
            ("c".to_string(), Interpolated)
        ]
    );
    assert_eq!(
        chain(blame("d", "fc.bias").await.unwrap()),
        [
            ("d".to_string(), Inherited),
            ("b".to_string(), Interpolated)
        ]
    );
    assert_eq!(
        chain(blame("a", "hidden.0.bias").await.unwrap()),
        [("a".to_string(), Inherited), ("root".to_string(), New)]
    );
    let missing = blame("f", "hidden.9.weight").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Dataset impact: what trained on it, and everything below.
    for reference in [graph.dataset.id.clone(), "blobs".into(), "blobs@1".into()] {
        let impact = models
            .dataset_impact(pb::DatasetImpactRequest {
                dataset: reference,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names(&impact.entries), pairs(&[("e", 0), ("f", 1)]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_questions_about_unknown_things_are_refused_precisely() {
    let cluster = Cluster::coordinator_only().await;
    let mut models = cluster.models();
    let nobody = uuid::Uuid::new_v4().to_string();
    let code = |result: Result<tonic::Response<()>, tonic::Status>| result.unwrap_err().code();
    fn unit<T>(_: T) {}
    assert_eq!(
        code(
            models
                .list_ancestors(pb::ListAncestorsRequest {
                    model: nobody.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            models
                .find_path(pb::FindPathRequest {
                    from: nobody.clone(),
                    to: "ghost".into(),
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            models
                .common_ancestors(pb::CommonAncestorsRequest {
                    a: "ghost".into(),
                    b: nobody.clone(),
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            models
                .lineage_graph(pb::LineageGraphRequest {
                    model: nobody.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            models
                .blame_tensor(pb::BlameTensorRequest {
                    model: nobody.clone(),
                    tensor: "fc.weight".into(),
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            models
                .dataset_impact(pb::DatasetImpactRequest {
                    dataset: "no-such-data@3".into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.map(unit))
        ),
        Code::NotFound
    );
    let bad_relation = models
        .list_descendants(pb::ListDescendantsRequest {
            model: nobody.clone(),
            relations: vec!["adoption".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_relation.code(), Code::InvalidArgument);
    assert!(
        bad_relation.message().contains("relations[0]"),
        "{}",
        bad_relation.message()
    );
    let bad_token = models
        .list_descendants(pb::ListDescendantsRequest {
            model: nobody,
            page_token: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(
        bad_token.message().contains("page_token"),
        "{}",
        bad_token.message()
    );
}

/// Runs the `heirloom` CLI against the cluster as admin; returns what it printed.
fn cli(cluster: &Cluster, args: &[&str]) -> String {
    let (success, stdout, stderr) = support::cli(cluster, &cluster.admin_token, args);
    assert!(success, "heirloom {args:?}: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_every_lineage_question() {
    let graph = known_graph().await;
    let cluster = &graph.cluster;
    let blame = cli(cluster, &["lineage", "blame", "f", "hidden.0.weight"]);
    let lines: Vec<&str> = blame.lines().collect();
    assert_eq!(lines.len(), 3, "{blame}");
    assert!(
        lines[2].starts_with('c') && lines[2].contains("last changed here"),
        "{blame}"
    );

    let path = cli(cluster, &["lineage", "path", "root", "f"]);
    assert!(
        path.starts_with("root\n") && path.trim_end().ends_with("f"),
        "{path}"
    );
    assert!(path.contains("finetune→ e"), "{path}");

    let common: serde_json::Value = serde_json::from_str(&cli(
        cluster,
        &["lineage", "common", "e", "d", "--format", "json"],
    ))
    .unwrap();
    let names: Vec<&str> = common
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);

    let ancestors: serde_json::Value = serde_json::from_str(&cli(
        cluster,
        &[
            "lineage",
            "ancestors",
            "f",
            "--relation",
            "direct",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(ancestors.as_array().unwrap().len(), 1);
    let descendants = cli(cluster, &["lineage", "descendants", "root", "--depth", "1"]);
    assert_eq!(
        descendants.lines().count(),
        3,
        "a header and a, b: {descendants}"
    );

    let dot = cli(
        cluster,
        &["lineage", "graph", "c", "--up", "1", "--down", "1"],
    );
    assert!(
        dot.starts_with("digraph lineage {") && dot.matches(" -> ").count() == 3,
        "{dot}"
    );
    let mermaid = cli(cluster, &["lineage", "graph", "c", "--format", "mermaid"]);
    assert!(mermaid.starts_with("graph TD"), "{mermaid}");

    let impact = cli(
        cluster,
        &[
            "lineage",
            "impact",
            &format!("blobs@{}", graph.dataset.version),
        ],
    );
    assert_eq!(impact.lines().count(), 3, "a header and e, f: {impact}");
}
