//! The artifact store: datasets and TorchScript programs as whole files, and model weights
//! per tensor — each tensor's bytes stored once under their sha256, whatever model they
//! belong to. A model's weights file is assembled from its manifest (the tensors' names,
//! dtypes, shapes and hashes) when it is exported, and every blob is checked against its
//! hash when it is read. Workers reach it only through `ArtifactService`.
//!
//! Never touches the database.

use crate::error::{Error, Result};
use heirloom_spec::{TensorInfo, sha256_hex};
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Artifacts {
    root: PathBuf,
}

/// Where uploads and partial writes live until they are checked and renamed.
pub const STAGING: &str = "staging";

fn dataset_path(sha256: &str) -> String {
    format!("datasets/{sha256}.safetensors")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Tensor,
    Dataset,
    Program,
}

/// One tensor of a model's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub info: TensorInfo,
    pub sha256: String,
}

impl Artifacts {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["datasets", "blobs", "programs", STAGING] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores a dataset's bytes; returns the relative path.
    pub async fn put_dataset(&self, sha256: &str, bytes: &[u8]) -> Result<String> {
        let relative = dataset_path(sha256);
        self.write_atomically(&relative, bytes).await?;
        Ok(relative)
    }

    /// Stores a TorchScript program; returns the relative path.
    pub async fn put_program(&self, sha256: &str, bytes: &[u8]) -> Result<String> {
        let relative = heirloom_spec::program_path(sha256);
        self.write_atomically(&relative, bytes).await?;
        Ok(relative)
    }

    /// Stores every tensor of a safetensors file as a blob named by `manifest`, the
    /// file's hashes as `heirloom_spec::tensor_hashes` gave them (tensors already stored
    /// cost nothing).
    pub async fn put_tensors(&self, weights: &[u8], manifest: &[ManifestEntry]) -> Result<()> {
        let file = safetensors::SafeTensors::deserialize(weights).map_err(|err| {
            Error::InvalidArgument(format!("weights: not a safetensors file: {err}"))
        })?;
        for entry in manifest {
            let view = file
                .tensor(&entry.info.name)
                .map_err(|err| Error::Internal(format!("tensor {}: {err}", entry.info.name)))?;
            self.write_atomically(&heirloom_spec::blob_path(&entry.sha256), view.data())
                .await?;
        }
        Ok(())
    }

    /// A tensor's bytes, checked against its hash: a corrupted blob is never served.
    pub async fn read_tensor(&self, sha256: &str) -> Result<Vec<u8>> {
        let bytes = tokio::fs::read(self.root.join(heirloom_spec::blob_path(sha256))).await?;
        if sha256_hex(&bytes) != sha256 {
            return Err(Error::DataLoss(format!(
                "the stored blob {sha256} no longer matches its hash"
            )));
        }
        Ok(bytes)
    }

    /// The safetensors file of a manifest, in canonical form: the same manifest always
    /// gives the same bytes, whoever wrote the tensors.
    pub async fn assemble(&self, manifest: &[ManifestEntry]) -> Result<Vec<u8>> {
        let mut blobs = Vec::with_capacity(manifest.len());
        for entry in manifest {
            blobs.push(self.read_tensor(&entry.sha256).await?);
        }
        let views = manifest
            .iter()
            .zip(&blobs)
            .map(|(entry, data)| {
                let dtype = match entry.info.dtype.as_str() {
                    "f32" => safetensors::Dtype::F32,
                    "i64" => safetensors::Dtype::I64,
                    other => return Err(Error::Internal(format!("unexpected dtype {other}"))),
                };
                let view = TensorView::new(dtype, entry.info.shape.clone(), data)
                    .map_err(|err| Error::Internal(format!("tensor {}: {err}", entry.info.name)))?;
                Ok((entry.info.name.as_str(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None)
            .map_err(|err| Error::Internal(format!("assembling safetensors: {err}")))
    }

    /// Where a blob of a kind lives under the root.
    pub fn blob_file(&self, kind: BlobKind, sha256: &str) -> Result<PathBuf> {
        let hex = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(Error::InvalidArgument(format!(
                "sha256: {sha256:?} is not a lowercase hex sha256"
            )));
        }
        let relative = match kind {
            BlobKind::Tensor => heirloom_spec::blob_path(sha256),
            BlobKind::Dataset => dataset_path(sha256),
            BlobKind::Program => heirloom_spec::program_path(sha256),
        };
        Ok(self.root.join(relative))
    }

    pub async fn has_tensor(&self, sha256: &str) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.blob_file(BlobKind::Tensor, sha256)?).await?)
    }

    /// Checks that every tensor of a manifest is stored with the size its dtype and shape
    /// need (its bytes matched its hash when they were stored).
    pub async fn check_stored(&self, field: &str, manifest: &[ManifestEntry]) -> Result<()> {
        for entry in manifest {
            let info = &entry.info;
            let Some(stored) = self.tensor_len(&entry.sha256).await? else {
                return Err(Error::InvalidArgument(format!(
                    "{field}: tensor {}: blob {} was never uploaded",
                    info.name, entry.sha256
                )));
            };
            let element = if info.dtype == "i64" { 8 } else { 4 };
            let expected = info.shape.iter().product::<usize>() as u64 * element;
            if stored != expected {
                return Err(Error::InvalidArgument(format!(
                    "{field}: tensor {}: blob {} holds {stored} bytes, but {} {:?} takes {expected}",
                    info.name, entry.sha256, info.dtype, info.shape
                )));
            }
        }
        Ok(())
    }

    /// The stored tensor blob's length, if it is stored.
    pub async fn tensor_len(&self, sha256: &str) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_file(BlobKind::Tensor, sha256)?).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Is the tensor stored? If so, marks it as just used, for garbage collection's age.
    pub async fn touch_tensor(&self, sha256: &str) -> Result<bool> {
        let path = self.blob_file(BlobKind::Tensor, sha256)?;
        let touched = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::options().append(true).open(path)?;
            file.set_modified(std::time::SystemTime::now())
        })
        .await
        .map_err(|err| Error::Internal(format!("touching a blob: {err}")))?;
        match touched {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// A file to receive an upload in, inside the store so the final rename is atomic.
    pub fn upload_file(&self) -> PathBuf {
        self.root
            .join(STAGING)
            .join(format!("{}.upload", uuid::Uuid::new_v4()))
    }

    /// Stores an uploaded tensor blob if its content hashes to `sha256`; otherwise
    /// deletes it and refuses: nothing corrupted is ever stored.
    pub async fn store_upload(&self, sha256: &str, upload: &Path) -> Result<()> {
        let target = self.blob_file(BlobKind::Tensor, sha256)?;
        let bytes = tokio::fs::read(upload).await?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            let _ = tokio::fs::remove_file(upload).await;
            return Err(Error::InvalidArgument(format!(
                "blob {sha256}: the uploaded bytes hash to {actual}; nothing was stored"
            )));
        }
        tokio::fs::rename(upload, target).await?;
        Ok(())
    }

    /// Deletes every stored blob whose hash `referenced` lacks and that is older than
    /// `min_age`; returns (deleted blobs, deleted bytes, kept blobs).
    pub async fn collect_garbage(
        &self,
        referenced: &std::collections::HashSet<String>,
        min_age: std::time::Duration,
        dry_run: bool,
    ) -> Result<(u64, u64, u64)> {
        let (mut deleted, mut bytes, mut kept) = (0, 0, 0);
        // staging/ holds uploads in flight and what failed ones left: old files there are
        // referenced by nothing.
        for dir in ["blobs", "datasets", "programs", STAGING] {
            let mut entries = tokio::fs::read_dir(self.root.join(dir)).await?;
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name().to_string_lossy().to_string();
                let sha256 = name.split('.').next().unwrap_or_default();
                let metadata = entry.metadata().await?;
                let age = metadata.modified()?.elapsed().unwrap_or_default();
                if referenced.contains(sha256) || age < min_age {
                    kept += 1;
                    continue;
                }
                if !dry_run {
                    tokio::fs::remove_file(entry.path()).await?;
                }
                deleted += 1;
                bytes += metadata.len();
            }
        }
        Ok((deleted, bytes, kept))
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
