// Shared helpers for the bow tests: a checkpoint model that knows which
// blocks restore must bring back.
#pragma once

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <vector>

#include "bow/bow_target.h"
#include "bow/restore.h"
#include "io/memory_device.h"

namespace udm::bow::test {

inline std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937_64 g(seed);
  for (auto& b : v) b = static_cast<uint8_t>(g());
  return v;
}

inline std::vector<uint8_t> read_all(BlockDevice& d) {
  std::vector<uint8_t> v(d.size());
  EXPECT_TRUE(d.read(0, v).ok());
  return v;
}

// Compares every block that was in use at checkpoint time (not in `free`).
inline ::testing::AssertionResult in_use_blocks_equal(const std::vector<uint8_t>& got,
                                                      const std::vector<uint8_t>& want,
                                                      const std::set<uint64_t>& free,
                                                      uint32_t bs) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size differs";
  for (uint64_t b = 0; b < got.size() / bs; b++) {
    if (free.count(b)) continue;
    if (!std::equal(got.begin() + b * bs, got.begin() + (b + 1) * bs, want.begin() + b * bs))
      return ::testing::AssertionFailure() << "in-use block " << b << " differs";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace udm::bow::test
