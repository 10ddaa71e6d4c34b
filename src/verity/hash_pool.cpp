#include "verity/hash_pool.h"

#include <algorithm>

namespace udm::verity {

HashPool& HashPool::get() {
  // Leaked on purpose: workers may still be parked at exit, and no static
  // destructor should have to join them.
  static HashPool* pool = new HashPool(std::max(1u, std::thread::hardware_concurrency()) - 1);
  return *pool;
}

HashPool::HashPool(unsigned workers) {
  workers = std::max(1u, workers);
  for (unsigned i = 0; i < workers; i++) threads_.emplace_back([this] { worker(); });
}

HashPool::~HashPool() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void HashPool::finish(Job& j) {
  if (j.done.fetch_add(1, std::memory_order_acq_rel) + 1 == j.n) {
    std::lock_guard l(j.mu);
    j.cv.notify_all();
  }
}

void HashPool::worker() {
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    std::shared_ptr<Job> job = jobs_.front();
    unsigned i = job->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job->n) {  // every task taken: the job leaves the queue
      jobs_.pop_front();
      continue;
    }
    l.unlock();
    (*job->fn)(i);  // valid: run() waits for every claimed task before returning
    finish(*job);
    l.lock();
  }
}

void HashPool::run(unsigned n, const std::function<void(unsigned)>& fn) {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  {
    std::lock_guard l(mu_);
    jobs_.push_back(job);
  }
  if (n - 1 >= threads_.size())
    cv_.notify_all();
  else
    for (unsigned i = 0; i + 1 < n; i++) cv_.notify_one();
  for (unsigned i; (i = job->next.fetch_add(1, std::memory_order_relaxed)) < n;) {
    fn(i);
    finish(*job);
  }
  {
    std::lock_guard l(mu_);
    auto it = std::find(jobs_.begin(), jobs_.end(), job);
    if (it != jobs_.end()) jobs_.erase(it);
  }
  std::unique_lock l(job->mu);
  job->cv.wait(l, [&] { return job->done.load(std::memory_order_acquire) == n; });
}

}  // namespace udm::verity
