// One controller for every background job a target runs (the update
// copy-back, the snapshot-merge; later a remote prefetch): the user's policy
// (pause, throttle), the job's progress and its state, identical for all.
//
// Control, the same words for every job:
//   message:        pause | resume | throttle <MiB/s> | throttle auto | throttle off
//   table options:  paused  throttle=<MiB/s>  throttle=auto  throttle=off
//                   (in the target's optional-argument group; read by
//                   JobPolicy::from_opts, so a policy survives reloads and
//                   restarts of the daemon that re-create the table)
//
// The worker thread calls admit(bytes) before each piece of work: it blocks
// while the job is paused (until resume or stop) and sleeps as a token bucket
// asks when a throttle is set. `throttle auto` runs at full speed while the
// device is idle and at a trickle (kTrickleBytesPerSecond) while foreground
// I/O is happening: the target reports each client request with
// foreground_io() (a relaxed atomic store, cheap on the I/O path), and the
// device counts as busy for kBusyWindow after the last one.
//
// Observation: info() is what `udm info NAME --json` lists under "jobs"
// (field meanings in docs/background.md).
//
// Locking: mu_ is a leaf, never held across I/O or the callbacks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm {

class OptArgs;

// What the user asked for.
struct JobPolicy {
  enum class Throttle { kOff, kRate, kAuto };
  bool paused = false;
  Throttle throttle = Throttle::kOff;
  uint64_t rate = 0;  // bytes per second, for kRate

  // Reads `paused` and `throttle=...` from a target's optional arguments;
  // errors name the target and the argument.
  static Result<JobPolicy> from_opts(OptArgs& o, const std::string& target);
  // "off", "auto" or the rate in MiB/s ("2", "0.5").
  std::string throttle_text() const;
};

// Parses the value of `throttle` (message word or table option): "off",
// "auto" or a positive number of MiB/s (decimals allowed).
Result<JobPolicy> parse_throttle(std::string_view v, JobPolicy base, const std::string& what);

// A snapshot of one job, for `udm info --json` and `udm wait`.
struct JobInfo {
  std::string kind;   // "update-copy-back", "snapshot-merge"
  std::string state;  // running | paused | throttled | done | failed
  std::string unit;   // what done/total count ("blocks", "operations", "chunks")
  uint64_t done = 0, total = 0;              // in the job's units
  uint64_t done_bytes = 0, total_bytes = 0;  // the same in bytes
  double bytes_per_second = 0;               // moving average over the last few seconds
  std::optional<double> eta_seconds;         // none when unknown (paused, no rate yet)
  double active_seconds = 0;                 // time the worker has worked (throttled included, pauses not)
  std::string throttle;                      // "off", "auto", "<MiB/s>"
  bool paused = false;                       // the user's pause (message or table)
  bool parked = false;                       // the worker is waiting for a resume (not in JSON; for tests)
  std::string error;                         // why it failed
};

class BackgroundJob {
 public:
  static constexpr uint64_t kTrickleBytesPerSecond = 1 << 20;
  static constexpr std::chrono::milliseconds kBusyWindow{100};

  BackgroundJob(std::string kind, std::string unit, JobPolicy policy = {});

  // ---- the target
  // Totals (units and bytes); may be set again (a merge learns its total at resume).
  void set_total(uint64_t units, uint64_t bytes);
  // Absolute progress.
  void set_done(uint64_t units, uint64_t bytes);
  // A client request reached the target (for `throttle auto`).
  void foreground_io() {
    last_fg_ns_.store(now_ns(), std::memory_order_relaxed);
  }

  // ---- the worker thread
  // The worker started / stopped (stopped by suspend, done or failed).
  void started();
  // finished(OK) with done == total: done; an error: failed (until started() again).
  // A job shows "done" only once its worker has finished: until then its
  // last step (a final checkpoint, say) may still be under way.
  void finished(const Status& st);
  // Before `bytes` of work: waits while paused and as the throttle asks.
  // Returns false when `stop` became true (the worker must stop). on_pause,
  // if given, runs (without the lock) once when a pause begins: the worker
  // makes its progress durable there.
  bool admit(uint64_t bytes, const std::atomic<bool>& stop, const std::function<void()>& on_pause = {});
  // How many bytes of work to take at once: `max` at full speed, about a
  // tenth of a second's worth (at least `min`) while throttled.
  uint64_t batch_bytes(uint64_t min, uint64_t max) const;
  // Wakes a worker waiting in admit(); call after setting its stop flag.
  void wake();

  // ---- control
  // True if args is one of the job's messages (pause, resume, throttle).
  static bool is_job_message(const std::vector<std::string>& args);
  // Applies a job message; errors name `target` and the argument.
  Result<std::string> message(const std::vector<std::string>& args, const std::string& target);
  JobPolicy policy() const;
  void set_policy(const JobPolicy& p);

  // ---- observation
  JobInfo info() const;
  bool is_done() const;

 private:
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  bool busy(int64_t now) const {
    return now - last_fg_ns_.load(std::memory_order_relaxed) <
           std::chrono::duration_cast<std::chrono::nanoseconds>(kBusyWindow).count();
  }
  // Bytes per second the throttle allows now; 0 = unlimited. Caller holds mu_.
  uint64_t allowed_rate(int64_t now) const;
  void sample(int64_t now) const;  // caller holds mu_
  double rate_locked(int64_t now) const;

  const std::string kind_, unit_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  JobPolicy policy_;
  uint64_t pause_epoch_ = 0;  // bumped by each pause, for on_pause
  uint64_t total_ = 0, total_bytes_ = 0;
  uint64_t done_ = 0, done_bytes_ = 0;
  bool running_ = false, failed_ = false;
  bool parked_ = false;  // the worker waits in admit() for a resume
  // Time worked: closed intervals plus the open one (since active_since_,
  // or -1 when the worker is paused or stopped).
  int64_t active_ns_ = 0;
  int64_t active_since_ = -1;
  void stop_clock(int64_t now) {  // caller holds mu_
    if (active_since_ >= 0) active_ns_ += now - active_since_;
    active_since_ = -1;
  }
  std::string error_;
  // Token bucket (bytes; may go negative: the debt the next admit waits out).
  double tokens_ = 0;
  int64_t refill_ns_ = 0;
  int64_t last_wait_ns_ = INT64_MIN / 2;  // the throttle last held the job back
  std::atomic<int64_t> last_fg_ns_{INT64_MIN / 2};
  // (time, done_bytes) samples for the moving average.
  struct Sample {
    int64_t ns;
    uint64_t bytes;
  };
  mutable std::vector<Sample> samples_;
};

}  // namespace udm
