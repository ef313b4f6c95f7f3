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
        planned_world_size: world_size,
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
    let results = on_every_rank(port, "attempt-1", 3, |group| {
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
                on_every_rank(port, &prefix, 2, move |group| {
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
    let results = on_every_rank(port, "attempt-1", 2, |group| {
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

/// A batch norm's output, input gradient, weight and bias gradients, running variance.
type Seen = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

#[test]
fn a_synchronised_batch_norm_on_two_ranks_computes_what_one_on_the_whole_batch_does() {
    let port = support::free_port();
    tch::manual_seed(3);
    let x = Tensor::randn([8, 3, 4, 4], (tch::Kind::Float, tch::Device::Cpu)) * 2.0 + 0.5;
    let upstream = Tensor::randn([8, 3, 4, 4], (tch::Kind::Float, tch::Device::Cpu));
    let affine = || {
        (
            Tensor::from_slice(&[1.5f32, 0.5, -1.0]).set_requires_grad(true),
            Tensor::from_slice(&[0.1f32, -0.2, 0.3]).set_requires_grad(true),
        )
    };
    // One process, the whole batch: PyTorch's own batch norm.
    let (weight, bias) = affine();
    let input = x.copy().set_requires_grad(true);
    let (mean, var) = (
        Tensor::zeros([3], tch::kind::FLOAT_CPU),
        Tensor::ones([3], tch::kind::FLOAT_CPU),
    );
    let y = input.batch_norm(
        Some(&weight),
        Some(&bias),
        Some(&mean),
        Some(&var),
        true,
        0.1,
        1e-5,
        false,
    );
    (&y * &upstream).sum(tch::Kind::Float).backward();
    let whole = (
        Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(),
        Vec::<f32>::try_from(input.grad().flatten(0, -1)).unwrap(),
        Vec::<f32>::try_from(weight.grad()).unwrap(),
        Vec::<f32>::try_from(bias.grad()).unwrap(),
        Vec::<f32>::try_from(&var).unwrap(),
    );
    // Two ranks, four rows each (tensors do not cross threads: their numbers do).
    let numbers = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    let (x, upstream) = (numbers(&x), numbers(&upstream));
    let halves = on_every_rank(port, "sync-bn", 2, move |group| {
        let rank = group.rank() as i64;
        let x = Tensor::from_slice(&x).reshape([8, 3, 4, 4]);
        let upstream = Tensor::from_slice(&upstream).reshape([8, 3, 4, 4]);
        let (weight, bias) = affine();
        let input = x.narrow(0, 4 * rank, 4).copy().set_requires_grad(true);
        let (mean, var) = (
            Tensor::zeros([3], tch::kind::FLOAT_CPU),
            Tensor::ones([3], tch::kind::FLOAT_CPU),
        );
        let y = group
            .sync_batch_norm(&input, [&weight, &bias], [&mean, &var], 0.1, 1e-5)
            .unwrap();
        (&y * upstream.narrow(0, 4 * rank, 4))
            .sum(tch::Kind::Float)
            .backward();
        let mut weight_grad = weight.grad();
        let mut bias_grad = bias.grad();
        group.sum(&mut weight_grad).unwrap();
        group.sum(&mut bias_grad).unwrap();
        (
            Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(input.grad().flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(&weight_grad).unwrap(),
            Vec::<f32>::try_from(&bias_grad).unwrap(),
            Vec::<f32>::try_from(&var).unwrap(),
        )
    });
    let close = |what: &str, a: &[f32], b: &[f32]| {
        let off = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert_eq!(a.len(), b.len(), "{what}");
        assert!(off < 1e-5, "{what} differs by {off}");
    };
    let joined = |part: fn(&Seen) -> &Vec<f32>| {
        halves
            .iter()
            .flat_map(|h| part(h).clone())
            .collect::<Vec<f32>>()
    };
    close("output", &whole.0, &joined(|h| &h.0));
    close("input gradient", &whole.1, &joined(|h| &h.1));
    for half in &halves {
        close("weight gradient", &whole.2, &half.2);
        close("bias gradient", &whole.3, &half.3);
        close("running variance", &whole.4, &half.4);
    }
}

#[test]
fn pytorch_s_flight_recorder_is_off_so_ranks_as_threads_do_not_race_in_it() {
    // Set by the c10d layer while the program starts (its first record into a shared map
    // is unlocked: ranks enqueueing from several threads crashed it).
    assert_eq!(std::env::var("TORCH_FR_BUFFER_SIZE").as_deref(), Ok("0"));
}
