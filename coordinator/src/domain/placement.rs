//! Where a job can run: whether a connected worker meets a job's requirements (the rule
//! the claim applies in SQL, `claim_job` in migration 000007: a device of the kind with
//! the memory, and every label) and, for a queued job, why it still waits. Decides
//! nothing about the queue; it explains it.

use super::{Device, Requirements};
use chrono::{DateTime, SecondsFormat, Utc};
use heirloom_client::display::bytes;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A worker with an open assignment stream, and the jobs it holds now.
#[derive(Debug, Clone)]
pub struct ConnectedWorker {
    pub id: Uuid,
    pub name: String,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub concurrency: u32,
    /// Slots its leases take: its jobs, and the ranks of gangs it hosts.
    pub busy: u32,
    /// Where its ranks meet their peers; `None` for a worker that hosts no ranks of a gang
    /// (one older than gangs, or started without a collective port).
    pub collective: Option<(String, u16)>,
}

impl ConnectedWorker {
    fn has_room(&self) -> bool {
        self.busy < self.concurrency
    }

    fn free_slots(&self) -> u32 {
        self.concurrency.saturating_sub(self.busy)
    }

    /// The devices a rank meeting `requirements` may be pinned to, in the worker's order.
    fn rank_devices(&self, requirements: &Requirements) -> Vec<String> {
        let fitting: Vec<String> = self
            .devices
            .iter()
            .filter(|d| requirements.device_fits(d))
            .map(|d| d.name.clone())
            .collect();
        if fitting.is_empty() {
            vec!["cpu".to_string()]
        } else {
            fitting
        }
    }
}

/// Where the ranks of a gang go: rank 0 and as many more as fit on `claimer` (the worker
/// whose dispatcher is claiming), then the other fitting workers with the most free slots
/// first, so a job spans as few workers as fit. Each worker's ranks are pinned to its
/// fitting devices in turn. Asks for `world_size` ranks, or, when `elastic_from` is set,
/// settles for as few as that many. Refuses with why when the free slots fall short.
pub fn place_gang(
    requirements: &Requirements,
    claimer: Uuid,
    workers: &[ConnectedWorker],
    elastic_from: Option<u32>,
) -> Result<Vec<super::RankPlacement>, String> {
    let wanted = requirements.world_size;
    let fits =
        |w: &&ConnectedWorker| requirements.fit(w) && w.collective.is_some() && w.free_slots() > 0;
    let Some(first) = workers.iter().filter(fits).find(|w| w.id == claimer) else {
        return Err("the claiming worker has no free slot that fits".into());
    };
    let mut others: Vec<&ConnectedWorker> = workers
        .iter()
        .filter(fits)
        .filter(|w| w.id != claimer)
        .collect();
    others.sort_by_key(|w| (std::cmp::Reverse(w.free_slots()), w.id));
    let mut ranks = Vec::new();
    for worker in std::iter::once(first).chain(others) {
        let devices = worker.rank_devices(requirements);
        for local in 0..worker.free_slots() as usize {
            if ranks.len() == wanted as usize {
                break;
            }
            ranks.push(super::RankPlacement {
                rank: ranks.len() as u32,
                worker_id: worker.id,
                device: devices[local % devices.len()].clone(),
            });
        }
    }
    let enough = elastic_from.unwrap_or(wanted);
    if ranks.len() < enough as usize {
        return Err(gang_shortfall(requirements, workers));
    }
    Ok(ranks)
}

/// Why a gang of `requirements.world_size` ranks cannot be placed on `workers` now.
pub fn gang_shortfall(requirements: &Requirements, workers: &[ConnectedWorker]) -> String {
    let fitting: Vec<&ConnectedWorker> = workers
        .iter()
        .filter(|w| requirements.fit(w) && w.collective.is_some())
        .collect();
    let slots: u32 = fitting.iter().map(|w| w.concurrency).sum();
    let free: u32 = fitting.iter().map(|w| w.free_slots()).sum();
    let wanted = requirements.world_size;
    if slots < wanted {
        format!(
            "needs {wanted} ranks at once, but the connected workers that fit offer {slots} {} \
             in all: start more workers (or give them more --concurrency)",
            plural(slots as usize, "slot", "slots")
        )
    } else {
        format!(
            "waiting for {wanted} free slots at once: {free} of the {slots} that fit {} free",
            plural(free as usize, "is", "are")
        )
    }
}

/// `cuda` of `cuda:0`: the kind a requirement names.
fn device_kind(device: &Device) -> &str {
    device.name.split(':').next().unwrap_or_default()
}

impl Requirements {
    fn kind_fits(&self, device: &Device) -> bool {
        self.device.is_empty() || device_kind(device) == self.device
    }

    fn device_fits(&self, device: &Device) -> bool {
        self.kind_fits(device) && device.memory_bytes >= self.min_device_memory_bytes
    }

    fn label_fits(&self, worker: &ConnectedWorker, key: &str, value: &str) -> bool {
        worker.labels.get(key).map(String::as_str) == Some(value)
    }

    /// Whether the claim would give a job with these requirements to `worker` (room
    /// aside).
    pub fn fit(&self, worker: &ConnectedWorker) -> bool {
        let labels = self
            .labels
            .iter()
            .all(|(key, value)| self.label_fits(worker, key, value));
        let any_device = self.device.is_empty() && self.min_device_memory_bytes == 0;
        labels && (any_device || worker.devices.iter().any(|d| self.device_fits(d)))
    }

    /// The requirements, for a message: `a cuda device with at least 16.0 GiB`.
    fn device_wanted(&self) -> String {
        let kind = match self.device.as_str() {
            "" => "a device".to_string(),
            kind => format!("a {kind} device"),
        };
        match self.min_device_memory_bytes {
            0 => kind,
            memory => format!("{kind} with at least {}", bytes(memory)),
        }
    }
}

/// Why a queued job is not leased yet, from its requirements, the end of its retry
/// backoff (if that lies ahead) and the workers connected now: every reason that holds,
/// `; `-separated. A job the next claim should take says so.
pub fn waiting_reason(
    requirements: &Requirements,
    backoff_until: Option<DateTime<Utc>>,
    workers: &[ConnectedWorker],
) -> String {
    let mut reasons = Vec::new();
    if let Some(until) = backoff_until {
        reasons.push(format!(
            "waiting for its retry backoff (until {})",
            until.to_rfc3339_opts(SecondsFormat::Millis, true)
        ));
    }
    if workers.is_empty() {
        reasons.push("no worker is connected".to_string());
        return reasons.join("; ");
    }
    let fitting: Vec<&ConnectedWorker> = workers.iter().filter(|w| requirements.fit(w)).collect();
    if fitting.is_empty() {
        reasons.extend(unmet(requirements, workers));
        return reasons.join("; ");
    }
    if !reasons.is_empty() {
        return reasons.join("; ");
    }
    if requirements.world_size > 1 {
        let free: u32 = fitting
            .iter()
            .filter(|w| w.collective.is_some())
            .map(|w| w.free_slots())
            .sum();
        if free >= requirements.world_size {
            return format!(
                "next to be leased: {free} free slots that fit, for {} ranks",
                requirements.world_size
            );
        }
        return gang_shortfall(requirements, workers);
    }
    let free = fitting.iter().filter(|w| w.has_room()).count();
    let fit = fitting.len();
    if free == 0 && fit == 1 {
        "waiting for a free worker: the one connected worker that fits is busy".to_string()
    } else if free == 0 {
        format!("waiting for a free worker: {fit} connected workers fit, all busy")
    } else {
        format!(
            "next to be leased: {free} connected {} that fit {} room",
            plural(free, "worker", "workers"),
            plural(free, "has", "have")
        )
    }
}

/// What no connected worker offers: each requirement that none meets on its own, or, when
/// each is met somewhere, that none meets them all.
fn unmet(requirements: &Requirements, workers: &[ConnectedWorker]) -> Vec<String> {
    let devices = || workers.iter().flat_map(|w| w.devices.iter());
    let mut reasons = Vec::new();
    if !requirements.device.is_empty() && !devices().any(|d| requirements.kind_fits(d)) {
        reasons.push(format!(
            "no connected worker has a {} device",
            requirements.device
        ));
    } else if requirements.min_device_memory_bytes > 0
        && !devices().any(|d| requirements.device_fits(d))
    {
        let largest = devices()
            .filter(|d| requirements.kind_fits(d))
            .map(|d| d.memory_bytes)
            .max()
            .unwrap_or(0);
        reasons.push(format!(
            "no connected worker has {} (the largest offers {})",
            requirements.device_wanted(),
            bytes(largest)
        ));
    }
    for (key, value) in &requirements.labels {
        if !workers
            .iter()
            .any(|w| requirements.label_fits(w, key, value))
        {
            reasons.push(format!("no connected worker has label {key}={value}"));
        }
    }
    if reasons.is_empty() {
        let mut wanted = Vec::new();
        if !requirements.device.is_empty() || requirements.min_device_memory_bytes > 0 {
            wanted.push(requirements.device_wanted());
        }
        wanted.extend(
            requirements
                .labels
                .iter()
                .map(|(key, value)| format!("label {key}={value}")),
        );
        reasons.push(format!(
            "no connected worker has everything it requires at once: {}",
            wanted.join(", ")
        ));
    }
    reasons
}

fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(devices: &[(&str, u64)], labels: &[(&str, &str)], busy: u32) -> ConnectedWorker {
        ConnectedWorker {
            id: Uuid::new_v4(),
            name: "w".into(),
            devices: devices
                .iter()
                .map(|(name, memory_bytes)| Device {
                    name: name.to_string(),
                    memory_bytes: *memory_bytes,
                })
                .collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            concurrency: 1,
            busy,
            collective: Some(("127.0.0.1".into(), 29500)),
        }
    }

    fn needs(device: &str, memory: u64, labels: &[(&str, &str)]) -> Requirements {
        Requirements {
            device: device.into(),
            min_device_memory_bytes: memory,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Requirements::default()
        }
    }

    fn check(requirements: Requirements, workers: &[ConnectedWorker], expected: &str) {
        assert_eq!(waiting_reason(&requirements, None, workers), expected);
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_waiting_job_names_what_no_worker_offers() {
        let cpu = worker(&[("cpu", 0)], &[("zone", "b")], 0);
        let gpu = worker(&[("cuda:0", 8 * GIB)], &[("zone", "a")], 0);
        check(needs("", 0, &[]), &[], "no worker is connected");
        check(
            needs("cuda", 0, &[]),
            std::slice::from_ref(&cpu),
            "no connected worker has a cuda device",
        );
        check(
            needs("", 0, &[("zone", "a")]),
            std::slice::from_ref(&cpu),
            "no connected worker has label zone=a",
        );
        check(
            needs("cuda", 0, &[("zone", "c"), ("pool", "x")]),
            std::slice::from_ref(&cpu),
            "no connected worker has a cuda device; no connected worker has label pool=x; \
             no connected worker has label zone=c",
        );
        check(
            needs("cuda", 16 * GIB, &[]),
            &[cpu.clone(), gpu.clone()],
            "no connected worker has a cuda device with at least 16.0 GiB \
             (the largest offers 8.0 GiB)",
        );
        check(
            needs("cuda", 0, &[("zone", "b")]),
            &[cpu.clone(), gpu.clone()],
            "no connected worker has everything it requires at once: a cuda device, \
             label zone=b",
        );
        check(
            needs("cuda", 4 * GIB, &[("zone", "a")]),
            &[
                cpu.clone(),
                worker(&[("cuda:1", 8 * GIB)], &[("zone", "a")], 1),
            ],
            "waiting for a free worker: the one connected worker that fits is busy",
        );
        check(
            needs("", 0, &[]),
            &[cpu.clone(), gpu.clone()],
            "next to be leased: 2 connected workers that fit have room",
        );
    }

    #[test]
    fn a_backoff_comes_first() {
        let until = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let cpu = worker(&[("cpu", 0)], &[], 0);
        let backoff = "waiting for its retry backoff (until 2030-01-02T03:04:05.000Z)";
        assert_eq!(
            waiting_reason(&needs("", 0, &[]), Some(until), std::slice::from_ref(&cpu)),
            backoff
        );
        assert_eq!(
            waiting_reason(&needs("cuda", 0, &[]), Some(until), &[cpu]),
            format!("{backoff}; no connected worker has a cuda device")
        );
    }

    fn cpu_slots(concurrency: u32, busy: u32) -> ConnectedWorker {
        ConnectedWorker {
            concurrency,
            ..worker(&[("cpu", 0)], &[], busy)
        }
    }

    fn ranks(world_size: u32) -> Requirements {
        Requirements {
            world_size,
            min_ranks: world_size,
            ..Requirements::default()
        }
    }

    #[test]
    fn a_gang_packs_onto_the_claimer_then_the_roomiest_workers() {
        let (claimer, roomy, tight) = (cpu_slots(2, 0), cpu_slots(4, 1), cpu_slots(2, 1));
        let workers = [tight.clone(), claimer.clone(), roomy.clone()];
        let placed = place_gang(&ranks(4), claimer.id, &workers, None).unwrap();
        let hosts: Vec<Uuid> = placed.iter().map(|p| p.worker_id).collect();
        assert_eq!(hosts, [claimer.id, claimer.id, roomy.id, roomy.id]);
        assert_eq!(
            placed.iter().map(|p| p.rank).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(placed.iter().all(|p| p.device == "cpu"));
    }

    #[test]
    fn a_gang_that_does_not_fit_takes_nothing_and_says_why() {
        let (claimer, other) = (cpu_slots(1, 0), cpu_slots(2, 1));
        let workers = [claimer.clone(), other];
        let refused = place_gang(&ranks(3), claimer.id, &workers, None).unwrap_err();
        assert_eq!(
            refused,
            "waiting for 3 free slots at once: 2 of the 3 that fit are free"
        );
        let too_big = place_gang(&ranks(5), claimer.id, &workers, None).unwrap_err();
        assert!(too_big.starts_with(
            "needs 5 ranks at once, but the connected workers that fit offer 3 slots"
        ));
        // Elastic: an attempt after a failure settles for what there is.
        let placed = place_gang(&ranks(3), claimer.id, &workers, Some(1)).unwrap();
        assert_eq!(placed.len(), 2);
    }

    #[test]
    fn gang_ranks_take_one_gpu_each() {
        let gpus = ConnectedWorker {
            concurrency: 2,
            ..worker(&[("cuda:0", 80 * GIB), ("cuda:1", 80 * GIB)], &[], 0)
        };
        let needs_cuda = Requirements {
            device: "cuda".into(),
            ..ranks(2)
        };
        let placed = place_gang(&needs_cuda, gpus.id, std::slice::from_ref(&gpus), None).unwrap();
        assert_eq!(
            placed.iter().map(|p| p.device.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1"]
        );
    }

    #[test]
    fn a_worker_without_a_collective_port_hosts_no_rank() {
        let claimer = ConnectedWorker {
            collective: None,
            ..cpu_slots(2, 0)
        };
        assert!(place_gang(&ranks(2), claimer.id, &[claimer], None).is_err());
    }
}
