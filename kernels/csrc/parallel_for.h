// ParallelFor over XLA's intra-op thread pool, shared by the native CPU kernels (fwht_cpu.cc,
// sparse_conv_cpu.cc).

#ifndef FASTNETS_KERNELS_CSRC_PARALLEL_FOR_H_
#define FASTNETS_KERNELS_CSRC_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace fastnets {

// Runs body(begin, end) over [0, count) in chunks, on XLA's intra-op thread pool and the calling
// thread together. Chunks are claimed from a shared atomic counter, so the caller alone finishes
// all of them if the pool is busy (or is the thread we run on): no deadlock, no idle wait for a
// task that has not started. Late tasks find no chunk left and return; the shared state lives in
// a shared_ptr so that they never touch freed memory.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, int64_t chunk, const Body& body) {
  const int64_t chunks = (count + chunk - 1) / chunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  if (helpers <= 0) {
    body(0, count);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  // `body` outlives every chunk: the caller returns only after all chunks are done.
  auto work = [shared, chunks, chunk, count, &body]() {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      body(c * chunk, std::min(count, (c + 1) * chunk));
      if (shared->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(shared->mu);
        shared->cv.notify_all();
      }
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == chunks; });
}

}  // namespace fastnets

#endif  // FASTNETS_KERNELS_CSRC_PARALLEL_FOR_H_
