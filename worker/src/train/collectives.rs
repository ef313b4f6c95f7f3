//! PyTorch's own collectives, for one job trained on several ranks: c10d's TCPStore
//! (rank 0 hosts it) for the rendezvous, under a prefix per attempt so that a rank of an
//! earlier attempt cannot join, and ProcessGroupGloo for all-reduce, broadcast and
//! barrier on CPU tensors. `tch` does not expose c10d, so `native/c10d.cpp` (compiled by
//! `build.rs` against the libtorch `tch` links) offers a narrow C surface, and this
//! module is the only Rust that calls it.
//!
//! Every collective blocks until it is done on every rank, or fails: a peer that dies
//! ends it within milliseconds (its connection resets), one that stalls within the
//! group's timeout. Collectives must be issued in the same order on every rank.

use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr::NonNull;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Why a collective (or joining the group) failed: c10d's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("collective: {0}")]
pub struct CollectiveError(pub String);

/// Where and how the ranks of one attempt meet.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// The address of rank 0, which hosts the store.
    pub store_host: String,
    pub store_port: u16,
    /// Namespaces every store key: a fresh one per attempt.
    pub prefix: String,
    pub rank: usize,
    pub world_size: usize,
    /// The world size the job asked for; more than `world_size` when an elastic attempt
    /// runs on fewer ranks.
    pub planned_world_size: usize,
    /// The address this rank's Gloo connections bind to.
    pub bind_host: String,
    /// Bounds joining, and every collective.
    pub timeout: Duration,
}

impl Rendezvous {
    /// The most rows of a global batch of `batch_size` a rank trains on at once: its
    /// share when every planned rank runs.
    pub fn micro_batch(&self, batch_size: i64) -> i64 {
        let planned = self.planned_world_size.max(self.world_size).max(1) as i64;
        (batch_size + planned - 1) / planned
    }
}

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn hl_group_new(
        store_host: *const c_char,
        store_port: u16,
        is_master: c_int,
        prefix: *const c_char,
        rank: c_int,
        world_size: c_int,
        device_host: *const c_char,
        timeout_ms: c_int,
        error: *mut c_char,
        error_len: usize,
    ) -> *mut RawGroup;
    fn hl_allreduce_sum_f32(
        group: *mut RawGroup,
        data: *mut f32,
        count: i64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn hl_broadcast_f32(
        group: *mut RawGroup,
        data: *mut f32,
        count: i64,
        root: c_int,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn hl_barrier(group: *mut RawGroup, error: *mut c_char, error_len: usize) -> c_int;
    fn hl_sync_batch_norm(
        group: *mut RawGroup,
        input: *mut torch_sys::C_tensor,
        weight: *mut torch_sys::C_tensor,
        bias: *mut torch_sys::C_tensor,
        running_mean: *mut torch_sys::C_tensor,
        running_var: *mut torch_sys::C_tensor,
        momentum: f64,
        eps: f64,
        error: *mut c_char,
        error_len: usize,
    ) -> *mut torch_sys::C_tensor;
    fn hl_group_free(group: *mut RawGroup);
}

const ERROR_BYTES: usize = 4096;

/// One rank's membership of a process group.
pub struct ProcessGroup {
    raw: NonNull<RawGroup>,
    rank: usize,
    world_size: usize,
}

// c10d's process group may be used from any thread: ProcessGroupGloo queues each call's
// work, and the collectives of one group are issued in the same order on every rank.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group `rendezvous` describes: rank 0 starts the store, every rank
    /// waits until all `world_size` have joined (or the timeout passes).
    pub fn join(rendezvous: &Rendezvous) -> Result<ProcessGroup, CollectiveError> {
        let text = |value: &str| {
            CString::new(value).map_err(|_| CollectiveError(format!("{value:?} holds a NUL")))
        };
        let number = |value: u128, what: &str| {
            c_int::try_from(value)
                .map_err(|_| CollectiveError(format!("{what} {value} is too large")))
        };
        let (host, prefix, bind) = (
            text(&rendezvous.store_host)?,
            text(&rendezvous.prefix)?,
            text(&rendezvous.bind_host)?,
        );
        let mut error = [0u8; ERROR_BYTES];
        // SAFETY: every pointer is a live NUL-terminated string or the error buffer of
        // ERROR_BYTES; the shim catches every C++ exception.
        let raw = unsafe {
            hl_group_new(
                host.as_ptr(),
                rendezvous.store_port,
                c_int::from(rendezvous.rank == 0),
                prefix.as_ptr(),
                number(rendezvous.rank as u128, "rank")?,
                number(rendezvous.world_size as u128, "world size")?,
                bind.as_ptr(),
                number(rendezvous.timeout.as_millis(), "timeout (ms)")?,
                error.as_mut_ptr().cast(),
                ERROR_BYTES,
            )
        };
        NonNull::new(raw)
            .map(|raw| ProcessGroup {
                raw,
                rank: rendezvous.rank,
                world_size: rendezvous.world_size,
            })
            .ok_or_else(|| CollectiveError(message(&error)))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sums `data` across ranks, in place.
    pub fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let (pointer, count) = (data.as_mut_ptr(), data.len() as i64);
        // SAFETY: the slice is `count` writable floats, borrowed for the call.
        self.call(|group, error| unsafe {
            hl_allreduce_sum_f32(group, pointer, count, error, ERROR_BYTES)
        })
    }

    /// Replaces `data` on every rank with `root`'s.
    pub fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let (pointer, count, root) = (data.as_mut_ptr(), data.len() as i64, root as c_int);
        // SAFETY: as in `all_reduce_sum`.
        self.call(|group, error| unsafe {
            hl_broadcast_f32(group, pointer, count, root, error, ERROR_BYTES)
        })
    }

    /// Sums a float tensor (a gradient) across ranks, in place.
    pub fn sum(&self, tensor: &mut Tensor) -> Result<(), CollectiveError> {
        self.with_floats(tensor, |group, data| group.all_reduce_sum(data))
    }

    /// Averages a float tensor across ranks, in place.
    pub fn average(&self, tensor: &mut Tensor) -> Result<(), CollectiveError> {
        self.sum(tensor)?;
        let _ = tensor.g_div_scalar_(self.world_size as f64);
        Ok(())
    }

    /// Replaces a float tensor (a weight, a batch-norm buffer) with `root`'s.
    pub fn broadcast_tensor(
        &self,
        tensor: &mut Tensor,
        root: usize,
    ) -> Result<(), CollectiveError> {
        self.with_floats(tensor, |group, data| group.broadcast(data, root))
    }

    /// Batch norm in training mode with the statistics of every rank's rows (PyTorch's
    /// SyncBatchNorm): `affine` is (weight, bias), `running` (mean, var), updated in
    /// place. Its backward pass all-reduces too, so every rank must run the same layers
    /// and the same backward.
    pub fn sync_batch_norm(
        &self,
        input: &Tensor,
        affine: [&Tensor; 2],
        running: [&Tensor; 2],
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor, CollectiveError> {
        let mut error = [0u8; ERROR_BYTES];
        let pointer = |tensor: &Tensor| tensor.as_ptr().cast_mut();
        // SAFETY: every pointer is a live libtorch tensor borrowed for the call (the shim
        // copies the handles it keeps for the backward pass); the result is a new tensor
        // this side owns.
        let raw = unsafe {
            hl_sync_batch_norm(
                self.raw.as_ptr(),
                pointer(input),
                pointer(affine[0]),
                pointer(affine[1]),
                pointer(running[0]),
                pointer(running[1]),
                momentum,
                eps,
                error.as_mut_ptr().cast(),
                ERROR_BYTES,
            )
        };
        if raw.is_null() {
            return Err(CollectiveError(message(&error)));
        }
        // SAFETY: a tensor the shim allocated for us, owned from here on.
        Ok(unsafe { Tensor::from_ptr(raw) })
    }

    pub fn barrier(&self) -> Result<(), CollectiveError> {
        // SAFETY: the group is live; the error buffer is ERROR_BYTES long.
        self.call(|group, error| unsafe { hl_barrier(group, error, ERROR_BYTES) })
    }

    /// Runs `collective` on `tensor`'s elements, which must be f32 (a gradient or a
    /// parameter as the training loop holds them). Gloo works on host memory: a CUDA
    /// tensor (or a view that is not contiguous) goes through a host copy and back.
    fn with_floats(
        &self,
        tensor: &mut Tensor,
        collective: impl FnOnce(&ProcessGroup, &mut [f32]) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        if tensor.kind() != Kind::Float {
            return Err(CollectiveError(format!(
                "only f32 tensors take part, not {:?}",
                tensor.kind()
            )));
        }
        if tensor.device() != Device::Cpu || !tensor.is_contiguous() {
            let mut host = tensor.to_device(Device::Cpu).contiguous();
            self.with_floats(&mut host, collective)?;
            tensor.copy_(&host);
            return Ok(());
        }
        let count = tensor.numel();
        // SAFETY: a contiguous CPU f32 tensor holds `count` floats at its data pointer,
        // and `tensor` is borrowed mutably for the call, so nothing else touches them.
        let data =
            unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr().cast::<f32>(), count) };
        collective(self, data)
    }

    fn call(
        &self,
        collective: impl FnOnce(*mut RawGroup, *mut c_char) -> c_int,
    ) -> Result<(), CollectiveError> {
        let mut error = [0u8; ERROR_BYTES];
        match collective(self.raw.as_ptr(), error.as_mut_ptr().cast()) {
            0 => Ok(()),
            _ => Err(CollectiveError(message(&error))),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from hl_group_new and is freed once, here.
        unsafe { hl_group_free(self.raw.as_ptr()) }
    }
}

fn message(buffer: &[u8]) -> String {
    CStr::from_bytes_until_nul(buffer)
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "an error c10d did not describe".into())
}
