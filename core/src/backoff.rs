//! Exponential backoff with jitter: the coordinator's retries and the worker's reconnects
//! wait this way, so that many that failed together do not come back together.

use std::hash::BuildHasher;
use std::time::Duration;

/// The delay before try number `failures + 1`: `first`, doubled for every failure after
/// the first, never more than `max`.
pub fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(max)
}

/// `delay` scaled by a random factor in [0.5, 1.5).
pub fn jittered(delay: Duration) -> Duration {
    // A randomly keyed hash of the time: random enough to spread retries, no extra crate.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.5 + unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap_with_jitter_around_it() {
        let (first, max) = (Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=5)
            .map(|n| backoff(first, max, n).as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            let delay = jittered(first);
            assert!(delay >= first / 2 && delay < first * 3 / 2, "{delay:?}");
        }
    }
}
