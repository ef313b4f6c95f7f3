//! What each token uses of its quotas, counted in PostgreSQL so that every replica sees
//! the same: bytes uploaded in the last hour (`upload_usage`, charged by the SQL function
//! `charge_upload`, migration 000009) and blobs held from garbage collection
//! (`blob_holds`, one row per token and blob). Each check and the write it allows are one
//! step under the token's advisory lock. Never touches a blob's bytes and never builds a
//! prost message.

use super::Db;
use super::models::GARBAGE_COLLECTION_LOCK;
use crate::error::Result;
use chrono::{DateTime, SecondsFormat, Utc};
use heirloom_client::display;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// How much each token may use (`--upload-bytes-per-hour`, `--max-held-blobs`).
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub upload_bytes_per_hour: u64,
    pub max_held_blobs: u64,
}

/// The bytes one upload was charged before it began: refunded in part if it ends early.
#[derive(Debug)]
pub struct UploadCharge {
    token_id: Uuid,
    minute: DateTime<Utc>,
    bytes: u64,
}

/// A request that would take its token past a quota: which quota, the usage, and when
/// enough of it frees up (`None`: the request alone is larger than the quota).
#[derive(Debug)]
pub enum Exceeded {
    Uploads {
        sha256: String,
        asked: u64,
        uploaded: u64,
        quota: u64,
        frees_at: Option<DateTime<Utc>>,
    },
    Holds {
        asked: u64,
        held: u64,
        quota: u64,
        frees_at: Option<DateTime<Utc>>,
    },
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = |frees_at: &DateTime<Utc>| {
            let wait = (*frees_at - Utc::now()).num_seconds().max(0);
            format!(
                "{} (in {wait} s)",
                frees_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            )
        };
        match self {
            Exceeded::Uploads {
                sha256,
                asked,
                uploaded,
                quota,
                frees_at,
            } => {
                write!(
                    f,
                    "upload quota: this token uploaded {uploaded} bytes ({}) in the last hour, \
                     of the {quota} bytes ({}) it may upload per hour \
                     (--upload-bytes-per-hour); blob {sha256} of {asked} bytes does not fit",
                    display::bytes(*uploaded),
                    display::bytes(*quota),
                )?;
                match frees_at {
                    Some(at) => write!(f, "; it fits from {}", when(at)),
                    None => write!(f, " in any hour; ask for a larger quota"),
                }
            }
            Exceeded::Holds {
                asked,
                held,
                quota,
                frees_at,
            } => {
                write!(
                    f,
                    "holds quota: this token holds {held} blobs from garbage collection \
                     (MissingBlobs holds what it is asked about for an hour), of the {quota} \
                     it may hold (--max-held-blobs); {asked} more do not fit"
                )?;
                match frees_at {
                    Some(at) => write!(f, "; they fit from {}", when(at)),
                    None => write!(f, " at once; ask about fewer blobs per call"),
                }
            }
        }
    }
}

/// Bytes and counts as PostgreSQL's bigint; a setting past it means "no limit" anyway.
fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Db {
    /// Charges `token_id` the `bytes` an upload of `sha256` declares, unless its uploads of
    /// the last hour and these would pass `quota`.
    pub async fn charge_upload(
        &self,
        token_id: Uuid,
        sha256: &str,
        bytes: u64,
        quota: u64,
    ) -> Result<Result<UploadCharge, Exceeded>> {
        let (minute, uploaded, frees_at): (Option<DateTime<Utc>>, i64, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT charged_minute, uploaded, frees_at FROM charge_upload($1, $2, $3)",
            )
            .bind(token_id)
            .bind(bigint(bytes))
            .bind(bigint(quota))
            .fetch_one(&self.pool)
            .await?;
        Ok(match minute {
            Some(minute) => Ok(UploadCharge {
                token_id,
                minute,
                bytes,
            }),
            None => Err(Exceeded::Uploads {
                sha256: sha256.to_string(),
                asked: bytes,
                uploaded: uploaded.max(0) as u64,
                quota,
                frees_at,
            }),
        })
    }

    /// Ends an upload's charge at the bytes that arrived: what never came is refunded.
    pub async fn settle_upload(&self, charge: UploadCharge, received: u64) -> Result<()> {
        if received >= charge.bytes {
            return Ok(());
        }
        sqlx::query(
            "UPDATE upload_usage SET bytes = greatest(bytes - $3, 0)
              WHERE token_id = $1 AND minute = $2",
        )
        .bind(charge.token_id)
        .bind(charge.minute)
        .bind(bigint(charge.bytes - received))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Holds these blobs from garbage collection for `duration` on behalf of `token_id`
    /// (waiting out a collection in progress), unless the token would then hold more
    /// than `quota` blobs; then nothing is held.
    pub async fn hold_blobs(
        &self,
        token_id: Uuid,
        sha256: &[String],
        duration: Duration,
        quota: u64,
    ) -> Result<Result<(), Exceeded>> {
        let wanted: Vec<String> = sha256
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(Ok(()));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(GARBAGE_COLLECTION_LOCK)
            .execute(&mut *tx)
            .await?;
        // One token's holds are counted and written one call at a time, on every replica.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('heirloom holds'), hashtext($1::text))")
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        let (held, renewed): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE sha256 = ANY($2))
               FROM blob_holds WHERE token_id = $1 AND held_until > now()",
        )
        .bind(token_id)
        .bind(&wanted)
        .fetch_one(&mut *tx)
        .await?;
        let (held, renewed) = (held as u64, renewed as u64);
        let asked = wanted.len() as u64 - renewed;
        if held + asked > quota {
            // Holds end oldest first; the renewed ones stay, so count among the others.
            let frees_at = match (held - renewed + wanted.len() as u64).checked_sub(quota) {
                Some(ending) if wanted.len() as u64 <= quota => {
                    let (at,): (DateTime<Utc>,) = sqlx::query_as(
                        "SELECT held_until FROM blob_holds
                          WHERE token_id = $1 AND held_until > now()
                            AND NOT (sha256 = ANY($2))
                          ORDER BY held_until OFFSET $3 LIMIT 1",
                    )
                    .bind(token_id)
                    .bind(&wanted)
                    .bind(bigint(ending - 1))
                    .fetch_one(&mut *tx)
                    .await?;
                    Some(at)
                }
                _ => None,
            };
            return Ok(Err(Exceeded::Holds {
                asked,
                held,
                quota,
                frees_at,
            }));
        }
        sqlx::query(
            "INSERT INTO blob_holds (token_id, sha256, held_until)
             SELECT $1, unnest($2::text[]), now() + make_interval(secs => $3)
             ON CONFLICT (token_id, sha256) DO UPDATE
                SET held_until = greatest(blob_holds.held_until, excluded.held_until)",
        )
        .bind(token_id)
        .bind(&wanted)
        .bind(duration.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}
