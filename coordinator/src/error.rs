//! The coordinator's errors: [`Error`], what a request can fail with, mapped in one table
//! ([`Error::code`]) to its gRPC code, from which both its `tonic::Status` and the
//! explorer's HTTP status follow; and [`StartupError`], why the coordinator could not
//! start, which never reaches a client.

use tonic::codegen::http::StatusCode;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    /// The call carries no token, or one that is unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's token may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller no longer holds the job's lease: it must stop working on it.
    #[error("{0}")]
    LeaseLost(String),
    /// The server has no such method.
    #[error("{0}")]
    Unimplemented(String),
    /// A quota is used up: the message says which, the usage, and when it frees.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Cannot answer now (the database is unreachable, the server is stopping): retry.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data no longer matches its hash.
    #[error("{0}")]
    DataLoss(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
    #[error("artifact store: {0}")]
    Storage(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<heirloom_core::Invalid> for Error {
    fn from(invalid: heirloom_core::Invalid) -> Self {
        Error::InvalidArgument(invalid.to_string())
    }
}

impl Error {
    /// The gRPC status code this error answers with: the one table every other answer
    /// (gRPC status, HTTP status) follows.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) | Error::LeaseLost(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Database(_) | Error::Io(_) | Error::Storage(_) | Error::Internal(_) => {
                Code::Internal
            }
        }
    }

    /// The HTTP status the explorer answers this error with, derived from [`Error::code`]
    /// as gRPC–HTTP gateways map them, except that a failed precondition is a conflict
    /// with the current state (409), not a bad request.
    pub fn http_status(&self) -> StatusCode {
        match self.code() {
            Code::Ok => StatusCode::OK,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": no standard code says it.
            Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the caller is told. Internal errors are logged here with their source and
    /// reach the caller as a plain `internal error`; corrupted data is logged, and told.
    pub fn public_message(&self) -> String {
        match self.code() {
            Code::DataLoss => tracing::error!(error = %self, "stored data is corrupted"),
            Code::Internal => {
                tracing::error!(error = %self, "internal error");
                return "internal error".into();
            }
            _ => {}
        }
        self.to_string()
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        Status::new(error.code(), error.public_message())
    }
}

/// Why the coordinator could not start: a setting to fix, a database it cannot use, a
/// server that would not serve. Never reaches a client (`main` prints it, with its
/// sources, and exits).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is wrong, or names a file, address or store that cannot be used; the
    /// message names the setting.
    #[error("{0}")]
    Setting(String),
    #[error("cannot use the database of --database-url")]
    Database(#[from] sqlx::Error),
    #[error("cannot bring the database's schema up to date")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot add the admin token of --admin-token-file")]
    AdminToken(#[source] Error),
    /// The gRPC server could not start serving (its TLS settings, for one).
    #[error("cannot serve gRPC")]
    Server(#[from] tonic::transport::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_one_grpc_code_and_the_http_status_that_follows() {
        let fix = || "what to fix".to_string();
        let hidden = "internal error";
        let cases = [
            (
                Error::InvalidArgument(fix()),
                Code::InvalidArgument,
                400,
                "what to fix",
            ),
            (
                Error::Unauthenticated(fix()),
                Code::Unauthenticated,
                401,
                "what to fix",
            ),
            (
                Error::PermissionDenied(fix()),
                Code::PermissionDenied,
                403,
                "what to fix",
            ),
            (Error::NotFound(fix()), Code::NotFound, 404, "what to fix"),
            (
                Error::AlreadyExists(fix()),
                Code::AlreadyExists,
                409,
                "what to fix",
            ),
            (
                Error::FailedPrecondition(fix()),
                Code::FailedPrecondition,
                409,
                "what to fix",
            ),
            (
                Error::LeaseLost(fix()),
                Code::FailedPrecondition,
                409,
                "what to fix",
            ),
            (
                Error::Unimplemented(fix()),
                Code::Unimplemented,
                501,
                "what to fix",
            ),
            (
                Error::Unavailable(fix()),
                Code::Unavailable,
                503,
                "what to fix",
            ),
            (
                Error::ResourceExhausted(fix()),
                Code::ResourceExhausted,
                429,
                "what to fix",
            ),
            (Error::DataLoss(fix()), Code::DataLoss, 500, "what to fix"),
            // Internal detail stays in the log.
            (Error::Internal(fix()), Code::Internal, 500, hidden),
            (Error::Storage(fix()), Code::Internal, 500, hidden),
            (
                Error::Io(std::io::Error::other(fix())),
                Code::Internal,
                500,
                hidden,
            ),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Code::Internal,
                500,
                hidden,
            ),
        ];
        for (error, code, http, message) in cases {
            let shown = error.to_string();
            assert_eq!(error.code(), code, "{shown}");
            assert_eq!(error.http_status().as_u16(), http, "{shown}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            assert_eq!(status.message(), message, "{shown}");
        }
    }
}
