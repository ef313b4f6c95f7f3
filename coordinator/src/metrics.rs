//! Prometheus metrics, served in the text format on their own port (`--metrics-listen`,
//! `GET /metrics`): RPC latencies by method and status code, jobs by state and job
//! durations, connected workers, and bytes moved by the artifact service. The job counts
//! are read from the database at each scrape, so every replica reports the whole queue.

use crate::db::Db;
use crate::domain::{Job, JobState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosingLabels {
    listener: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

/// Histogram buckets in seconds, from `first` doubling `count` times.
#[derive(Clone)]
struct Buckets {
    first: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.first, 2.0, self.count))
    }
}

/// Every metric of one coordinator; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    rpc_seconds: Family<RpcLabels, Histogram, Buckets>,
    job_seconds: Family<JobLabels, Histogram, Buckets>,
    jobs: Family<StateLabels, Gauge>,
    workers_connected: Gauge,
    artifact_bytes: Family<DirectionLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_closed: Family<ClosingLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("heirloom");
        // 0.25 ms … 8 s for calls; 0.1 s … 1.8 days for jobs.
        let rpc_seconds = Family::new_with_constructor(Buckets {
            first: 0.000_25,
            count: 16,
        });
        let job_seconds = Family::new_with_constructor(Buckets {
            first: 0.1,
            count: 22,
        });
        let jobs = Family::<StateLabels, Gauge>::default();
        let workers_connected = Gauge::default();
        let artifact_bytes = Family::<DirectionLabels, Counter>::default();
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        let connections_closed = Family::<ClosingLabels, Counter>::default();
        registry.register(
            "rpc_duration_seconds",
            "gRPC calls served, by method and gRPC status code (a stream: until its answer starts)",
            rpc_seconds.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Jobs ended on this replica, from submission to their end, by kind and final state",
            job_seconds.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the database by state (queue depth: state=\"queued\")",
            jobs.clone(),
        );
        registry.register(
            "workers_connected",
            "Workers with an open assignment stream to this replica",
            workers_connected.clone(),
        );
        registry.register(
            "artifact_bytes",
            "Bytes moved by the artifact service: upload (into the store), download (to workers), export",
            artifact_bytes.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections by listener (grpc, explorer, metrics)",
            connections_open.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the coordinator closed or refused, by listener and reason: \
             evicted_at_cap, evicted_at_peer_cap, refused_at_cap, no_call_in_time, idle",
            connections_closed.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            rpc_seconds,
            job_seconds,
            jobs,
            workers_connected,
            artifact_bytes,
            connections_open,
            connections_closed,
        }
    }

    pub fn connection_opened(&self, listener: &str) {
        self.connections_open
            .get_or_create(&listener_labels(listener))
            .inc();
    }

    pub fn connection_dropped(&self, listener: &str) {
        self.connections_open
            .get_or_create(&listener_labels(listener))
            .dec();
    }

    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.connections_closed
            .get_or_create(&ClosingLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn observe_rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.rpc_seconds
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Observes the duration of `job`, just changed by a call to this replica, if it
    /// has ended.
    pub fn job_answered(&self, job: &Job) {
        if !job.state.is_final() {
            return;
        }
        let elapsed = (chrono::Utc::now() - job.created_at)
            .to_std()
            .unwrap_or_default();
        self.job_seconds
            .get_or_create(&JobLabels {
                kind: job.spec.kind.as_str().to_string(),
                state: job.state.as_str().to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a worker connected until the returned guard is dropped.
    pub fn worker_connected(&self) -> ConnectedWorker {
        self.workers_connected.inc();
        ConnectedWorker(self.workers_connected.clone())
    }

    pub fn artifact_bytes(&self, direction: &str, bytes: u64) {
        self.artifact_bytes
            .get_or_create(&DirectionLabels {
                direction: direction.to_string(),
            })
            .inc_by(bytes);
    }

    /// The metrics in Prometheus' text format, with the job counts read now.
    pub async fn render(&self, db: &Db) -> crate::Result<String> {
        let counts = db.job_counts().await?;
        for state in JobState::ALL {
            let count = counts
                .iter()
                .find(|(counted, _)| *counted == state)
                .map_or(0, |(_, count)| *count);
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.as_str().to_string(),
                })
                .set(count);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|err| crate::Error::Internal(format!("encoding metrics: {err}")))?;
        Ok(text)
    }
}

fn listener_labels(listener: &str) -> ListenerLabels {
    ListenerLabels {
        listener: listener.to_string(),
    }
}

/// Keeps a worker counted in `heirloom_workers_connected` while it lives.
pub struct ConnectedWorker(Gauge);

impl Drop for ConnectedWorker {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics endpoint, `GET /metrics`, as a router (served by `connections`).
pub fn router(metrics: Metrics, db: Db) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let scrape = move || {
        let (metrics, db) = (metrics.clone(), db.clone());
        async move {
            match metrics.render(&db).await {
                Ok(text) => (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
                Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
            }
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}
