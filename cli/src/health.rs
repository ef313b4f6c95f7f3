//! `heirloom health`: asks the coordinator's `grpc.health.v1` service whether it serves,
//! for probes (Kubernetes `exec`, compose `healthcheck`) and people. Needs no token.

use crate::output::{Output, outln};
use heirloom_client::connection::Connection;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(clap::Args)]
pub struct Health {
    /// A service to ask about (e.g. `heirloom.v1.JobService`); the whole server if not given.
    #[arg(long, default_value = "")]
    service: String,
}

/// Prints the status; an error (so exit status 1) unless it is SERVING.
pub async fn run(channel: Connection, health: Health, output: Output) -> anyhow::Result<()> {
    let status = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: health.service,
        })
        .await?
        .into_inner()
        .status();
    output.print(
        &serde_json::json!({ "status": status.as_str_name() }),
        || outln!("{}", status.as_str_name()),
    )?;
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "the coordinator is not serving: its database may be unreachable (see its logs)"
    );
    Ok(())
}
