// After a `pause` message to a background job (device/background_job.h):
// the piece of work under way may still land. Waits (up to 10 s) until the
// worker parks (waits for a resume), fails (a sweep's cut) or ends, and
// returns the job as it was then; nullopt if it did not stop. The caller
// tells a held pause (`parked`) from a job stopped another way.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <thread>

#include "device/background_job.h"

inline std::optional<udm::JobInfo> wait_job_stopped(const std::function<udm::JobInfo()>& job) {
  for (int k = 0; k < 10000; k++) {
    udm::JobInfo j = job();
    if (j.parked || j.state == "failed" || j.state == "done") return j;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::nullopt;
}
