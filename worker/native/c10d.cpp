// Minimal extern "C" layer over PyTorch's own c10d collectives (CPU / Gloo).
// Build: -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -DUSE_C10D_GLOO -fPIC
//        -I<stub dir, first> -I<torch>/include -I<torch>/include/torch/csrc/api/include
//        link -ltorch_cpu -lc10 (-ltorch is harmless but unneeded).
#include "c10d.h"

#include <cstdio>
#include <exception>
#include <string>

#include <ATen/ops/from_blob.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

struct hl_group {
  c10::intrusive_ptr<c10d::Store> store;  // PrefixStore over the TCPStore
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

void set_error(char* error, size_t error_len, const char* msg) {
  if (error != nullptr && error_len > 0) std::snprintf(error, error_len, "%s", msg);
}

// Runs f(); converts any C++ exception into (return -1, message). Nothing unwinds out.
template <class F>
int guarded(char* error, size_t error_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    set_error(error, error_len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(error, error_len, e.what());
  } catch (...) {
    set_error(error, error_len, "unknown C++ exception");
  }
  return -1;
}

at::Tensor wrap(float* data, int64_t count) {
  TORCH_CHECK(data != nullptr || count == 0, "null buffer");
  TORCH_CHECK(count >= 0, "negative count");
  return at::from_blob(data, {count}, at::TensorOptions().dtype(at::kFloat));
}

void run(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();  // rethrows the collective's error (peer gone, timeout, ...)
}

}  // namespace

extern "C" {

hl_group* hl_group_new(const char* store_host, uint16_t store_port, int is_master,
                       const char* prefix, int rank, int world_size,
                       const char* device_host, int timeout_ms,
                       char* error, size_t error_len) {
  hl_group* out = nullptr;
  guarded(error, error_len, [&] {
    TORCH_CHECK(store_host != nullptr && prefix != nullptr, "null host or prefix");
    TORCH_CHECK(store_port != 0, "store_port must be fixed and nonzero");
    TORCH_CHECK(world_size > 0 && rank >= 0 && rank < world_size, "bad rank/world_size");
    TORCH_CHECK(timeout_ms > 0, "timeout_ms must be positive");
    const std::chrono::milliseconds timeout(timeout_ms);

    c10d::TCPStoreOptions so;
    so.port = store_port;
    so.isServer = is_master != 0;
    so.waitWorkers = false;  // the Gloo rendezvous below waits for everyone anyway
    so.timeout = timeout;
    so.multiTenant = true;   // several groups (prefixes) in one process share a server
    auto tcp = c10::make_intrusive<c10d::TCPStore>(store_host, so);
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);

    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(
        device_host != nullptr
            ? c10d::ProcessGroupGloo::createDeviceForHostname(device_host)
            : c10d::ProcessGroupGloo::createDefaultDevice());
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
    out = new hl_group{std::move(store), std::move(pg)};
  });
  return out;
}

int hl_allreduce_sum_f32(hl_group* g, float* data, int64_t count, char* error,
                         size_t error_len) {
  return guarded(error, error_len, [&] {
    TORCH_CHECK(g != nullptr, "null group");
    std::vector<at::Tensor> t{wrap(data, count)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    run(g->pg->allreduce(t, o));
  });
}

int hl_broadcast_f32(hl_group* g, float* data, int64_t count, int root, char* error,
                     size_t error_len) {
  return guarded(error, error_len, [&] {
    TORCH_CHECK(g != nullptr, "null group");
    std::vector<at::Tensor> t{wrap(data, count)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.rootTensor = 0;
    run(g->pg->broadcast(t, o));
  });
}

int hl_barrier(hl_group* g, char* error, size_t error_len) {
  return guarded(error, error_len, [&] {
    TORCH_CHECK(g != nullptr, "null group");
    run(g->pg->barrier());
  });
}

void hl_group_free(hl_group* g) {
  try {
    delete g;  // ~ProcessGroupGloo joins its worker threads
  } catch (...) {
  }
}

}  // extern "C"
