//! TokenService: creating, listing and revoking tokens, and WhoAmI. The secret is made
//! here and returned once; only its hash is stored. Builds only its own `*Response`
//! messages and never speaks SQL.

use super::convert;
use crate::Services;
use crate::auth;
use crate::domain::Caller;
use crate::domain::check_name;
use crate::error::Error;
use heirloom_core::Invalid;
use heirloom_proto::v1 as pb;
use tonic::{Request, Response, Status};

pub struct TokenApi(pub Services);

/// The longest a token may be made to last: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        check_name("name", &request.name).map_err(Error::from)?;
        let role = convert::role_from_proto(request.role)?;
        if request.ttl_seconds > MAX_TTL_SECONDS {
            return Err(Error::from(Invalid::new(
                "ttl_seconds",
                format!("must be at most {MAX_TTL_SECONDS} (ten years); 0 means never expires"),
            ))
            .into());
        }
        let expires_at = (request.ttl_seconds > 0)
            .then(|| chrono::Utc::now() + chrono::Duration::seconds(request.ttl_seconds as i64));
        let secret = auth::new_secret();
        let token = self
            .0
            .db
            .create_token(
                &request.name,
                role,
                &auth::secret_sha256(&secret),
                expires_at,
                Some(caller.token_id),
            )
            .await?;
        tracing::info!(token = %token.name, role = role.as_str(), by = %caller.name, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::token_to_proto(token)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.0.db.tokens(request.get_ref().include_revoked).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(convert::token_to_proto).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > 128 {
            return Err(Error::from(Invalid::new(
                "token",
                "give the id or the name of the token to revoke",
            ))
            .into());
        }
        let revoked = self.0.db.revoke_token(&token).await?;
        // Other replicas drop theirs on the NOTIFY; this one now, before it answers.
        self.0.tokens.clear();
        tracing::info!(token = %revoked.name, by = %caller.name, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(convert::token_to_proto(revoked)),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = Caller::of(&request)?;
        let token = self.0.db.token(caller.token_id).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            token: Some(convert::token_to_proto(token)),
        }))
    }
}
