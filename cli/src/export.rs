//! `heirloom model export`: a model's weights streamed to a file, resumed from where the
//! stream broke (after gRPC's connection backoff: 1 s, then ×1.6, ±20 %), and checked
//! against the model's hash at the end.

use anyhow::Context;
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// How many times a broken stream is resumed before giving up: with the backoff between
/// them, over about 16 s.
const RESUMES: u32 = 5;

/// What an export wrote.
#[derive(serde::Serialize)]
pub struct Exported {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

pub async fn run(channel: Connection, model: &str, out: &Path) -> anyhow::Result<Exported> {
    let mut client = ArtifactServiceClient::new(channel);
    let partial = out.with_extension("partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut hasher = Sha256::new();
    let (mut offset, mut expected) = (0u64, None);
    let bar = crate::upload::bytes_bar();
    let mut resumes = 0;
    loop {
        let request = pb::ExportModelRequest {
            model: model.to_string(),
            offset,
        };
        let streamed = async {
            let mut stream = client.export_model(request).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                anyhow::ensure!(
                    chunk.offset == offset,
                    "chunk at {} while expecting {offset}",
                    chunk.offset
                );
                file.write_all(&chunk.data)?;
                hasher.update(&chunk.data);
                offset += chunk.data.len() as u64;
                expected = Some((chunk.total_bytes, chunk.sha256));
                bar.set_length(chunk.total_bytes);
                bar.set_position(offset);
            }
            Ok(())
        }
        .await;
        match streamed {
            Ok(()) => break,
            // A refusal (unknown model, corrupted store) is final; a broken stream is not.
            Err(err) if is_final(&err) || resumes == RESUMES => return Err(err),
            Err(err) => {
                resumes += 1;
                let delay = heirloom_core::backoff::retry_delay(resumes);
                bar.println(format!(
                    "  stream broke at byte {offset} ({err}); resuming in {:.1} s",
                    delay.as_secs_f64()
                ));
                tokio::time::sleep(delay).await;
            }
        }
    }
    bar.finish_and_clear();
    let sha256 = hex::encode(hasher.finalize());
    if let Some((total, expected_sha256)) = &expected {
        anyhow::ensure!(offset == *total, "got {offset} of {total} bytes");
        anyhow::ensure!(
            &sha256 == expected_sha256,
            "the download hashes to {sha256}, not the model's {expected_sha256}"
        );
    }
    file.sync_all()?;
    std::fs::rename(&partial, out)?;
    eprintln!("wrote {} ({offset} bytes, sha256 {sha256})", out.display());
    Ok(Exported {
        path: out.display().to_string(),
        bytes: offset,
        sha256,
    })
}

fn is_final(err: &anyhow::Error) -> bool {
    err.downcast_ref::<tonic::Status>().is_some_and(|status| {
        !matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Aborted
        )
    })
}
