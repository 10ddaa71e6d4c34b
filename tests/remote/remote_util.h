#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <random>

#include "common/sys_util.h"
#include "remote/config.h"
#include "remote/http_device.h"
#include "remote/remote.h"
#include "servers.h"

namespace udm::test {

inline remote::RemoteConfig set_remote(const std::string& cache_dir, uint64_t cap = 1ull << 30, int retries = 3) {
  remote::RemoteConfig c;
  c.cache_dir = cache_dir;
  c.cache_size = cap;
  c.retries = retries;
  c.retry_base_ms = 50;
  c.retry_max_ms = 400;
  c.stall_seconds = 2;
  c.connect_seconds = 3;
  remote::set_config(c);
  return c;
}

inline std::shared_ptr<remote::HttpDevice> as_http(const DevicePtr& d) {
  return std::dynamic_pointer_cast<remote::HttpDevice>(d);
}

// A world-readable directory for servers that run as another user (nginx workers).
inline std::string public_dir(TempDir& t) {
  ::chmod(t.path().c_str(), 0755);
  return t.path();
}

inline void expect_same(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t i = 0;
  while (i < a.size() && a[i] == b[i]) i++;
  EXPECT_EQ(i, a.size()) << what << ": first difference at byte " << i;
}

}  // namespace udm::test
