//! Lineage queries at a million models, not a timed test. Fills a fresh database with
//! 1,000,000 models — 500 chains 1,000 deep (a tensor retrained every 100 generations,
//! inherited otherwise) and a bushy DAG of 500,000 (three children per model, every
//! seventh model also merged from its predecessor) with two tensors' provenance each —
//! then asks each lineage question through the real gRPC service many times and prints
//! p50/p99. Run with `bench/lineage.sh` (it starts PostgreSQL).

use heirloom_proto::v1 as pb;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use heirloom_testing::Cluster;
use std::time::{Duration, Instant};

const CHAINS: i64 = 500;
const CHAIN_DEPTH: i64 = 1_000;
const DAG_MODELS: i64 = 500_000;
const RUNS: usize = 50;

/// Fills the database in a handful of set-based statements (server-side
/// generate_series: a million rows without a million round trips). Models are written as
/// imports: generating a million jobs as well would measure nothing more here.
const GENERATE: &[&str] = &[
    "INSERT INTO datasets (id, name, version, sha256, size_bytes, num_examples, num_features, num_classes)
     VALUES (md5('chain-data')::uuid, 'chain-data', 1, repeat('a', 64), 1, 1, 1, 2),
            (md5('dag-data')::uuid, 'dag-data', 1, repeat('b', 64), 1, 1, 1, 2)",
    // Chain c, generation g: chain-c-g. Created in generation order, so that depth and
    // creation time agree.
    "INSERT INTO models (id, name, architecture, weights_sha256, weights_bytes, source, created_at)
     SELECT md5('chain-' || c || '-' || g)::uuid, 'chain-' || c || '-' || g,
            '{\"mlp\": {\"input_features\": 64, \"hidden\": [8], \"num_classes\": 5}}',
            repeat('c', 64), 2228, 'import', timestamp '2026-01-01' + g * interval '1 second'
       FROM generate_series(0, 499) c, generate_series(0, 999) g",
    "INSERT INTO model_parents (child_id, parent_id, relation, details)
     SELECT md5('chain-' || c || '-' || g)::uuid, md5('chain-' || c || '-' || (g - 1))::uuid,
            'finetune', '{}'::jsonb
       FROM generate_series(0, 499) c, generate_series(1, 999) g",
    // Tensor w: new at the root, retrained every 100 generations, inherited otherwise.
    "INSERT INTO model_tensors (model_id, name, sha256, dtype, shape, status, origin_model_id, origin_tensor)
     SELECT md5('chain-' || c || '-' || g)::uuid, 'w', md5('w' || c || '-' || (g / 100)) || md5('x'),
            'f32', '{8,64}',
            CASE WHEN g = 0 THEN 'new' WHEN g % 100 = 0 THEN 'trained' ELSE 'inherited' END,
            CASE WHEN g = 0 THEN NULL ELSE md5('chain-' || c || '-' || (g - 1))::uuid END,
            CASE WHEN g = 0 THEN NULL ELSE 'w' END
       FROM generate_series(0, 499) c, generate_series(0, 999) g",
    // Tensor b: retrained in every generation.
    "INSERT INTO model_tensors (model_id, name, sha256, dtype, shape, status, origin_model_id, origin_tensor)
     SELECT md5('chain-' || c || '-' || g)::uuid, 'b', md5('b' || c || '-' || g) || md5('y'),
            'f32', '{8}', CASE WHEN g = 0 THEN 'new' ELSE 'trained' END,
            CASE WHEN g = 0 THEN NULL ELSE md5('chain-' || c || '-' || (g - 1))::uuid END,
            CASE WHEN g = 0 THEN NULL ELSE 'b' END
       FROM generate_series(0, 499) c, generate_series(0, 999) g",
    "INSERT INTO model_datasets (model_id, dataset_id, role)
     SELECT md5('chain-' || c || '-0')::uuid, md5('chain-data')::uuid, 'train'
       FROM generate_series(0, 0) c",
    // The DAG: dag-i's parent is dag-(i/3) (a tree, three children each), and every
    // seventh model is also merged from dag-(i-1).
    "INSERT INTO models (id, name, architecture, weights_sha256, weights_bytes, source, created_at)
     SELECT md5('dag-' || i)::uuid, 'dag-' || i,
            '{\"mlp\": {\"input_features\": 64, \"hidden\": [8], \"num_classes\": 5}}',
            repeat('d', 64), 2228, 'import', timestamp '2026-02-01' + i * interval '1 millisecond'
       FROM generate_series(1, 500000) i",
    "INSERT INTO model_parents (child_id, parent_id, relation, details)
     SELECT md5('dag-' || i)::uuid, md5('dag-' || (i / 3))::uuid, 'finetune', '{}'::jsonb
       FROM generate_series(3, 500000) i
     UNION ALL
     SELECT md5('dag-' || i)::uuid, md5('dag-' || (i - 1))::uuid, 'direct', '{}'::jsonb
       FROM generate_series(3, 500000) i WHERE i % 7 = 0 AND i - 1 <> i / 3",
    "INSERT INTO model_tensors (model_id, name, sha256, dtype, shape, status, origin_model_id, origin_tensor)
     SELECT md5('dag-' || i)::uuid, t, md5(t || i) || md5('z'), 'f32', '{8}',
            CASE WHEN i < 3 THEN 'new' ELSE 'trained' END,
            CASE WHEN i < 3 THEN NULL ELSE md5('dag-' || (i / 3))::uuid END,
            CASE WHEN i < 3 THEN NULL ELSE t END
       FROM generate_series(1, 500000) i, unnest(ARRAY['w', 'b']) t",
    "INSERT INTO model_datasets (model_id, dataset_id, role)
     VALUES (md5('dag-1')::uuid, md5('dag-data')::uuid, 'train')",
    "ANALYZE",
];

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// Runs `query` RUNS times after one warm-up; prints p50 and p99 and what it returned.
async fn measure<F, Fut>(what: &str, mut query: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let answer = query().await;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        query().await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "| {what} | {answer} | {:.1} ms | {:.1} ms |",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
}

#[tokio::main]
async fn main() {
    // As deployed: TLS on, every call with a token.
    let cluster = Cluster::coordinator_only().await;

    let started = Instant::now();
    for statement in GENERATE {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&cluster.pool)
            .await
            .unwrap();
    }
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM model_parents),
                (SELECT count(*) FROM model_tensors)",
    )
    .fetch_one(&cluster.pool)
    .await
    .unwrap();
    println!(
        "generated {} models, {} edges, {} tensor rows in {:.0} s ({CHAINS} chains {CHAIN_DEPTH} deep, a DAG of {DAG_MODELS})",
        counts.0,
        counts.1,
        counts.2,
        started.elapsed().as_secs_f64()
    );

    let client =
        ModelServiceClient::new(cluster.channel.clone()).max_decoding_message_size(64 << 20);
    println!("| question | answer size | p50 | p99 |");
    println!("|---|---|---|---|");
    let deepest = "chain-7-999";
    measure(
        "ancestors of a model 1,000 generations deep (all 999, one page)",
        || {
            let mut client = client.clone();
            async move {
                client
                    .list_ancestors(pb::ListAncestorsRequest {
                        model: deepest.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .entries
                    .len()
            }
        },
    )
    .await;
    measure(
        "… the same, basic view (ids, names, sources, depths)",
        || {
            let mut client = client.clone();
            async move {
                client
                    .list_ancestors(pb::ListAncestorsRequest {
                        model: deepest.into(),
                        view: pb::LineageView::Basic as i32,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .entries
                    .len()
            }
        },
    )
    .await;
    measure("descendants of a chain's root (all 999)", || {
        let mut client = client.clone();
        async move {
            client
                .list_descendants(pb::ListDescendantsRequest {
                    model: "chain-7-0".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
                .len()
        }
    })
    .await;
    measure(
        "descendants of the DAG's root (first page of 1,000 of ~500,000)",
        || {
            let mut client = client.clone();
            async move {
                client
                    .list_descendants(pb::ListDescendantsRequest {
                        model: "dag-1".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .entries
                    .len()
            }
        },
    )
    .await;
    measure("… the same, basic view", || {
        let mut client = client.clone();
        async move {
            client
                .list_descendants(pb::ListDescendantsRequest {
                    model: "dag-1".into(),
                    view: pb::LineageView::Basic as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
                .len()
        }
    })
    .await;
    measure(
        "descendants of a DAG model 3 levels down, 3 generations",
        || {
            let mut client = client.clone();
            async move {
                client
                    .list_descendants(pb::ListDescendantsRequest {
                        model: "dag-40".into(),
                        max_depth: 3,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .entries
                    .len()
            }
        },
    )
    .await;
    measure("path from a chain's root to its 1,000th generation", || {
        let mut client = client.clone();
        async move {
            client
                .find_path(pb::FindPathRequest {
                    from: "chain-7-0".into(),
                    to: deepest.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .steps
                .len()
        }
    })
    .await;
    measure("nearest common ancestor of two DAG leaves", || {
        let mut client = client.clone();
        async move {
            client
                .common_ancestors(pb::CommonAncestorsRequest {
                    a: "dag-499999".into(),
                    b: "dag-499990".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .ancestors
                .len()
        }
    })
    .await;
    measure(
        "nearest common ancestor in a chain (1,000 and 500 deep)",
        || {
            let mut client = client.clone();
            async move {
                client
                    .common_ancestors(pb::CommonAncestorsRequest {
                        a: deepest.into(),
                        b: "chain-7-500".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .ancestors
                    .len()
            }
        },
    )
    .await;
    measure("blame of a tensor inherited for 99 generations", || {
        let mut client = client.clone();
        async move {
            client
                .blame_tensor(pb::BlameTensorRequest {
                    model: "chain-7-999".into(),
                    tensor: "w".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .steps
                .len()
        }
    })
    .await;
    measure("impact of a dataset behind one chain (all 1,000)", || {
        let mut client = client.clone();
        async move {
            client
                .dataset_impact(pb::DatasetImpactRequest {
                    dataset: "chain-data".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries
                .len()
        }
    })
    .await;
    measure("graph around a DAG model, 2 up and 2 down (JSON)", || {
        let mut client = client.clone();
        async move {
            client
                .lineage_graph(pb::LineageGraphRequest {
                    model: "dag-4000".into(),
                    ancestors_depth: 2,
                    descendants_depth: 2,
                    format: pb::GraphFormat::Json as i32,
                })
                .await
                .unwrap()
                .into_inner()
                .nodes
                .len()
        }
    })
    .await;
}
