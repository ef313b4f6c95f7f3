// Minimal extern "C" layer over PyTorch's own c10d collectives (CPU / Gloo).
// Build: -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -DUSE_C10D_GLOO -fPIC
//        -I<stub dir, first> -I<torch>/include -I<torch>/include/torch/csrc/api/include
//        link -ltorch_cpu -lc10 (-ltorch is harmless but unneeded).
#include "c10d.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <ATen/ATen.h>
#include <ATen/ops/from_blob.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

struct hl_group {
  c10::intrusive_ptr<c10d::Store> store;  // PrefixStore over the TCPStore
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

// PyTorch's flight recorder (a trace of recent collectives, on by default) inserts a
// process group's first record into a shared map before taking its lock: process groups
// used from several threads at once (this worker runs ranks as threads) crashed it, about
// one run in thirty of the collectives tests. It is switched off here, while the program
// starts (static initialisation, one thread), before libtorch first reads the variable.
const bool flight_recorder_off = [] {
  setenv("TORCH_FR_BUFFER_SIZE", "0", 1);
  return true;
}();

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

// Sums `t` over the ranks and returns the sum (on t's device and dtype); Gloo works on
// host memory, so a CUDA tensor goes through it.
at::Tensor summed(hl_group* g, const at::Tensor& t) {
  at::Tensor host = t.to(at::kCPU, at::kFloat).contiguous().clone();
  std::vector<at::Tensor> v{host};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  run(g->pg->allreduce(v, o));
  return host.to(t.device(), t.scalar_type());
}

// The dimensions a batch norm reduces over (all but the channels), and the view that
// broadcasts a per-channel vector against the input.
std::vector<int64_t> reduced_dims(const at::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

std::vector<int64_t> channel_view(const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// The forward and backward of torch.nn.SyncBatchNorm (training mode), written with
// plain tensor operations so that it runs on CPU too (PyTorch's own kernels for it,
// batch_norm_stats and friends, are CUDA-only). Two-pass statistics: the mean, then the
// variance around it, each one all-reduce.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias,
                            at::Tensor running_mean, at::Tensor running_var,
                            double momentum, double eps, int64_t group) {
    auto* g = reinterpret_cast<hl_group*>(group);
    TORCH_CHECK(x.dim() >= 2, "batch norm input needs a channel dimension");
    const int64_t channels = x.size(1);
    const auto dims = reduced_dims(x);
    const auto view = channel_view(x);
    const double local = static_cast<double>(x.numel() / std::max<int64_t>(channels, 1));
    at::Tensor sums = summed(
        g, at::cat({x.sum(dims).to(at::kDouble), at::full({1}, local, x.options().dtype(at::kDouble))}));
    const double count = sums[channels].item<double>();
    TORCH_CHECK(count > 1, "batch norm needs more than one value per channel across the ranks");
    at::Tensor mean = (sums.narrow(0, 0, channels) / count).to(x.scalar_type());
    at::Tensor centered = x - mean.view(view);
    at::Tensor var = (summed(g, (centered * centered).sum(dims).to(at::kDouble)) / count)
                         .to(x.scalar_type());
    at::Tensor invstd = (var + eps).rsqrt();
    running_mean.mul_(1 - momentum).add_(mean, momentum);
    running_var.mul_(1 - momentum).add_(var * (count / (count - 1)), momentum);
    at::Tensor xhat = centered * invstd.view(view);
    ctx->save_for_backward({xhat, weight, invstd});
    ctx->saved_data["group"] = group;
    ctx->saved_data["count"] = count;
    return xhat * weight.view(view) + bias.view(view);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& xhat = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& invstd = saved[2];
    auto* g = reinterpret_cast<hl_group*>(ctx->saved_data["group"].toInt());
    const double count = ctx->saved_data["count"].toDouble();
    const at::Tensor& dy = grads[0];
    const int64_t channels = xhat.size(1);
    const auto dims = reduced_dims(xhat);
    const auto view = channel_view(xhat);
    // This rank's share of the affine gradients: summed over the ranks afterwards with
    // every other gradient, as DDP does.
    at::Tensor grad_bias = dy.sum(dims);
    at::Tensor grad_weight = (dy * xhat).sum(dims);
    at::Tensor both = summed(g, at::cat({grad_bias, grad_weight}).to(at::kDouble));
    at::Tensor mean_dy = (both.narrow(0, 0, channels) / count).to(dy.scalar_type());
    at::Tensor mean_dy_xhat = (both.narrow(0, channels, channels) / count).to(dy.scalar_type());
    at::Tensor dx = (dy - mean_dy.view(view) - xhat * mean_dy_xhat.view(view)) *
                    (weight * invstd).view(view);
    return {dx, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

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

void* hl_sync_batch_norm(hl_group* g, void* input, void* weight, void* bias,
                         void* running_mean, void* running_var, double momentum,
                         double eps, char* error, size_t error_len) {
  at::Tensor* out = nullptr;
  guarded(error, error_len, [&] {
    TORCH_CHECK(g != nullptr && input != nullptr && weight != nullptr && bias != nullptr &&
                    running_mean != nullptr && running_var != nullptr,
                "null group or tensor");
    at::Tensor result = SyncBatchNorm::apply(
        *static_cast<at::Tensor*>(input), *static_cast<at::Tensor*>(weight),
        *static_cast<at::Tensor*>(bias), *static_cast<at::Tensor*>(running_mean),
        *static_cast<at::Tensor*>(running_var), momentum, eps,
        reinterpret_cast<int64_t>(g));
    out = new at::Tensor(std::move(result));
  });
  return out;
}

void hl_group_free(hl_group* g) {
  try {
    delete g;  // ~ProcessGroupGloo joins its worker threads
  } catch (...) {
  }
}

}  // extern "C"
