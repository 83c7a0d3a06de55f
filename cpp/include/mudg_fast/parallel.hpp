// parallel_for(): the only place that knows about OpenMP or std::thread, and the interrupt poll.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>

#include "mudg_fast/common.hpp"

#ifdef MUDG_WITH_OPENMP
#include <omp.h>
#else
#include <thread>
#include <vector>
#endif

namespace mudg_fast {

/// Threads used when the caller passes n_threads <= 0 (OMP_NUM_THREADS is honoured).
int default_threads();
/// n_threads <= 0 -> default_threads().
inline int resolve_threads(int n_threads) { return n_threads > 0 ? n_threads : default_threads(); }

/// Returns true when the user asked to stop (Ctrl-C). Installed by the Python bindings; the
/// default never interrupts. Called only from the thread that entered the core.
using InterruptHandler = bool (*)();
void set_interrupt_handler(InterruptHandler handler);
/// Rate-limited (about every 20 ms) check; throws Interrupted. A no-op on parallel_for's worker
/// threads: only the thread that entered the core talks to Python.
void poll_interrupt();
/// Marks the current thread as a parallel_for worker (tid != 0) for poll_interrupt().
void set_worker_thread(bool worker) noexcept;

/// Runs body(begin, end, thread_id) over [0, n) in chunks of `grain`, dynamically scheduled.
/// Chunk boundaries depend only on n and grain, never on the thread count, so per-chunk results
/// merged in chunk order are bit-identical for any n_threads. The first exception thrown by a
/// chunk (or Interrupted) is rethrown after the loop; remaining chunks are skipped.
template <class Body>
void parallel_for(idx_t n, idx_t grain, int n_threads, Body&& body) {
    if (n <= 0) return;
    // The calling thread polls on entry too: with dynamic scheduling the workers may take every
    // chunk of a short loop, and a sequence of short loops must still notice Ctrl-C.
    poll_interrupt();
    grain = std::max<idx_t>(grain, 1);
    const idx_t n_chunks = (n + grain - 1) / grain;
    const int nt = static_cast<int>(std::min<idx_t>(resolve_threads(n_threads), n_chunks));
    if (nt <= 1) {
        for (idx_t c = 0; c < n_chunks; ++c) {
            poll_interrupt();
            body(c * grain, std::min(n, (c + 1) * grain), 0);
        }
        return;
    }
    std::atomic<bool> stop{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto run_chunk = [&](idx_t c, int tid) {
        if (stop.load(std::memory_order_relaxed)) return;
        try {
            set_worker_thread(tid != 0);
            if (tid == 0) poll_interrupt();
            body(c * grain, std::min(n, (c + 1) * grain), tid);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
            stop.store(true, std::memory_order_relaxed);
        }
    };
#ifdef MUDG_WITH_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (idx_t c = 0; c < n_chunks; ++c) run_chunk(c, omp_get_thread_num());
#else
    std::atomic<idx_t> next{0};
    auto worker = [&](int tid) {
        for (idx_t c; (c = next.fetch_add(1)) < n_chunks;) run_chunk(c, tid);
    };
    std::vector<std::thread> pool;
    pool.reserve(nt - 1);
    for (int t = 1; t < nt; ++t) pool.emplace_back(worker, t);
    worker(0);
    for (auto& th : pool) th.join();
#endif
    if (first_error) std::rethrow_exception(first_error);
}

/// Threads parallel_for will actually use for n items in chunks of grain.
inline int effective_threads(idx_t n, idx_t grain, int n_threads) {
    const idx_t n_chunks = (n + std::max<idx_t>(grain, 1) - 1) / std::max<idx_t>(grain, 1);
    return static_cast<int>(std::max<idx_t>(1, std::min<idx_t>(resolve_threads(n_threads), n_chunks)));
}

}  // namespace mudg_fast
