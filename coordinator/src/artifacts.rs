//! The shared artifact directory: datasets and model weights, each stored under its
//! sha256 and written atomically. Coordinator and workers see the same directory; the
//! paths that cross the wire are relative to its root.
//!
//! Never touches the database.

use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Artifacts {
    root: PathBuf,
}

/// Where workers write the weights they produce, before the coordinator checks them.
pub const STAGING: &str = "staging";

impl Artifacts {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["datasets", "models", "programs", STAGING] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores a dataset's bytes; returns the relative path.
    pub async fn put_dataset(&self, sha256: &str, bytes: &[u8]) -> Result<String> {
        let relative = format!("datasets/{sha256}.safetensors");
        self.write_atomically(&relative, bytes).await?;
        Ok(relative)
    }

    /// Stores model weights; returns the relative path.
    pub async fn put_weights(&self, sha256: &str, bytes: &[u8]) -> Result<String> {
        let relative = weights_path(sha256);
        self.write_atomically(&relative, bytes).await?;
        Ok(relative)
    }

    /// Stores a TorchScript program; returns the relative path.
    pub async fn put_program(&self, sha256: &str, bytes: &[u8]) -> Result<String> {
        let relative = heirloom_spec::program_path(sha256);
        self.write_atomically(&relative, bytes).await?;
        Ok(relative)
    }

    /// Reads a file a worker staged; refuses any path outside the staging directory.
    pub async fn read_staged(&self, relative: &str) -> Result<Vec<u8>> {
        let path = Path::new(relative);
        let inside_staging = path.starts_with(STAGING)
            && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside_staging {
            return Err(Error::InvalidArgument(format!(
                "output.weights_path: {relative:?} must be a relative path under {STAGING}/"
            )));
        }
        tokio::fs::read(self.root.join(path)).await.map_err(|err| {
            Error::InvalidArgument(format!(
                "output.weights_path: cannot read {relative:?}: {err}"
            ))
        })
    }

    pub async fn remove_staged(&self, relative: &str) {
        // Best effort: a leftover staging file wastes space but breaks nothing.
        let _ = tokio::fs::remove_file(self.root.join(relative)).await;
    }

    async fn write_atomically(&self, relative: &str, bytes: &[u8]) -> Result<()> {
        let target = self.root.join(relative);
        if tokio::fs::try_exists(&target).await? {
            return Ok(()); // content-addressed: the same name holds the same bytes
        }
        let temporary = self
            .root
            .join(STAGING)
            .join(format!("{}.partial", uuid::Uuid::new_v4()));
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, &target).await?;
        Ok(())
    }
}

pub fn weights_path(sha256: &str) -> String {
    format!("models/{sha256}.safetensors")
}
