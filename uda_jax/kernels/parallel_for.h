// Shared by the CPU kernels: a parallel loop on XLA's intra-op thread pool.
#ifndef UDA_JAX_KERNELS_PARALLEL_FOR_H_
#define UDA_JAX_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace uda_jax {

struct Progress {
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;
};

// Runs body(i) for every i in [0, n) on the calling thread and the pool's threads. A pool task that starts late
// finds no chunk left and touches only the shared Progress, so the caller returns once every chunk is done.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, const Body& body) {
  auto progress = std::make_shared<Progress>();
  auto run = [progress, n, &body]() {
    int64_t i, mine = 0;
    while ((i = progress->next.fetch_add(1)) < n) {
      body(i);
      ++mine;
    }
    if (mine > 0 && progress->done.fetch_add(mine) + mine == n) {
      std::lock_guard<std::mutex> lock(progress->mu);
      progress->cv.notify_all();
    }
  };
  for (int64_t w = 0, helpers = std::min<int64_t>(pool.num_threads(), n - 1); w < helpers; ++w) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  std::unique_lock<std::mutex> lock(progress->mu);
  progress->cv.wait(lock, [&] { return progress->done.load() == n; });
}

}  // namespace uda_jax

#endif  // UDA_JAX_KERNELS_PARALLEL_FOR_H_
