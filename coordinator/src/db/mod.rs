//! Everything that speaks SQL. Each file owns the queries of one table group; the rest of
//! the coordinator sees domain types only. State changes of a job and the event that
//! records them are always written in one transaction, followed by a NOTIFY that wakes
//! dispatchers and watchers on every coordinator replica. Never builds or reads a prost
//! message.

mod datasets;
mod jobs;
mod lineage;
mod models;
mod queue;
mod quotas;
mod recipes;
mod tokens;
mod workers;

pub use jobs::Submission;
pub use lineage::{BlameStep, Graph, Page};
pub use models::CollectionLock;
pub use queue::{Claimed, NewModel};
pub use quotas::{Exceeded, Quotas, UploadCharge};
pub use recipes::NewRecipe;
pub use tokens::TokenRecord;
pub use workers::WorkerOffer;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Channel notified when a job may be claimable (submitted, requeued, a worker freed).
pub const JOBS_CHANNEL: &str = "heirloom_jobs";
/// The jobs channel's payload prefix, before a worker id, that tells that worker's
/// dispatcher a gang placed ranks on it (a bare worker id: one of its jobs ended).
pub const RANKS_PLACED: &str = "ranks:";
/// Channel notified with a job id whenever that job has a new event.
pub const EVENTS_CHANNEL: &str = "heirloom_job_events";
/// Channel notified when a token is revoked: every replica drops its cached tokens.
pub const TOKENS_CHANNEL: &str = "heirloom_tokens";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Fail fast while the database is away, instead of queueing every call.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A model or dataset as a request names it (id or name): bounded before it reaches SQL
/// or an error message.
fn check_reference(reference: &str) -> crate::Result<()> {
    if reference.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "give a model or dataset by name or id".into(),
        ));
    }
    heirloom_core::limits::check_length(
        "reference",
        reference,
        heirloom_core::limits::MAX_REFERENCE_BYTES,
    )?;
    Ok(())
}

/// `name@version` as (name, version), or a bare name as (name, None): `what` names the
/// kind of thing in the error.
fn split_version<'a>(what: &str, reference: &'a str) -> crate::Result<(&'a str, Option<i32>)> {
    Ok(heirloom_core::limits::split_version(what, reference)?)
}

/// Is this the unique-violation SQLSTATE (23505) on the named constraint?
fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
