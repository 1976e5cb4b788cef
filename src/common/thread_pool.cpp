#include "common/thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace af {

namespace {

int default_threads() {
  if (const char* env = std::getenv("ATTNFORGE_NUM_THREADS")) {
    char* end = nullptr;
    const long long n = std::strtoll(env, &end, 10);  // saturates instead of wrapping
    if (end != env && *end == '\0' && n > 0) return int(std::min<long long>(n, kMaxThreads));
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(std::min<unsigned>(hw, kMaxThreads)) : 1;
}

thread_local bool t_inside_parallel_for = false;

// Workers sleep on `wake` until a job generation is published; each job is a
// shared chunk counter that all participants (workers and caller) drain.
class Pool {
 public:
  // previous: the pool a forked child inherited (its workers do not exist in the child); kept
  // reachable, never touched again: its mutexes and condition variables may be in any state.
  Pool(int target, Pool* previous) : target_(target), previous_(previous) {}
  ~Pool() { resize(0); }

  // For the fork child handler only, when no other thread exists: no lock can be taken.
  int target_unlocked() const { return target_; }

  int size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  void set_target(int n) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    resize(std::max(n, 1) - 1);
    std::lock_guard<std::mutex> state(mutex_);
    target_ = std::max(n, 1);
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& chunk_body) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);  // one job at a time
    if (workers_.empty() && target_ > 1) resize(target_ - 1);
    std::atomic<int64_t> next{0};
    auto drain = [&] {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) chunk_body(c);
    };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = drain;
      pending_ = int(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    t_inside_parallel_for = true;
    drain();
    t_inside_parallel_for = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  // Caller holds run_mutex_ (or is the destructor).
  void resize(int n_workers) {
    if (int(workers_.size()) == n_workers) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
    // A worker must know the generation current at its creation: reading it
    // when the thread first runs could miss a job published in between, and
    // run() would then wait forever for that worker.
    const uint64_t current = generation_;
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, current] { worker_loop(current); });
  }

  void worker_loop(uint64_t seen) {
    t_inside_parallel_for = true;
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      job();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::function<void()> job_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  int target_;
  bool stop_ = false;
  Pool* previous_;
};

// The pool is created on first use and never destroyed (workers may outlive static teardown
// order). A fork() child has only the forking thread, so the pool it inherits has no workers
// and possibly locked mutexes: the child handler sets the pool aside and the child's first
// call builds a new one with the same thread count.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_mutex;     // creation; held across fork() so a child never inherits it locked
Pool* g_pre_fork = nullptr;  // the pool set aside in a child
int g_pre_fork_target = 0;

void before_fork() { g_pool_mutex.lock(); }
void after_fork_in_parent() { g_pool_mutex.unlock(); }
void after_fork_in_child() {
  if (Pool* inherited = g_pool.load(std::memory_order_relaxed)) {
    g_pre_fork = inherited;
    g_pre_fork_target = inherited->target_unlocked();
    g_pool.store(nullptr, std::memory_order_relaxed);
  }
  g_pool_mutex.unlock();
}

Pool& pool() {
  if (Pool* p = g_pool.load(std::memory_order_acquire)) return *p;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  Pool* p = g_pool.load(std::memory_order_relaxed);
  if (p == nullptr) {
    static bool registered = false;
    if (!registered) registered = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child) == 0;
    p = new Pool(g_pre_fork != nullptr ? g_pre_fork_target : default_threads(), g_pre_fork);
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int threads = num_threads();
  if (threads <= 1 || t_inside_parallel_for || n <= grain) {
    body(0, n);
    return;
  }
  const int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(threads) * 8);
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  pool().run(chunks, [&](int64_t c) {
    const int64_t begin = c * per_chunk;
    const int64_t end = std::min(n, begin + per_chunk);
    if (begin < end) body(begin, end);
  });
}

void set_num_threads(int n) { pool().set_target(n < 1 ? default_threads() : n); }

int num_threads() { return pool().size(); }

}  // namespace af
