//! The worker's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job cannot succeed as specified (bad data, shapes that disagree); retrying
    /// will not help.
    #[error("{0}")]
    InvalidJob(String),
    #[error("job cancelled")]
    Cancelled,
    /// The worker is draining: the job checkpointed (if it trained at all) and stopped.
    #[error("job handed back: the worker is draining")]
    Drained,
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("artifact directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("cannot reach the coordinator: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A rank of a data-parallel job failed or left: the attempt ends on every rank.
    #[error("{0}")]
    Collective(#[from] crate::train::collectives::CollectiveError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether another attempt, perhaps on another worker, could succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::InvalidJob(_))
    }
}
