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
    /// Jobs leased to it or running on it.
    pub busy: u32,
}

impl ConnectedWorker {
    fn has_room(&self) -> bool {
        self.busy < self.concurrency
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
}
