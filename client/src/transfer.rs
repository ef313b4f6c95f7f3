//! The client side of blob uploads, shared by the worker and the CLI: ask the coordinator
//! which blobs it lacks (which also holds them from garbage collection), then stream only
//! those, in chunks, one blob after another.

use crate::connection::Connection;
use bytes::Bytes;
use futures::StreamExt;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;

/// Bytes per upload message: half the default 4 MiB gRPC message limit.
pub const CHUNK_BYTES: usize = 2 << 20;

/// Uploads those of `blobs` (sha256, bytes) that the coordinator lacks. `on_chunk` hears
/// (bytes sent so far, bytes to send in all) as each chunk goes out. Returns the bytes
/// sent.
pub async fn upload_missing(
    channel: Connection,
    blobs: &[(String, Bytes)],
    mut on_chunk: impl FnMut(u64, u64) + Send + 'static,
) -> Result<u64, tonic::Status> {
    let mut client = ArtifactServiceClient::new(channel);
    let wanted = pb::MissingBlobsRequest {
        sha256: blobs.iter().map(|(sha256, _)| sha256.clone()).collect(),
    };
    let missing = client.missing_blobs(wanted).await?.into_inner().sha256;
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
