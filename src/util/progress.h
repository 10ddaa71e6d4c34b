// Progress for long offline work (update-diff, merges, compression). On a
// terminal it redraws one line on stderr at most ~10 times a second; when
// stderr is not a terminal it stays quiet (scripts get the final summary from
// the tool itself). Thread-safe: workers call add() concurrently.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace udm {

class Progress {
 public:
  // total in units of `unit` ("bytes" are printed as MiB).
  Progress(std::string label, uint64_t total, bool bytes = true);
  ~Progress();
  void add(uint64_t n);
  void set(uint64_t done);
  void finish();
  bool enabled() const { return enabled_; }
  static void force_enable(bool on);  // for tests

 private:
  void draw(bool final);
  std::string label_;
  uint64_t total_;
  bool bytes_;
  bool enabled_;
  bool finished_ = false;
  std::atomic<uint64_t> done_{0};
  std::mutex mu_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace udm
