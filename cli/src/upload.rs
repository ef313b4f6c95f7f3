//! Moving bytes with a progress bar on a terminal: uploads (the CLI's side of
//! `heirloom_client::transfer`) and the bar that exports share.

use bytes::Bytes;
use heirloom_client::connection::Connection;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A byte-count bar on standard error, hidden when that is not a terminal.
pub fn bytes_bar() -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("  {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    bar
}

/// The largest blob the coordinator takes (`None`: it does not say).
pub async fn max_blob_bytes(channel: Connection) -> anyhow::Result<Option<u64>> {
    Ok(heirloom_client::transfer::max_blob_bytes(channel).await?)
}

/// Refuses, before anything is sent, what the coordinator would refuse for its size:
/// `what` (a file, a tensor) of `size` bytes.
pub fn check_fits(what: &str, size: u64, max_blob_bytes: Option<u64>) -> anyhow::Result<()> {
    match heirloom_client::transfer::too_large(what, size, max_blob_bytes) {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Uploads those of `blobs` (sha256, bytes) the coordinator lacks; returns the bytes sent.
pub async fn upload(channel: Connection, blobs: &[(String, Bytes)]) -> anyhow::Result<u64> {
    let bar = bytes_bar();
    let progress = bar.clone();
    let sent = heirloom_client::transfer::upload_missing(channel, blobs, move |so_far, total| {
        progress.set_length(total);
        progress.set_position(so_far);
    })
    .await?;
    bar.finish_and_clear();
    Ok(sent)
}
