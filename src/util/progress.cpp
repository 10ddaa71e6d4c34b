#include "util/progress.h"

#include <unistd.h>

#include <cstdio>

namespace udm {
namespace {
std::atomic<int> g_force{-1};
}

void Progress::force_enable(bool on) { g_force = on ? 1 : 0; }

Progress::Progress(std::string label, uint64_t total, bool bytes)
    : label_(std::move(label)), total_(total), bytes_(bytes) {
  int f = g_force.load();
  enabled_ = f >= 0 ? f == 1 : isatty(STDERR_FILENO) == 1;
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::add(uint64_t n) {
  done_.fetch_add(n, std::memory_order_relaxed);
  if (enabled_) draw(false);
}

void Progress::set(uint64_t done) {
  done_.store(done, std::memory_order_relaxed);
  if (enabled_) draw(false);
}

void Progress::finish() {
  if (enabled_ && !finished_) draw(true);
  finished_ = true;
}

void Progress::draw(bool final) {
  std::unique_lock lk(mu_, std::try_to_lock);
  if (!lk.owns_lock()) return;
  auto now = std::chrono::steady_clock::now();
  if (!final && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  uint64_t d = done_.load();
  double secs = std::chrono::duration<double>(now - start_).count();
  double pct = total_ ? 100.0 * static_cast<double>(d) / static_cast<double>(total_) : 100.0;
  if (bytes_) {
    double mib = static_cast<double>(d) / 1048576.0;
    std::fprintf(stderr, "\r%s: %5.1f%% %.1f/%.1f MiB %.1f MiB/s", label_.c_str(), pct, mib,
                 static_cast<double>(total_) / 1048576.0, secs > 0 ? mib / secs : 0.0);
  } else {
    std::fprintf(stderr, "\r%s: %5.1f%% %llu/%llu", label_.c_str(), pct,
                 static_cast<unsigned long long>(d), static_cast<unsigned long long>(total_));
  }
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace udm
