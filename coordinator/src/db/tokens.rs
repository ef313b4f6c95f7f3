//! The `tokens` table: creating, listing and revoking tokens, and the look-up that turns a
//! secret's hash into a caller. Stores and compares hashes only: never a secret, and
//! never builds a prost message; who may do what is `auth.rs`'s table.

use super::Db;
use super::is_unique_violation;
use crate::domain::{Caller, Role};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A token as admins see it: never its secret.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The creating token's name.
    pub created_by: Option<String>,
}

type TokenRow = (
    Uuid,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// A constant: the queries below that splice it in take no input into their text.
const TOKEN_COLUMNS: &str = "t.id, t.name, t.role, t.created_at, t.expires_at, t.revoked_at,
     (SELECT c.name FROM tokens c WHERE c.id = t.created_by)";

fn record(row: TokenRow) -> Result<TokenRecord> {
    let (id, name, role, created_at, expires_at, revoked_at, created_by) = row;
    Ok(TokenRecord {
        id,
        name,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Internal(format!("token {id} has unknown role {role:?}")))?,
        created_at,
        expires_at,
        revoked_at,
        created_by,
    })
}

impl Db {
    /// Stores a token by its secret's hash. A name taken by a token not revoked is
    /// ALREADY_EXISTS.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        secret_sha256: &str,
        expires_at: Option<DateTime<Utc>>,
        created_by: Option<Uuid>,
    ) -> Result<TokenRecord> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_sha256, expires_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(role.as_str())
        .bind(secret_sha256)
        .bind(expires_at)
        .bind(created_by)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err, "tokens_name_active") {
                Error::AlreadyExists(format!(
                    "name: a token named {name:?} exists; revoke it or choose another name"
                ))
            } else {
                err.into()
            }
        })?;
        self.token(id).await
    }

    pub async fn token(&self, id: Uuid) -> Result<TokenRecord> {
        let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        record(row.ok_or_else(|| Error::NotFound(format!("token {id} does not exist")))?)
    }

    /// The caller a secret stands for, if it is a token neither revoked nor expired,
    /// and when it expires.
    pub async fn caller(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<(Caller, Option<DateTime<Utc>>)>> {
        let row: Option<(Uuid, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT id, name, role, expires_at FROM tokens
             WHERE secret_sha256 = $1 AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(token_id, name, role, expires_at)| {
            Role::parse(&role).map(|role| {
                (
                    Caller {
                        token_id,
                        name,
                        role,
                    },
                    expires_at,
                )
            })
        }))
    }

    pub async fn tokens(&self, include_revoked: bool) -> Result<Vec<TokenRecord>> {
        let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t
             WHERE $1 OR (t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()))
             ORDER BY t.created_at, t.name"
        )))
        .bind(include_revoked)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(record).collect()
    }

    /// Revokes the token with this id or name. The last admin token that works cannot be
    /// revoked: nobody could manage tokens after it.
    pub async fn revoke_token(&self, token: &str) -> Result<TokenRecord> {
        let mut tx = self.pool.begin().await?;
        // One revocation at a time, so two cannot each leave the other as the last admin.
        sqlx::query("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let id = Uuid::parse_str(token).ok();
        let found: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, role FROM tokens
             WHERE revoked_at IS NULL AND (id = $1 OR ($1 IS NULL AND name = $2))",
        )
        .bind(id)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, role) = found.ok_or_else(|| {
            Error::NotFound(format!(
                "token: no token that is not revoked has id or name {token:?} \
                 (`heirloom token list` shows them)"
            ))
        })?;
        if role == Role::Admin.as_str() {
            let (others,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM tokens
                 WHERE role = 'admin' AND id <> $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > now())",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "token {token:?} is the last working admin token: create another admin \
                     token first"
                )));
            }
        }
        sqlx::query("UPDATE tokens SET revoked_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::TOKENS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.token(id).await
    }

    /// Makes sure a working admin token with this secret exists: adds it under `name`
    /// unless a token with this secret exists already. Returns whether it was added.
    pub async fn ensure_admin_token(&self, secret_sha256: &str, name: &str) -> Result<bool> {
        let added = sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_sha256) VALUES ($1, $2, 'admin', $3)
             ON CONFLICT (secret_sha256) DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(secret_sha256)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(added == 1)
    }
}
