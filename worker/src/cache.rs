//! The worker's side of the artifact store: a local cache of blobs keyed by their
//! sha256, filled over gRPC (downloads resume from where a broken stream stopped, after
//! gRPC's connection backoff, and every blob is checked against its hash before it is
//! kept), and uploads of only the tensors the coordinator lacks.

use crate::error::{Error, Result};
use bytes::Bytes;
use heirloom_client::connection::Connection;
use heirloom_client::transfer::upload_missing;
use heirloom_core::backoff;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// How many times a broken download is resumed before the job fails: with the backoff
/// between them, over about 16 s.
const RESUMES: u32 = 5;

/// A file to write `path` into before renaming it there: named per process and per
/// write, so neither other workers sharing the cache nor this worker's other jobs
/// fetching the same blob ever write into it.
fn partial_path(path: &Path) -> PathBuf {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("{}-{write}.partial", std::process::id()))
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    channel: Connection,
    client: ArtifactServiceClient<Connection>,
}

impl Cache {
    pub fn open(root: &Path, channel: Connection) -> Result<Cache> {
        for dir in ["blobs", "staging"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            client: ArtifactServiceClient::new(channel.clone()),
            channel,
        })
    }

    /// Where a blob lives in the cache. Its name must be a sha256: an assignment that
    /// names anything else (a path) is refused before it touches the file system.
    fn blob_path(&self, sha256: &str) -> Result<PathBuf> {
        heirloom_core::limits::check_sha256("blob", sha256)
            .map_err(|err| Error::InvalidJob(err.to_string()))?;
        Ok(self.root.join("blobs").join(sha256))
    }

    /// Where the worker writes what it trains before uploading it.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The blob's local path, downloading it first unless it is cached.
    pub async fn fetch(&self, sha256: &str) -> Result<PathBuf> {
        let path = self.blob_path(sha256)?;
        if tokio::fs::try_exists(&path).await? {
            return Ok(path);
        }
        // Named per process: workers sharing a cache never write into each other's files.
        let partial = partial_path(&path);
        // A thread of its own hashes and writes what arrives while the next chunk is
        // received, so the blob is checked without reading it back.
        let (chunks, mut arriving) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let writer = {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                use std::io::Write;
                let mut file = std::fs::File::create(&partial)?;
                let mut hasher = Sha256::new();
                while let Some(chunk) = arriving.blocking_recv() {
                    hasher.update(&chunk);
                    file.write_all(&chunk)?;
                }
                Ok(hex::encode(hasher.finalize()))
            })
        };
        let mut offset = 0u64;
        let mut resumes = 0;
        loop {
            let request = pb::DownloadBlobRequest {
                sha256: sha256.to_string(),
                offset,
            };
            let result: Result<(), tonic::Status> = async {
                let mut stream = self
                    .client
                    .clone()
                    .download_blob(request)
                    .await?
                    .into_inner();
                while let Some(chunk) = stream.message().await? {
                    offset += chunk.data.len() as u64;
                    if chunks.send(chunk.data).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(status) if resumes < RESUMES && status.code() == tonic::Code::Unavailable => {
                    resumes += 1;
                    let delay = backoff::retry_delay(resumes);
                    tracing::warn!(sha256, offset, %status, retry_in = ?delay, "download broke; resuming");
                    tokio::time::sleep(delay).await;
                }
                Err(status) => {
                    drop(chunks);
                    let _ = writer.await;
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(status.into());
                }
            }
        }
        drop(chunks);
        let written = writer
            .await
            .map_err(|err| Error::InvalidJob(format!("the blob writer panicked: {err}")))?;
        if written? != sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Error::InvalidJob(format!(
                "blob {sha256} arrived corrupted"
            )));
        }
        tokio::fs::rename(&partial, &path).await?;
        Ok(path)
    }

    /// Keeps tensor blobs this worker made, so later jobs need not download them.
    pub async fn keep(&self, blobs: &[(String, Bytes)]) -> Result<()> {
        for (sha256, bytes) in blobs {
            let path = self.blob_path(sha256)?;
            if !tokio::fs::try_exists(&path).await? {
                let partial = partial_path(&path);
                tokio::fs::write(&partial, bytes).await?;
                tokio::fs::rename(&partial, &path).await?;
            }
        }
        Ok(())
    }

    /// Uploads the blobs the coordinator does not hold yet; returns how many bytes moved.
    pub async fn upload(&self, blobs: &[(String, Bytes)]) -> Result<u64> {
        Ok(upload_missing(self.channel.clone(), blobs, |_, _| {}).await?)
    }
}
