//! `heirloom token …` (access tokens) and `heirloom certs` (local TLS certificates).

use crate::output::{Output, outln};
use clap::{Args, Subcommand, ValueEnum};
use heirloom_client::certificates;
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::token_service_client::TokenServiceClient;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Command {
    /// Make a token; its secret is printed once, alone on stdout (save it to a file).
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Seconds until it expires (default: never).
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u64,
    },
    /// List tokens (never their secrets).
    List {
        /// Also list revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id or name: refused at once from then on.
    Revoke { token: String },
    /// Show the name and role of the token this command runs with.
    Whoami,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Admin,
    Submitter,
    Reader,
    Worker,
}

#[derive(Args)]
pub struct Certs {
    /// The directory to write ca.pem, coordinator.pem/.key and worker.pem/.key into.
    dir: PathBuf,
    /// A name or IP address the coordinator is reached by (repeat the flag for more).
    #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
    hosts: Vec<String>,
}

pub fn write_certificates(certs: &Certs, output: Output) -> anyhow::Result<()> {
    certificates::write_all(&certs.dir, &certs.hosts)
        .map_err(|err| anyhow::anyhow!("writing certificates to {}: {err}", certs.dir.display()))?;
    let dir = certs.dir.display();
    let file = |name: &str| certs.dir.join(name).display().to_string();
    let written = serde_json::json!({
        "hosts": certs.hosts,
        "ca_cert": file(certificates::CA_CERT),
        "coordinator_cert": file(certificates::SERVER_CERT),
        "coordinator_key": file(certificates::SERVER_KEY),
        "worker_cert": file(certificates::CLIENT_CERT),
        "worker_key": file(certificates::CLIENT_KEY),
    });
    output.print(&written, || {
        print_certificate_flags(certs, &dir.to_string())
    })
}

fn print_certificate_flags(certs: &Certs, dir: &str) {
    outln!(
        "wrote a new CA and certificates for {} into {dir}",
        certs.hosts.join(", ")
    );
    outln!(
        "coordinator: --tls-cert {dir}/{} --tls-key {dir}/{} [--worker-client-ca {dir}/{}]",
        certificates::SERVER_CERT,
        certificates::SERVER_KEY,
        certificates::CA_CERT
    );
    outln!("clients:     --ca-cert {dir}/{}", certificates::CA_CERT);
    outln!(
        "workers:     --ca-cert {dir}/{} --client-cert {dir}/{} --client-key {dir}/{}",
        certificates::CA_CERT,
        certificates::CLIENT_CERT,
        certificates::CLIENT_KEY
    );
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = TokenServiceClient::new(channel);
    match command {
        Command::Create {
            name,
            role,
            ttl_seconds,
        } => {
            let role = match role {
                Role::Admin => pb::Role::Admin,
                Role::Submitter => pb::Role::Submitter,
                Role::Reader => pb::Role::Reader,
                Role::Worker => pb::Role::Worker,
            };
            let created = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    role: role.into(),
                    ttl_seconds,
                })
                .await?
                .into_inner();
            output.print(&created, || {
                let token = created.token.clone().unwrap_or_default();
                eprintln!(
                    "created token {} ({}, role {}); its secret, shown only now:",
                    token.name,
                    token.id,
                    role_name(token.role)
                );
                outln!("{}", created.secret);
            })?;
        }
        Command::List { all } => {
            let listed = client
                .list_tokens(pb::ListTokensRequest {
                    include_revoked: all,
                })
                .await?
                .into_inner();
            output.print(&listed, || print_table(&listed.tokens))?;
        }
        Command::Revoke { token } => {
            let revoked = client
                .revoke_token(pb::RevokeTokenRequest { token })
                .await?
                .into_inner()
                .token
                .unwrap_or_default();
            output.print(&revoked, || {
                outln!("revoked token {} ({})", revoked.name, revoked.id)
            })?;
        }
        Command::Whoami => {
            let token = client
                .who_am_i(pb::WhoAmIRequest {})
                .await?
                .into_inner()
                .token
                .unwrap_or_default();
            output.print(&token, || {
                outln!(
                    "{} (role {}, token {})",
                    token.name,
                    role_name(token.role),
                    token.id
                )
            })?;
        }
    }
    Ok(())
}

fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Admin) => "admin",
        Ok(pb::Role::Submitter) => "submitter",
        Ok(pb::Role::Reader) => "reader",
        Ok(pb::Role::Worker) => "worker",
        _ => "unknown",
    }
}

fn print_table(tokens: &[pb::Token]) {
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|token| {
            let state = if !token.revoked_at.is_empty() {
                format!("revoked {}", token.revoked_at)
            } else if !token.expires_at.is_empty() {
                format!("expires {}", token.expires_at)
            } else {
                "active".to_string()
            };
            [
                token.name.clone(),
                role_name(token.role).to_string(),
                token.id.clone(),
                token.created_at.clone(),
                state,
            ]
        })
        .collect();
    let header = ["NAME", "ROLE", "ID", "CREATED", "STATE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        outln!("{}", cells.join("  ").trim_end());
    }
}
