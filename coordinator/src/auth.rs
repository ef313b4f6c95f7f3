//! Who may call what. Every call but health carries a bearer token; the token's role
//! decides which methods it may call (the one table below), and a worker token acts
//! only for the workers it registered (checked in the worker and artifact services).
//!
//! Tokens are 256 random bits; the database keeps only their SHA-256, so a leaked
//! database leaks no usable token. Each replica caches the tokens it looked up
//! ([`TokenCache`]) and drops them all on every revocation, so a revoked token is
//! refused at once, on every replica.

use crate::connections::ConnectionInfo;
use crate::db::Db;
use crate::domain::{Caller, Role};
use crate::error::Error;
use crate::notifier::{Notification, Notifier};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codegen::http;
use tonic::transport::server::TlsConnectInfo;

impl Caller {
    /// The caller of `request`: present on every method that is not open.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Error> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Internal("the call passed no authentication".into()))
    }
}

/// A new bearer secret: 256 random bits, prefixed so that secret scanners know it.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system supplies randomness");
    format!("heirloom_{}", hex::encode(bytes))
}

/// What the database keeps of a secret.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

const ANY: &[Role] = &[Role::Admin, Role::Submitter, Role::Reader, Role::Worker];
const READ: &[Role] = &[Role::Admin, Role::Submitter, Role::Reader];
const WRITE: &[Role] = &[Role::Admin, Role::Submitter];
const ADMIN: &[Role] = &[Role::Admin];
const WORKER: &[Role] = &[Role::Worker];
/// Workers download only what their leases need (checked in DownloadBlob).
const READ_OR_WORKER: &[Role] = &[Role::Admin, Role::Submitter, Role::Reader, Role::Worker];
const WRITE_OR_WORKER: &[Role] = &[Role::Admin, Role::Submitter, Role::Worker];

/// The roles that may call `path` (`/package.Service/Method`): an empty list means
/// anyone, token or not; `None`, a method this table does not know, is refused.
fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let roles = match (service, method) {
        ("grpc.health.v1.Health", "Check" | "Watch") => &[],
        (
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
        ) => READ,
        ("heirloom.v1.TokenService", "WhoAmI") => ANY,
        ("heirloom.v1.TokenService", "CreateToken" | "ListTokens" | "RevokeToken") => ADMIN,
        ("heirloom.v1.ModelService", "ImportModel") => WRITE,
        ("heirloom.v1.RecipeService", "CreateRecipe" | "DeriveRecipe") => WRITE,
        (
            "heirloom.v1.RecipeService",
            "GetRecipe" | "ListRecipes" | "DiffRecipes" | "ListRecipeModels",
        ) => READ,
        (
            "heirloom.v1.ModelService",
            "GetModel" | "ListModels" | "ListAncestors" | "ListDescendants" | "FindPath"
            | "CommonAncestors" | "LineageGraph" | "BlameTensor" | "DatasetImpact"
            | "ListModelTensors",
        ) => READ,
        ("heirloom.v1.DatasetService", "RegisterDataset") => WRITE,
        ("heirloom.v1.DatasetService", "ListDatasets") => READ,
        ("heirloom.v1.JobService", "SubmitJob" | "CancelJob") => WRITE,
        ("heirloom.v1.JobService", "GetJob" | "ListJobs" | "WatchJob" | "PlanJob") => READ,
        ("heirloom.v1.ArtifactService", "ExportModel") => READ,
        ("heirloom.v1.ArtifactService", "DownloadBlob") => READ_OR_WORKER,
        ("heirloom.v1.ArtifactService", "MissingBlobs" | "UploadBlobs") => WRITE_OR_WORKER,
        ("heirloom.v1.ArtifactService", "CollectGarbage") => ADMIN,
        (
            "heirloom.v1.WorkerService",
            "RegisterWorker" | "StreamAssignments" | "ReportProgress" | "Heartbeat"
            | "SaveCheckpoint" | "CompleteJob",
        ) => WORKER,
        _ => return None,
    };
    Some(roles)
}

/// Whether `path` (`/package.Service/Method`) is a method this server has.
pub fn is_method(path: &str) -> bool {
    allowed_roles(path).is_some()
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Who holds the token with this hash: from the cache, or the database (then cached).
pub async fn caller_for(
    db: &Db,
    cache: &TokenCache,
    secret_sha256: &str,
) -> Result<Option<Caller>, Error> {
    if let Some(caller) = cache.get(secret_sha256) {
        return Ok(Some(caller));
    }
    let found = db.caller(secret_sha256).await?;
    Ok(found.map(|(caller, expires_at)| {
        cache.put(secret_sha256.to_string(), caller.clone(), expires_at);
        caller
    }))
}

/// Checks a request's token against the table, and puts its [`Caller`] in the
/// request's extensions.
async fn authenticate<B>(layer: &AuthLayer, request: &mut http::Request<B>) -> Result<(), Error> {
    let (db, require_worker_certificates) = (&layer.db, layer.require_worker_certificates);
    let path = request.uri().path().to_string();
    let roles = allowed_roles(&path)
        .ok_or_else(|| Error::Unimplemented(format!("{path} is not a method of this server")))?;
    if roles.is_empty() {
        return Ok(());
    }
    let hash = secret_sha256(bearer_token(request.headers())?);
    let caller = caller_for(db, &layer.cache, &hash).await.map_err(|err| {
        tracing::warn!(error = %err, "cannot check a token: the database is unreachable");
        Error::Unavailable("cannot check the token now: the database is unreachable; retry".into())
    })?;
    let caller = caller.ok_or_else(|| {
        Error::Unauthenticated(
            "the token is unknown, revoked or expired: ask an admin for a new one \
                 (`heirloom token create`)"
                .into(),
        )
    })?;
    tracing::Span::current().record("caller", caller.name.as_str());
    if !roles.contains(&caller.role) {
        return Err(Error::PermissionDenied(format!(
            "{path} needs a token with role {}; this one ({}) has role {}",
            names(roles),
            caller.name,
            caller.role.as_str()
        )));
    }
    if caller.role == Role::Worker
        && require_worker_certificates
        && !has_client_certificate(request)
    {
        return Err(Error::PermissionDenied(
            "workers must connect with a client certificate signed by the coordinator's \
             --worker-client-ca (mutual TLS): pass --client-cert and --client-key"
                .into(),
        ));
    }
    request.extensions_mut().insert(caller);
    Ok(())
}

fn bearer_token(headers: &http::HeaderMap) -> Result<&str, Error> {
    let value = headers.get("authorization").ok_or_else(|| {
        Error::Unauthenticated(
            "no token: send `authorization: Bearer <token>` (the CLI and the worker read \
             --token-file or HEIRLOOM_TOKEN)"
                .into(),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })
}

fn has_client_certificate<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<TlsConnectInfo<ConnectionInfo>>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certificates| !certificates.is_empty())
}

/// The tower layer that runs [`authenticate`] before every call reaches its service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub db: Db,
    pub cache: TokenCache,
    pub require_worker_certificates: bool,
}

/// Tokens this replica looked up recently, so most calls cost no database round trip.
/// All are dropped on every revocation (the revoking replica at once, the others on the
/// NOTIFY), whenever the notification listener reconnects (revocations may have been
/// missed), and each is looked up again after [`TokenCache::MAX_AGE`] regardless.
#[derive(Debug, Clone, Default)]
pub struct TokenCache(Arc<Mutex<HashMap<String, CachedToken>>>);

#[derive(Debug)]
struct CachedToken {
    caller: Caller,
    expires_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

impl TokenCache {
    const MAX_AGE: Duration = Duration::from_secs(5);
    const MAX_ENTRIES: usize = 10_000;

    /// A cache that empties itself on every revocation `notifier` hears of.
    pub fn start(notifier: &Notifier) -> TokenCache {
        let cache = TokenCache::default();
        let mut notifications = notifier.subscribe();
        let cleared = cache.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match notifications.recv().await {
                    Ok(Notification::Tokens) => cleared.clear(),
                    // Missed notifications may have been revocations.
                    Err(RecvError::Lagged(_)) => cleared.clear(),
                    Err(RecvError::Closed) => return,
                    Ok(_) => {}
                }
            }
        });
        cache
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedToken>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, secret_sha256: &str) -> Option<Caller> {
        let entries = self.entries();
        let cached = entries.get(secret_sha256)?;
        let fresh = cached.fetched.elapsed() < Self::MAX_AGE
            && cached.expires_at.is_none_or(|at| at > Utc::now());
        fresh.then(|| cached.caller.clone())
    }

    fn put(&self, secret_sha256: String, caller: Caller, expires_at: Option<DateTime<Utc>>) {
        let mut entries = self.entries();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            secret_sha256,
            CachedToken {
                caller,
                expires_at,
                fetched: Instant::now(),
            },
        );
    }

    pub fn clear(&self) {
        self.entries().clear();
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResponseBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            match authenticate(&layer, &mut request).await {
                Ok(()) => inner.call(request).await,
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_every_service_is_in_the_table() {
        let descriptors = <prost_types::FileDescriptorSet as prost::Message>::decode(
            heirloom_proto::v1::FILE_DESCRIPTOR_SET,
        )
        .unwrap();
        let mut checked = 0;
        for file in descriptors.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let roles = allowed_roles(&path);
                    assert!(
                        roles.is_some_and(|roles| !roles.is_empty()),
                        "{path} is missing from the table or open"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 30, "only {checked} methods found");
        assert_eq!(allowed_roles("/grpc.health.v1.Health/Check"), Some(&[][..]));
        assert_eq!(
            allowed_roles("/heirloom.v1.ModelService/DropEverything"),
            None
        );
        assert_eq!(allowed_roles("no-slash"), None);
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), "heirloom_".len() + 64);
        assert_eq!(secret_sha256(&a).len(), 64);
        assert_ne!(secret_sha256(&a), secret_sha256(&b));
    }
}
