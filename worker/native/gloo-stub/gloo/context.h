// Stub of gloo::Context: only held by shared_ptr in c10d headers; setTimeout is
// named in an inline virtual (ProcessGroupGloo::setTimeout) that this shim never emits.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
