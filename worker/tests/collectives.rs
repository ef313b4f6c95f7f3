//! PyTorch's own collectives through the worker's c10d layer: ranks (threads here, each
//! with its own process group, as separate processes would have) meet at rank 0's
//! store, sum, average and broadcast real tensors, stay apart under different attempt
//! prefixes, and fail — not hang — when a peer never comes or goes away.

use heirloom_testing as support;

use heirloom_worker::train::collectives::{CollectiveError, ProcessGroup, Rendezvous};
use std::time::{Duration, Instant};
use tch::Tensor;

fn rendezvous(port: u16, prefix: &str, rank: usize, world_size: usize) -> Rendezvous {
    Rendezvous {
        store_host: "127.0.0.1".into(),
        store_port: port,
        prefix: prefix.into(),
        rank,
        world_size,
        bind_host: "127.0.0.1".into(),
        timeout: Duration::from_secs(5),
    }
}

/// Runs `work` as each of `world_size` ranks, each in a thread with its own group.
fn on_every_rank<T: Send + 'static>(
    port: u16,
    prefix: &str,
    world_size: usize,
    work: impl Fn(ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let ranks: Vec<_> = (0..world_size)
        .map(|rank| {
            let (work, meeting) = (work.clone(), rendezvous(port, prefix, rank, world_size));
            std::thread::spawn(move || work(ProcessGroup::join(&meeting).expect("join")))
        })
        .collect();
    ranks
        .into_iter()
        .map(|rank| rank.join().expect("a rank panicked"))
        .collect()
}

#[test]
fn three_ranks_sum_average_and_broadcast_real_tensors() {
    let port = support::free_port();
    let results = on_every_rank(port, "attempt-1", 3, |mut group| {
        let rank = group.rank() as f32;
        // Rank r holds r + 1 at every element: the sum is 6, the mean 2.
        let mut sum = vec![rank + 1.0; 1_000_003];
        group.all_reduce_sum(&mut sum).unwrap();
        let mut gradient = Tensor::from_slice(&[rank, 2.0 * rank, -rank]);
        group.average(&mut gradient).unwrap();
        let mut weights = Tensor::from_slice(&[rank; 4]);
        group.broadcast_tensor(&mut weights, 2).unwrap();
        group.barrier().unwrap();
        (
            sum.iter().all(|&value| value == 6.0),
            Vec::<f32>::try_from(&gradient).unwrap(),
            Vec::<f32>::try_from(&weights).unwrap(),
        )
    });
    for (summed, gradient, weights) in results {
        assert!(summed, "every element summed to 6");
        assert_eq!(
            gradient,
            vec![1.0, 2.0, -1.0],
            "the mean of 0, 1, 2 (and ×2, ×−1)"
        );
        assert_eq!(weights, vec![2.0; 4], "rank 2's weights everywhere");
    }
}

#[test]
fn groups_under_different_prefixes_on_one_store_stay_apart() {
    let port = support::free_port();
    // Two attempts' groups on the same store, at once: each sums only its own ranks.
    let attempts: Vec<_> = [("attempt-1", 1.0f32), ("attempt-2", 10.0)]
        .into_iter()
        .map(|(prefix, value)| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                on_every_rank(port, &prefix, 2, move |mut group| {
                    let mut data = vec![value; 16];
                    group.all_reduce_sum(&mut data).unwrap();
                    data[0]
                })
            })
        })
        .collect();
    let sums: Vec<Vec<f32>> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(sums, vec![vec![2.0, 2.0], vec![20.0, 20.0]]);
}

#[test]
fn a_rank_that_never_comes_fails_the_join_within_the_timeout() {
    let port = support::free_port();
    let started = Instant::now();
    let mut alone = rendezvous(port, "attempt-1", 0, 2);
    alone.timeout = Duration::from_secs(2);
    let Err(CollectiveError(message)) = ProcessGroup::join(&alone) else {
        panic!("joined a group of two alone");
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "failed after {took:?}");
    assert!(message.contains("timeout"), "{message}");
}

#[test]
fn a_peer_that_leaves_ends_the_collective_with_an_error() {
    let port = support::free_port();
    let results = on_every_rank(port, "attempt-1", 2, |mut group| {
        if group.rank() == 1 {
            drop(group); // gone, as a killed rank's connections are
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let outcome = group.all_reduce_sum(&mut [1.0; 1024]);
        Some((outcome, started.elapsed()))
    });
    let (outcome, took) = results[0].clone().expect("rank 0 tried");
    assert!(outcome.is_err(), "a sum with a departed peer succeeded");
    assert!(took < Duration::from_secs(6), "noticed after {took:?}");
}
