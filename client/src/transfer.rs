//! The client side of blob uploads, shared by the worker and the CLI: ask the coordinator
//! which blobs it lacks (which also holds them from garbage collection) and how large a
//! blob it takes, then stream only those, in chunks, one blob after another, each
//! declaring its size with its first chunk.

use crate::connection::Connection;
use bytes::Bytes;
use futures::StreamExt;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;

/// Bytes per upload message: half the default 4 MiB gRPC message limit.
pub const CHUNK_BYTES: usize = 2 << 20;

/// The largest blob the coordinator takes (`None`: it does not say).
pub async fn max_blob_bytes(channel: Connection) -> Result<Option<u64>, tonic::Status> {
    let asked = ArtifactServiceClient::new(channel)
        .missing_blobs(pb::MissingBlobsRequest { sha256: Vec::new() })
        .await?;
    Ok(asked.into_inner().max_blob_bytes)
}

/// Why a blob of `size` bytes cannot be uploaded to a coordinator that takes at most
/// `max_blob_bytes`, if it cannot: `what` names it (a file, a tensor, a hash).
pub fn too_large(what: &str, size: u64, max_blob_bytes: Option<u64>) -> Option<String> {
    let max = max_blob_bytes.filter(|&max| size > max)?;
    Some(format!(
        "{what} is {}; the coordinator takes blobs of at most {} ({max} bytes)",
        crate::display::bytes(size),
        crate::display::bytes(max),
    ))
}

/// Uploads those of `blobs` (sha256, bytes) that the coordinator lacks. `on_chunk` hears
/// (bytes sent so far, bytes to send in all) as each chunk goes out. Returns the bytes
/// sent. A blob larger than the coordinator takes is refused here, before any is sent.
pub async fn upload_missing(
    channel: Connection,
    blobs: &[(String, Bytes)],
    mut on_chunk: impl FnMut(u64, u64) + Send + 'static,
) -> Result<u64, tonic::Status> {
    let mut client = ArtifactServiceClient::new(channel);
    let wanted = pb::MissingBlobsRequest {
        sha256: blobs.iter().map(|(sha256, _)| sha256.clone()).collect(),
    };
    let answer = client.missing_blobs(wanted).await?.into_inner();
    let missing = answer.sha256;
    for (sha256, bytes) in blobs {
        if let Some(why) = too_large(
            &format!("blob {sha256}"),
            bytes.len() as u64,
            answer.max_blob_bytes,
        ) && missing.contains(sha256)
        {
            return Err(tonic::Status::invalid_argument(why));
        }
    }
    let mut chunks = Vec::new();
    let mut total = 0u64;
    let mut sent = std::collections::HashSet::new();
    for (sha256, bytes) in blobs {
        // A blob listed twice is sent once.
        if !missing.contains(sha256) || !sent.insert(sha256) {
            continue;
        }
        total += bytes.len() as u64;
        let starts: Vec<usize> = (0..bytes.len().max(1)).step_by(CHUNK_BYTES).collect();
        let count = starts.len();
        for (i, start) in starts.into_iter().enumerate() {
            let end = (start + CHUNK_BYTES).min(bytes.len());
            chunks.push(pb::UploadBlobsRequest {
                sha256: sha256.clone(),
                offset: start as u64,
                data: bytes.slice(start..end),
                last: i + 1 == count,
                total_bytes: (i == 0).then_some(bytes.len() as u64),
            });
        }
    }
    if chunks.is_empty() {
        return Ok(0);
    }
    let mut so_far = 0u64;
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        so_far += chunk.data.len() as u64;
        on_chunk(so_far, total);
        chunk
    });
    client.upload_blobs(stream).await?;
    Ok(total)
}
