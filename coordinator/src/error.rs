//! The coordinator's one error type, and its one mapping to `tonic::Status`.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's token may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller no longer holds the job's lease: it must stop working on it.
    #[error("{0}")]
    LeaseLost(String),
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

impl From<heirloom_spec::Invalid> for Error {
    fn from(invalid: heirloom_spec::Invalid) -> Self {
        Error::InvalidArgument(invalid.to_string())
    }
}

impl Error {
    /// The gRPC status code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::FailedPrecondition(_) | Error::LeaseLost(_) => Code::FailedPrecondition,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Database(_) | Error::Io(_) | Error::Storage(_) | Error::Internal(_) => {
                Code::Internal
            }
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error.code() {
            Code::DataLoss => tracing::error!(error = %error, "stored data is corrupted"),
            Code::Internal => {
                tracing::error!(error = %error, "internal error");
                return Status::internal("internal error");
            }
            _ => {}
        }
        Status::new(error.code(), error.to_string())
    }
}

/// Is this the unique-violation SQLSTATE (23505) on the named constraint?
pub fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
