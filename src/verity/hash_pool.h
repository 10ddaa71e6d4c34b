// A small process-wide pool that hashes the data blocks of large verity reads
// on every core: hardware_concurrency() - 1 workers (at least one), started on
// first use, never stopped (they sleep on a condition variable when idle).
//
// run(n, fn) calls fn(0..n-1) once each and returns when all have returned.
// The caller claims tasks too, so a run finishes even when every worker is
// busy with other callers' tasks (no deadlock, no dependence on the pool's
// size). Locking: `mu_` guards the job queue only and is a leaf; fn runs with
// no pool lock held.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace udm::verity {

class HashPool {
 public:
  static HashPool& get();
  explicit HashPool(unsigned workers);
  HashPool(const HashPool&) = delete;
  HashPool& operator=(const HashPool&) = delete;
  ~HashPool();

  void run(unsigned n, const std::function<void(unsigned)>& fn);
  unsigned workers() const { return static_cast<unsigned>(threads_.size()); }

 private:
  struct Job {
    const std::function<void(unsigned)>* fn;
    unsigned n;
    std::atomic<unsigned> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  static void finish(Job& j);
  void worker();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace udm::verity
