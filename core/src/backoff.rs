//! Exponential backoff with jitter, so that many that failed together do not come back
//! together: [`retry_delay`] paces every retry a client makes (the worker's reconnection
//! and its calls about a job, resumed downloads and exports), [`backoff`] and
//! [`jittered`] the coordinator's requeueing of a failed job.

use std::hash::BuildHasher;
use std::time::Duration;

/// gRPC's connection-backoff parameters (`doc/connection-backoff.md` in grpc/grpc): the
/// first delay, its growth with every failure, the cap, and the jitter applied last.
pub const INITIAL: Duration = Duration::from_secs(1);
pub const MULTIPLIER: f64 = 1.6;
pub const MAX: Duration = Duration::from_secs(120);
pub const JITTER: f64 = 0.2;

/// How long a client waits after its `failures`-th failure in a row (counting from 1)
/// before it tries again: [`INITIAL`], times [`MULTIPLIER`] for every failure after the
/// first, at most [`MAX`], then moved by up to ±[`JITTER`] of itself, as gRPC does.
/// A thousand workers that lost their coordinator together come back spread out, and
/// each tries about seven times in its first 30 s rather than thousands.
pub fn retry_delay(failures: u32) -> Duration {
    spread(retry_delay_unjittered(failures), JITTER)
}

/// [`retry_delay`] before its jitter: 1 s, 1.6 s, 2.56 s, … 120 s.
pub fn retry_delay_unjittered(failures: u32) -> Duration {
    // 1.6^11 > 120: an exponent past that only caps again, and never overflows.
    let exponent = failures.saturating_sub(1).min(32) as i32;
    let seconds = INITIAL.as_secs_f64() * MULTIPLIER.powi(exponent);
    Duration::from_secs_f64(seconds.min(MAX.as_secs_f64()))
}

/// The delay before try number `failures + 1`: `first`, doubled for every failure after
/// the first, never more than `max`.
pub fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(max)
}

/// `delay` scaled by a random factor in [0.5, 1.5).
pub fn jittered(delay: Duration) -> Duration {
    spread(delay, 0.5)
}

/// `delay` scaled by a random factor in [1 - `jitter`, 1 + `jitter`).
fn spread(delay: Duration, jitter: f64) -> Duration {
    delay.mul_f64(1.0 - jitter + 2.0 * jitter * random_unit())
}

/// A random number in [0, 1).
fn random_unit() -> f64 {
    // A randomly keyed hash of the time: random enough to spread retries, no extra crate.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    (random >> 11) as f64 / (1u64 << 53) as f64
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

    #[test]
    fn retries_wait_as_grpc_connections_do_from_1_s_times_1_6_up_to_120_s() {
        let expected = [
            1.0,
            1.6,
            2.56,
            4.096,
            6.5536,
            10.48576,
            16.777216,
            26.8435456,
            42.94967296,
            68.719476736,
            109.9511627776,
            120.0,
            120.0,
        ];
        for (failures, expected) in (1..).zip(expected) {
            let delay = retry_delay_unjittered(failures).as_secs_f64();
            assert!(
                (delay - expected).abs() < 1e-6,
                "after {failures} failures: {delay} s, not {expected} s"
            );
        }
        assert_eq!(
            retry_delay_unjittered(0),
            INITIAL,
            "no failure counts as one"
        );
        assert_eq!(retry_delay_unjittered(u32::MAX), MAX);
    }

    #[test]
    fn retry_delays_are_jittered_within_20_percent_both_ways() {
        for failures in [1, 2, 5, 12, 40] {
            let unjittered = retry_delay_unjittered(failures);
            let delays: Vec<Duration> = (0..200).map(|_| retry_delay(failures)).collect();
            for delay in &delays {
                assert!(
                    *delay >= unjittered.mul_f64(0.8) && *delay <= unjittered.mul_f64(1.2),
                    "{delay:?} is more than 20 % from {unjittered:?}"
                );
            }
            // Spread both ways, not one fixed factor.
            assert!(delays.iter().any(|delay| *delay < unjittered.mul_f64(0.95)));
            assert!(delays.iter().any(|delay| *delay > unjittered.mul_f64(1.05)));
        }
    }
}
