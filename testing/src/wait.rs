//! Waiting for a condition instead of sleeping for a guess: a test that waits for
//! something to happen polls for it, and fails with what it waited for when it never
//! does.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How often a condition is asked again.
const POLL: Duration = Duration::from_millis(25);

/// Polls `condition` every 25 ms until it is true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let ready = condition();
        async move { ready.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 25 ms until it gives a value; returns it, or panics naming `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let asked = AtomicUsize::new(0);
        wait_until(Duration::from_secs(5), "asked three times", || async {
            asked.fetch_add(1, Ordering::SeqCst) + 1 >= 3
        })
        .await;
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn returns_what_the_probe_found() {
        let asked = AtomicUsize::new(0);
        let found = wait_for(Duration::from_secs(5), "a value", || async {
            let n = asked.fetch_add(1, Ordering::SeqCst);
            (n == 2).then_some(n * 10)
        })
        .await;
        assert_eq!(found, 20);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until the impossible")]
    async fn panics_with_what_it_waited_for_after_the_timeout() {
        wait_until(Duration::from_millis(100), "the impossible", || async {
            false
        })
        .await;
    }
}
