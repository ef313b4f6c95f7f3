//! Turns Postgres NOTIFY messages into an in-process broadcast, so dispatchers and
//! watchers on every replica wake when something changes, whichever replica changed it.
//! Listeners also poll, so a lost notification only delays them.

use crate::db::{EVENTS_CHANNEL, JOBS_CHANNEL, RANKS_PLACED, TOKENS_CHANNEL};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// A job may have become claimable (submitted, queued again): every dispatcher looks.
    Jobs,
    /// A job of this worker ended, so it has room: only its dispatcher looks.
    WorkerFreed(Uuid),
    /// Another worker's claim placed ranks of a gang on this worker: its dispatcher
    /// delivers them.
    RanksPlaced(Uuid),
    /// This job has a new event.
    JobEvent(Uuid),
    /// A token was revoked (or revocations may have been missed): drop cached tokens.
    Tokens,
}

#[derive(Debug, Clone)]
pub struct Notifier {
    sender: broadcast::Sender<Notification>,
}

impl Notifier {
    /// Starts listening; the task ends when `shutdown` resolves.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Notifier {
        let (sender, _) = broadcast::channel(1024);
        let notifier = Notifier {
            sender: sender.clone(),
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = listen(&pool, &sender) => {
                        if let Err(err) = result {
                            tracing::warn!(error = %err, "notification listener failed; reconnecting");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        notifier
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }

    /// Wakes local listeners without a round trip through Postgres.
    pub fn wake(&self, notification: Notification) {
        let _ = self.sender.send(notification);
    }
}

async fn listen(
    pool: &PgPool,
    sender: &broadcast::Sender<Notification>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([JOBS_CHANNEL, EVENTS_CHANNEL, TOKENS_CHANNEL])
        .await?;
    // Anything may have happened while not listening.
    let _ = sender.send(Notification::Jobs);
    let _ = sender.send(Notification::Tokens);
    loop {
        let message = listener.recv().await?;
        let payload = message.payload();
        let notification = match message.channel() {
            TOKENS_CHANNEL => Notification::Tokens,
            JOBS_CHANNEL if payload.is_empty() => Notification::Jobs,
            JOBS_CHANNEL => match payload.strip_prefix(RANKS_PLACED) {
                Some(worker_id) => match Uuid::parse_str(worker_id) {
                    Ok(worker_id) => Notification::RanksPlaced(worker_id),
                    Err(_) => Notification::Jobs,
                },
                None => match Uuid::parse_str(payload) {
                    Ok(worker_id) => Notification::WorkerFreed(worker_id),
                    Err(_) => Notification::Jobs,
                },
            },
            _ => match Uuid::parse_str(payload) {
                Ok(job_id) => Notification::JobEvent(job_id),
                Err(_) => continue,
            },
        };
        let _ = sender.send(notification);
    }
}
