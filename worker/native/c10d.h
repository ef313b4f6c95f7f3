// Narrow C API over PyTorch's c10d (TCPStore + PrefixStore + ProcessGroupGloo): CPU
// collectives, and a synchronised batch norm built on them.
// Every function catches all C++ exceptions; failures return NULL / nonzero and write a
// NUL-terminated message into `error` (truncated to error_len).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hl_group hl_group;

// Rank with is_master != 0 hosts the TCPStore server on store_port (0 is not allowed:
// all ranks must know the port). All groups in one process that use the same
// host:port share one server (multi-tenant). `prefix` namespaces every store key
// (use a fresh prefix per attempt / per group). `device_host` is the address Gloo
// binds to for its peer connections (NULL: Gloo's default device for this host).
// timeout_ms bounds store waits, rendezvous and each collective.
hl_group* hl_group_new(const char* store_host, uint16_t store_port, int is_master,
                       const char* prefix, int rank, int world_size,
                       const char* device_host, int timeout_ms,
                       char* error, size_t error_len);

// In-place on a contiguous CPU float buffer (no copy). Blocks until done. 0 on success.
int hl_allreduce_sum_f32(hl_group* g, float* data, int64_t count, char* error, size_t error_len);
int hl_broadcast_f32(hl_group* g, float* data, int64_t count, int root, char* error,
                     size_t error_len);
int hl_barrier(hl_group* g, char* error, size_t error_len);

// Batch norm in training mode over the whole batch of every rank (PyTorch's
// SyncBatchNorm): the statistics and, in the backward pass, the gradient's sums are
// all-reduced, so the ranks together compute what one process would on the whole batch.
// Takes and returns libtorch tensors (`at::Tensor*`, as tch's C_tensor): input [N, C, ...],
// weight and bias [C]; running_mean and running_var [C] are updated in place. Returns a
// new tensor (the caller frees it), NULL on error. Every rank must call it for the same
// layers in the same order, and run the backward pass it records.
void* hl_sync_batch_norm(hl_group* g, void* input, void* weight, void* bias,
                         void* running_mean, void* running_var, double momentum,
                         double eps, char* error, size_t error_len);

void hl_group_free(hl_group* g);

#ifdef __cplusplus
}
#endif
